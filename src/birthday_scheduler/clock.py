"""The one source of time. Processes read it once per tick and pass `now` down."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for timeouts and breakers)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
