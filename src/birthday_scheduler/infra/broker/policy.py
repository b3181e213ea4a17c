"""Rules both queue adapters share: the message body, the delivery limit, the requeue pause.

Kept pure (no I/O) so the RabbitMQ adapter and the in-process queue behave the same and the
rules can be tested without either.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker.base import DeadLetter

# A message whose handler keeps raising is dead-lettered after this many failed deliveries
# instead of looping for ever. It is a backstop: the worker itself dead-letters a message
# once MAX_DELIVERY_ATTEMPTS sends have failed, and the ledger re-publishes anything the
# broker dropped, so the number only needs to outlast transient infrastructure trouble.
DELIVERY_LIMIT = 20
DELIVERY_LIMIT_REASON = "delivery limit exceeded"

# A raising handler means infrastructure trouble (the database is unreachable, say). Pausing
# before handing the message back keeps a worker from spinning through the delivery limit in
# milliseconds during an outage: the pauses double from REQUEUE_BASE_DELAY up to the cap, so
# twenty failures take several minutes. The message holds its prefetch slot while it waits,
# which also throttles a worker whose every handler fails.
REQUEUE_BASE_DELAY = 0.5
REQUEUE_MAX_DELAY = 30.0

REASON_MAX_CHARS = 500


def encode_body(message_id: UUID) -> bytes:
    """The whole message body: the ledger id only, never personal data."""
    return json.dumps({"id": str(message_id)}, separators=(",", ":")).encode()


def decode_body(body: bytes) -> UUID:
    """Read the id back; raises ValueError for anything that is not `{"id": "<uuid>"}`."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("body is not JSON") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        raise ValueError('body has no string "id"')
    return UUID(payload["id"])


def requeue_delay(
    failed_deliveries: int,
    base: float = REQUEUE_BASE_DELAY,
    cap: float = REQUEUE_MAX_DELAY,
) -> float:
    """Seconds to hold a failed message before requeueing it (0 disables the pause)."""
    if base <= 0:
        return 0.0
    # Bound the exponent so a large counter cannot overflow the float.
    return min(cap, base * 2.0 ** min(max(failed_deliveries, 0), 32))


def truncate_reason(reason: str) -> str:
    return reason[:REASON_MAX_CHARS]


# Reasons RabbitMQ writes into x-death when it dead-letters a message itself.
_BROKER_REASONS = {
    "delivery_limit": DELIVERY_LIMIT_REASON,
    "rejected": "rejected by a consumer",
    "expired": "expired in the queue",
    "maxlen": "queue length limit exceeded",
}


def read_dead_letter(body: bytes, headers: Mapping[str, Any], now: datetime) -> DeadLetter | None:
    """A dead letter as the DLQ holds it, or None when its body holds no id.

    Copies published by `publish_dead` carry x-death-reason / x-dead-at; messages the broker
    dead-lettered itself (delivery limit, a rejected body) carry RabbitMQ's x-death table.
    Only the body counts: the AMQP message_id is not trustworthy (aiormq invents a random
    one for a message published without it), and replaying an invented id would be a lie.
    """
    try:
        parsed_id = decode_body(body)
    except ValueError:
        return None
    death = _first_death(headers)
    reason = _text(headers.get("x-death-reason"))
    if reason is None:
        broker_reason = _text(death.get("reason")) or "unknown"
        reason = _BROKER_REASONS.get(broker_reason, f"dead-lettered by the broker: {broker_reason}")
    return DeadLetter(parsed_id, truncate_reason(reason), _dead_at(headers, death) or now)


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return {}


def _dead_at(headers: Mapping[str, Any], death: Mapping[str, Any]) -> datetime | None:
    stamp = _text(headers.get("x-dead-at"))
    if stamp is not None:
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(stamp)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    when = death.get("time")
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def describe_error(exc: BaseException, secret: str = "") -> str:
    """A one-line description of a library error with `secret` (a URL password) masked."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # Connection errors can quote the URL; never let the password through.
    return text.replace(secret, "******") if secret else text


@contextlib.contextmanager
def translate_errors(action: str, secret: str = "") -> Iterator[None]:
    """Re-raise any library error inside as BrokerError (the adapter boundary)."""
    try:
        yield
    except BrokerError:
        raise
    except Exception as exc:
        raise BrokerError(f"{action} failed: {describe_error(exc, secret)}") from exc
