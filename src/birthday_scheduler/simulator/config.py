"""Settings of the message-service simulator: validated, immutable, and pure to reason about.

Environment variables read by `SimulatorConfig.from_env()` (all optional):

    SIMULATOR_FAILURE_RATE_500       share of requests answered 500 with a JSON error (0..1)
    SIMULATOR_FAILURE_RATE_502       share answered 502 with an HTML "Bad Gateway" page
    SIMULATOR_FAILURE_RATE_429       share answered 429 with `Retry-After: 1`
    SIMULATOR_HANG_RATE              share never answered (until the client gives up)
    SIMULATOR_ACCEPT_THEN_HANG_RATE  share recorded as delivered, then never answered
    SIMULATOR_LATENCY_MS             added latency: "50" (fixed) or "20-200" (uniform range)
    SIMULATOR_OUTAGES                windows answered 503, in seconds after start: "30-60,120-180"
    SIMULATOR_SEED                   integer seed: the same seed gives the same fault sequence
    SIMULATOR_HANG_S                 how long a hung request is held at most (default 600)
    SIMULATOR_MAX_DELIVERIES         accepted deliveries kept for GET /deliveries, the most
                                     recent first to stay (default 10000; memory is bounded)

The five rates are drawn from one random number per request, so together they must not
exceed 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

from birthday_scheduler.errors import ConfigurationError

DEFAULT_MAX_DELIVERIES = 10_000


class Fault(StrEnum):
    NONE = "none"
    HTTP_500 = "http500"
    HTTP_502 = "http502"
    HTTP_429 = "http429"
    HANG = "hang"
    ACCEPT_THEN_HANG = "acceptThenHang"


_RATE_FIELDS = (
    ("failure_rate_500", Fault.HTTP_500),
    ("failure_rate_502", Fault.HTTP_502),
    ("failure_rate_429", Fault.HTTP_429),
    ("hang_rate", Fault.HANG),
    ("accept_then_hang_rate", Fault.ACCEPT_THEN_HANG),
)


@dataclass(frozen=True)
class SimulatorConfig:
    failure_rate_500: float = 0.0
    failure_rate_502: float = 0.0
    failure_rate_429: float = 0.0
    hang_rate: float = 0.0
    accept_then_hang_rate: float = 0.0
    latency_ms: float = 0.0
    # When set, latency is uniform in [latency_ms, latency_max_ms].
    latency_max_ms: float | None = None
    # (start, end) seconds after the simulator started, during which every request gets 503.
    outages: tuple[tuple[float, float], ...] = ()
    seed: int | None = None
    hang_s: float = 600.0
    # The most recent accepted deliveries kept (and their keys remembered as repeats); older
    # ones are dropped so a long-running simulator holds bounded memory.
    max_deliveries: int = DEFAULT_MAX_DELIVERIES

    def __post_init__(self) -> None:
        for name, _ in _RATE_FIELDS:
            rate = getattr(self, name)
            if not (0.0 <= rate <= 1.0):
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        if sum(getattr(self, name) for name, _ in _RATE_FIELDS) > 1.0 + 1e-9:
            raise ValueError("the failure and hang rates together must not exceed 1")
        if not (0.0 <= self.latency_ms < math.inf):
            raise ValueError("latency_ms must be a non-negative number")
        if self.latency_max_ms is not None and not (
            self.latency_ms <= self.latency_max_ms < math.inf
        ):
            raise ValueError("latency_max_ms must be at least latency_ms")
        for start, end in self.outages:
            if not (0.0 <= start < end):
                raise ValueError(f"outage window ({start}, {end}) must have 0 <= start < end")
        if not (0.0 < self.hang_s < math.inf):
            raise ValueError("hang_s must be a positive number")
        if isinstance(self.max_deliveries, bool) or not (
            isinstance(self.max_deliveries, int) and self.max_deliveries >= 1
        ):
            raise ValueError("max_deliveries must be an integer of at least 1")

    def pick_fault(self, draw: float) -> Fault:
        """The fault for a request whose uniform random draw in [0, 1) is `draw`."""
        threshold = 0.0
        for name, fault in _RATE_FIELDS:
            threshold += getattr(self, name)
            if draw < threshold:
                return fault
        return Fault.NONE

    def in_outage(self, elapsed_s: float) -> bool:
        return any(start <= elapsed_s < end for start, end in self.outages)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outages"] = [list(window) for window in self.outages]
        return data

    def updated(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """A copy with `changes` (field name -> JSON value) applied; ValueError if invalid."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "outages":
                values[name] = _outages_from_json(value)
            elif name == "seed":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise ValueError("seed must be an integer or null")
                values[name] = value
            elif name == "max_deliveries":
                values[name] = value  # checked by __post_init__
            elif name == "latency_max_ms" and value is None:
                values[name] = None
            else:
                values[name] = _number(name, value)
        return replace(self, **values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SimulatorConfig:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, _ in _RATE_FIELDS:
            variable = f"SIMULATOR_{name.upper()}"
            if env.get(variable, "").strip():
                values[name] = _env_float(variable, env[variable])
        if raw := env.get("SIMULATOR_LATENCY_MS", "").strip():
            low, _, high = raw.partition("-")
            values["latency_ms"] = _env_float("SIMULATOR_LATENCY_MS", low)
            if high:
                values["latency_max_ms"] = _env_float("SIMULATOR_LATENCY_MS", high)
        if raw := env.get("SIMULATOR_OUTAGES", "").strip():
            values["outages"] = _env_outages(raw)
        if raw := env.get("SIMULATOR_SEED", "").strip():
            try:
                values["seed"] = int(raw)
            except ValueError:
                raise ConfigurationError(
                    f"SIMULATOR_SEED must be an integer, got {raw!r}"
                ) from None
        if raw := env.get("SIMULATOR_HANG_S", "").strip():
            values["hang_s"] = _env_float("SIMULATOR_HANG_S", raw)
        if raw := env.get("SIMULATOR_MAX_DELIVERIES", "").strip():
            try:
                values["max_deliveries"] = int(raw)
            except ValueError:
                raise ConfigurationError(
                    f"SIMULATOR_MAX_DELIVERIES must be an integer, got {raw!r}"
                ) from None
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigurationError(f"SIMULATOR_* configuration is invalid: {exc}") from exc


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number")
    return float(value)


def _outages_from_json(value: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list):
        raise ValueError("outages must be a list of [start, end] pairs")
    windows: list[tuple[float, float]] = []
    for window in value:
        if not isinstance(window, list) or len(window) != 2:
            raise ValueError("outages must be a list of [start, end] pairs")
        windows.append((_number("outage start", window[0]), _number("outage end", window[1])))
    return tuple(windows)


def _env_float(variable: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigurationError(f"{variable} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigurationError(f"{variable} must be a finite number, got {raw!r}")
    return value


def _env_outages(raw: str) -> tuple[tuple[float, float], ...]:
    windows: list[tuple[float, float]] = []
    for part in raw.split(","):
        start, sep, end = part.strip().partition("-")
        if not sep:
            raise ConfigurationError(
                f"SIMULATOR_OUTAGES must look like '30-60,120-180', got {raw!r}"
            )
        windows.append(
            (_env_float("SIMULATOR_OUTAGES", start), _env_float("SIMULATOR_OUTAGES", end))
        )
    return tuple(windows)
