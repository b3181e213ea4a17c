"""One typed settings object, read from the environment and validated at start.

Names are unprefixed because the runbook uses them as they are (DATABASE_URL, ...).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.messages.kinds import KINDS, Texts, check_template

LogLevel = Literal["debug", "info", "warn", "error", "fatal"]
EMBEDDED_DATABASE_PATH = Path("var") / "birthday-scheduler.sqlite3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str | None = None
    database_pool_max: int = Field(10, ge=1, le=1000)
    database_pool_min: int = Field(1, ge=0, le=1000)
    rabbitmq_url: SecretStr | None = None
    worker_concurrency: int = Field(10, ge=1, le=10_000)

    message_service_url: str | None = None
    message_service_api_key: SecretStr | None = None
    message_service_timeout_ms: int = Field(10_000, ge=1, le=600_000)
    circuit_breaker_failure_threshold: int = Field(5, ge=1, le=10_000)
    circuit_breaker_reset_timeout_ms: int = Field(30_000, ge=1, le=86_400_000)
    max_delivery_attempts: int = Field(8, ge=1, le=100)
    retry_base_delay_ms: int = Field(1_000, ge=1, le=3_600_000)
    retry_max_delay_ms: int = Field(300_000, ge=1, le=86_400_000)

    send_local_time: time = time(9, 0)
    # At least an hour: a tick finds a message just after its instant, so 0 would skip them all.
    catch_up_window_hours: int = Field(72, ge=1, le=24 * 366)
    scheduler_interval_ms: int = Field(1_000, ge=10, le=3_600_000)
    scheduler_batch_size: int = Field(1_000, ge=1, le=100_000)
    # A row left `queued` or `sending` this long (broker lost it, worker killed) is re-published.
    message_visibility_timeout_s: int = Field(300, ge=1, le=86_400)

    api_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    allow_unauthenticated: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65_535)
    metrics_port: int | None = Field(None, ge=0, le=65_535)
    max_body_bytes: int = Field(16_384, ge=256, le=10_485_760)
    rate_limit_per_minute: int = Field(600, ge=0, le=1_000_000)
    # Peers whose X-Forwarded-For names the client (rate limits, logs): IPs, CIDRs, or `*`.
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1",)
    shutdown_grace_s: float = Field(30.0, ge=0, le=3_600)

    # Message text per kind (MESSAGE_TEMPLATE_<KIND>); unset: the kind's default text.
    message_template_birthday: str | None = Field(None, min_length=1, max_length=1000)
    message_template_anniversary: str | None = Field(None, min_length=1, max_length=1000)

    log_level: LogLevel = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("send_local_time", mode="before")
    @classmethod
    def _parse_hh_mm(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                parsed = time.fromisoformat(value.strip())
            except ValueError:
                raise ValueError("must be a local time HH:MM, e.g. 09:00") from None
            if parsed.tzinfo is not None:
                raise ValueError("must be a wall-clock time without an offset, e.g. 09:00")
            return parsed
        return value

    @field_validator("message_template_birthday", "message_template_anniversary")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)

    def message_texts(self) -> Texts:
        """Each kind's text: MESSAGE_TEMPLATE_<KIND> when set, else the kind's default."""
        templates = {kind: getattr(self, f"message_template_{kind}", None) for kind in KINDS}
        return Texts({kind: text for kind, text in templates.items() if text})

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(token.strip() for token in value.split(",") if token.strip())
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        entries = tuple(entry.strip() for entry in value.split(",") if entry.strip())
        if entries == ("*",):
            return entries
        for entry in entries:
            try:
                ipaddress.ip_network(entry)  # an address is a network of one
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.0/8); "
                    "give a comma-separated list, or * alone to trust every peer"
                ) from None
        return entries

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ValueError("must start with postgresql:// or sqlite:///")
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if not value.get_secret_value().startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @field_validator("message_service_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be a full http:// or https:// URL of the send endpoint")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.database_pool_min > self.database_pool_max:
            raise ValueError("DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX")
        if self.retry_base_delay_ms > self.retry_max_delay_ms:
            raise ValueError("RETRY_BASE_DELAY_MS must not exceed RETRY_MAX_DELAY_MS")
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{EMBEDDED_DATABASE_PATH}"

    @property
    def is_embedded_database(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    def binds_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def require_safe_api_binding(self) -> None:
        """Refuse an unauthenticated API on a non-loopback address (see API_TOKENS)."""
        if not self.api_tokens and not self.binds_loopback() and not self.allow_unauthenticated:
            raise ConfigurationError(
                f"API_TOKENS: required when HOST={self.host} is not a loopback address "
                "(set API_TOKENS, bind HOST=127.0.0.1, or set ALLOW_UNAUTHENTICATED=true)"
            )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; bad values raise ConfigurationError in one line."""
    try:
        if environ is None:
            return Settings()
        lowered = {key.lower(): value for key, value in environ.items()}
        known = {name: lowered[name] for name in Settings.model_fields if name in lowered}
        return Settings.model_validate(known)
    except ValidationError as exc:
        raise ConfigurationError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = "_".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
    return "invalid configuration: " + "; ".join(problems)
