from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from birthday_scheduler.delivery.backoff import (
    MAX_RETRY_AFTER_S,
    backoff_delay,
    parse_retry_after,
    retry_delay,
)

NOW = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def _max_over_draws(attempt: int, base: float, cap: float, draws: int = 2000) -> float:
    rng = random.Random(1)
    return max(backoff_delay(attempt, base, cap, rng) for _ in range(draws))


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 30.0), (40, 30.0), (10_000, 30.0)],
)
def test_backoff_stays_within_the_doubling_ceiling_capped_at_max(
    attempt: int, ceiling: float
) -> None:
    rng = random.Random(7)
    delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(2000)]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    # Full jitter uses the whole window, not just its top.
    assert max(delays) > 0.9 * ceiling
    assert min(delays) < 0.1 * ceiling


def test_backoff_grows_with_attempts() -> None:
    assert _max_over_draws(1, 0.5, 60) < _max_over_draws(3, 0.5, 60) < _max_over_draws(6, 0.5, 60)


def test_backoff_treats_attempt_zero_like_the_first_and_is_deterministic_per_seed() -> None:
    assert backoff_delay(0, 2.0, 10.0, random.Random(3)) == backoff_delay(
        1, 2.0, 10.0, random.Random(3)
    )
    assert backoff_delay(0, 2.0, 10.0, random.Random(3)) <= 2.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Fri, 01 Mar 2024 12:00:30 GMT", 30.0),
        ("Fri, 01 Mar 2024 11:59:00 GMT", 0.0),
        ("Fri, 01 Mar 2024 12:01:00 -0000", 60.0),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "nan", "inf", "Fri, 99 Foo 2024"])
def test_parse_retry_after_returns_none_for_absent_or_garbage(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_parse_retry_after_compares_dates_in_any_zone() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=5)))
    assert parse_retry_after("Fri, 01 Mar 2024 12:00:10 GMT", now) == pytest.approx(10.0)


def test_retry_delay_is_the_backoff_without_retry_after() -> None:
    assert retry_delay(3, 1.0, 30.0, None, random.Random(9)) == backoff_delay(
        3, 1.0, 30.0, random.Random(9)
    )


def test_retry_delay_honours_a_longer_retry_after_even_above_max() -> None:
    assert retry_delay(1, 1.0, 30.0, 120.0, random.Random(9)) == 120.0


def test_retry_delay_keeps_the_backoff_when_retry_after_is_shorter() -> None:
    rng_value = backoff_delay(6, 1.0, 30.0, random.Random(9))
    assert rng_value > 0.5
    assert retry_delay(6, 1.0, 30.0, 0.5, random.Random(9)) == rng_value


def test_retry_delay_caps_retry_after_at_an_hour() -> None:
    assert retry_delay(1, 1.0, 30.0, 10 * 86_400.0, random.Random(9)) == MAX_RETRY_AFTER_S
    assert MAX_RETRY_AFTER_S == 3600.0
