"""Settings: the contract's defaults; a bad value stops start-up with one line naming it."""

from __future__ import annotations

from datetime import time

import pytest

from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.settings import load_settings


def test_defaults_match_the_contract() -> None:
    s = load_settings({})
    assert s.database_url is None
    assert s.effective_database_url.startswith("sqlite:///")
    assert (s.database_pool_max, s.database_pool_min) == (10, 1)
    assert s.rabbitmq_url is None
    assert s.worker_concurrency == 10
    assert s.message_service_timeout_ms == 10_000
    assert s.circuit_breaker_failure_threshold == 5
    assert s.circuit_breaker_reset_timeout_ms == 30_000
    assert s.max_delivery_attempts == 8
    assert s.send_local_time == time(9, 0)
    assert s.catch_up_window_hours == 72
    assert s.api_tokens == ()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert (s.log_level, s.log_format) == ("info", "json")


def test_values_are_parsed() -> None:
    s = load_settings(
        {
            "DATABASE_URL": "postgresql://u:p@db:5432/birthday_scheduler",
            "RABBITMQ_URL": "amqp://guest:guest@mq:5672/",
            "SEND_LOCAL_TIME": "07:30",
            "API_TOKENS": " a , b,,c ",
            "LOG_LEVEL": "WARN",
        }
    )
    assert s.send_local_time == time(7, 30)
    assert [t.get_secret_value() for t in s.api_tokens] == ["a", "b", "c"]
    assert s.log_level == "warn"
    assert not s.is_embedded_database


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PORT", "eighty", "PORT"),
        ("PORT", "70000", "PORT"),
        ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL"),
        ("RABBITMQ_URL", "http://mq", "RABBITMQ_URL"),
        ("MESSAGE_SERVICE_URL", "message-service/send", "MESSAGE_SERVICE_URL"),
        ("SEND_LOCAL_TIME", "9am", "SEND_LOCAL_TIME"),
        ("SEND_LOCAL_TIME", "25:00", "SEND_LOCAL_TIME"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("CATCH_UP_WINDOW_HOURS", "-1", "CATCH_UP_WINDOW_HOURS"),
        ("MAX_DELIVERY_ATTEMPTS", "many", "MAX_DELIVERY_ATTEMPTS"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0", "CIRCUIT_BREAKER_FAILURE_THRESHOLD"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({variable: value})
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message


def test_pool_bounds_must_be_ordered() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_POOL_MIN"):
        load_settings({"DATABASE_POOL_MIN": "20", "DATABASE_POOL_MAX": "5"})


def test_secrets_never_appear_in_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"RABBITMQ_URL": "http://user:hunter2@mq"})
    assert "hunter2" not in str(caught.value)


def test_public_bind_without_tokens_refuses_to_start() -> None:
    public = load_settings({"HOST": "0.0.0.0"})
    with pytest.raises(ConfigurationError, match="API_TOKENS"):
        public.require_safe_api_binding()
    load_settings({"HOST": "0.0.0.0", "API_TOKENS": "t"}).require_safe_api_binding()
    load_settings({"HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "true"}).require_safe_api_binding()
    load_settings({"HOST": "127.0.0.1"}).require_safe_api_binding()
    load_settings({"HOST": "::1"}).require_safe_api_binding()
