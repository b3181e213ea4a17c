"""Retry timing for deliveries: pure functions, no clock reads, randomness injected.

Full-jitter exponential backoff (the AWS architecture blog's "full jitter") spreads retries of
many messages that failed together over the whole window instead of letting them return as a
synchronised wave, which is what hurts a service that is just recovering.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# A Retry-After is honoured even above the backoff ceiling: the service knows its own load
# better than we do. It is still bounded, because a broken header (or an HTTP-date far in the
# future) must not park a birthday message for days: an hour keeps the message well inside
# the catch-up window while giving a real maintenance window time to end.
MAX_RETRY_AFTER_S = 3600.0

# 2**62 times any sane base already exceeds every cap; bounding the exponent keeps the float
# arithmetic finite for absurd attempt numbers.
_MAX_EXPONENT = 62


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    Uniform in [0, min(max_s, base_s * 2 ** (attempt - 1))].
    """
    if base_s <= 0 or max_s <= 0:
        return 0.0
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    ceiling = min(max_s, base_s * float(2**exponent))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds requested by a `Retry-After` header (RFC 9110 §10.2.3), never negative.

    Accepts delta-seconds ("120", leniently also "1.5") or an HTTP-date; returns None when
    the header is absent or unreadable, so the caller falls back to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return _seconds_until_http_date(text, now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _seconds_until_http_date(text: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # HTTP-dates are always GMT; email.utils leaves "-0000" dates naive.
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(
    attempt: int,
    base_s: float,
    max_s: float,
    retry_after_s: float | None,
    rng: random.Random,
) -> float:
    """The delay before the next attempt: our jittered backoff, or longer if the service asks.

    `retry_after_s` wins over the backoff ceiling `max_s` but is capped at MAX_RETRY_AFTER_S.
    """
    delay = backoff_delay(attempt, base_s, max_s, rng)
    if retry_after_s is not None and math.isfinite(retry_after_s):
        delay = max(delay, min(max(retry_after_s, 0.0), MAX_RETRY_AFTER_S))
    return delay
