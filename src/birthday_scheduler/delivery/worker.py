"""The worker: claim a ledger row, send it through the breaker, record the outcome, then ack.

Thin shell around the ledger: returning from `handle` acks the broker message, raising hands it
back. Only the conditional update into `sending` may lead to a send, so redeliveries and
replicas never send one row twice, and the Idempotency-Key covers a send whose outcome was
lost.

The messages in flight share their database work: their claims go out together as one
statement, and so do their outcomes (delivery/batcher.py). Each `handle` still gets
its own answer, returns only once its own outcome is committed, and raises when the batch it
was in failed, so its broker message is handed back.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.clock import Clock
from birthday_scheduler.delivery.backoff import retry_delay
from birthday_scheduler.delivery.batcher import Batcher
from birthday_scheduler.delivery.breaker import CircuitBreaker
from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.infra.broker.base import Broker
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.infra.metrics import (
    DELIVERY_DURATION,
    MESSAGES_ISOLATED,
    MESSAGES_PROCESSED,
)
from birthday_scheduler.messages.kinds import DEFAULT_TEXTS, Recipient, Texts
from birthday_scheduler.messages.ledger import claims
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.messages.sweep import late_reason

log = get_logger(__name__)

# Claims, and outcomes, leave in batches: one statement at a time of each kind per worker, the
# next one holding whatever arrived while it ran (up to BATCH_MAX_ITEMS). No window beyond the
# current turn of the event loop: with WORKER_CONCURRENCY=10 a 2 ms window halved the rate
# (in-process against PostgreSQL, 10 in flight: 342-437 msg/s with 2 ms, 598-755 without; at
# 50 in flight 1,424-2,098 against 2,150-2,842), because with few messages in hand every one
# waited out the window twice; under load the batch grows while its predecessor runs instead.
# One batch in flight per kind did as well as two, with half the statements and connections.
BATCH_WINDOW_S = 0.0
BATCH_MAX_ITEMS = 100
BATCHES_IN_FLIGHT = 1

_SENT = MESSAGES_PROCESSED.labels(outcome="sent")
_RETRIED = MESSAGES_PROCESSED.labels(outcome="retried")
_DEAD = MESSAGES_PROCESSED.labels(outcome="dead")
_SKIPPED = MESSAGES_PROCESSED.labels(outcome="skipped")
_CANCELLED = MESSAGES_PROCESSED.labels(outcome="cancelled")
_ISOLATED = MESSAGES_ISOLATED.labels(stage="delivery")


class Sender(Protocol):
    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_delay_s: float
    max_delay_s: float


@dataclass
class DeliveryWorker:
    sessions: async_sessionmaker[AsyncSession]
    broker: Broker
    sender: Sender
    breaker: CircuitBreaker
    clock: Clock
    retry: RetryPolicy
    # How long a claimed row stays ours: one send's time-out plus a margin. A worker killed
    # mid-call leaves its row `sending` this long, then the sweep publishes it again.
    lease: timedelta
    catch_up_window: timedelta
    texts: Texts = DEFAULT_TEXTS  # each kind's message text (MESSAGE_TEMPLATE_<KIND>)
    rng: random.Random = field(default_factory=random.Random)
    batch_window_s: float = BATCH_WINDOW_S
    batch_max_items: int = BATCH_MAX_ITEMS
    _claims: Batcher[uuid.UUID, claims.ClaimAnswer] = field(init=False, repr=False)
    _outcomes: Batcher[claims.OutcomeWrite, bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._claims = Batcher(
            self._claim_batch,
            max_items=self.batch_max_items,
            window_s=self.batch_window_s,
            max_in_flight=BATCHES_IN_FLIGHT,
        )
        self._outcomes = Batcher(
            self._record_batch,
            max_items=self.batch_max_items,
            window_s=self.batch_window_s,
            max_in_flight=BATCHES_IN_FLIGHT,
        )

    async def handle(self, message_id: uuid.UUID) -> None:
        # The breaker comes first: while it is open, messages wait without spending attempts.
        await self.breaker.acquire()
        reported = False
        try:
            reported = await self._deliver(message_id)
        finally:
            if not reported:
                self.breaker.release()

    async def _claim_batch(self, message_ids: Sequence[uuid.UUID]) -> list[claims.ClaimAnswer]:
        # One instant for the batch: the claim's `now` is when its statement runs.
        now = self.clock.now()
        async with _batch_session(self.sessions) as session:
            return await claims.claim_batch(
                session,
                message_ids,
                now,
                self.lease,
                now - self.catch_up_window,
                late_reason(self.catch_up_window),
            )

    async def _record_batch(self, writes: Sequence[claims.OutcomeWrite]) -> list[bool]:
        async with _batch_session(self.sessions) as session:
            return await claims.record_outcomes(session, writes)

    async def _deliver(self, message_id: uuid.UUID) -> bool:
        """Returns True once the breaker has been told how the call went."""
        answer = await self._claims.submit(message_id)
        claimed = answer.claimed
        if claimed is None:
            if answer.skipped_late:
                _SKIPPED.inc()
                log.warning("message.skipped", message_id=str(message_id), reason="late")
            else:
                # Sent, finished, held by another worker, or not due yet: the ledger knows,
                # and the sweep re-publishes whatever still needs sending.
                log.debug("message.not_claimable", message_id=str(message_id))
            return False
        if claimed.user_deleted:  # recorded `cancelled` along with the claim
            _CANCELLED.inc()
            return False
        if claimed.attempts > self.retry.max_attempts:
            # Every earlier attempt ended without an outcome (its worker died mid-call): this
            # message may be what kills them. Isolate it instead of trying for ever.
            await self._isolate(
                claimed, f"attempts spent ({claimed.attempts - 1}) without an outcome"
            )
            return False
        try:
            text = self.texts.render(
                claimed.kind, Recipient(claimed.first_name, claimed.last_name, claimed.email)
            )
        except Exception as exc:  # e.g. a kind no longer registered: it never will render
            await self._isolate(claimed, f"cannot be rendered: {_detail(exc)}")
            return False
        started = time.perf_counter()
        result = await self.sender.send(claimed.email, text, claimed.idempotency_key)
        DELIVERY_DURATION.observe(time.perf_counter() - started)
        if result.outcome is Outcome.RETRYABLE:
            self.breaker.record_failure()
        else:
            # A 4xx is the service answering: it is up, whatever it thought of this message.
            self.breaker.record_success()
        await self._record(claimed, result, self.clock.now())
        return True

    async def _record(
        self, claimed: claims.ClaimedMessage, result: SendResult, now: datetime
    ) -> None:
        context = {"message_id": str(claimed.id), "kind": claimed.kind, "attempt": claimed.attempts}
        if result.outcome is Outcome.SENT:
            await self._write(claimed, MessageStatus.SENT, now)
            _SENT.inc()
            log.info("message.sent", **context)
            return
        if result.outcome is Outcome.RETRYABLE and claimed.attempts < self.retry.max_attempts:
            delay = retry_delay(
                claimed.attempts,
                self.retry.base_delay_s,
                self.retry.max_delay_s,
                result.retry_after_s,
                self.rng,
            )
            retry_at = now + timedelta(seconds=delay)
            await self._write(
                claimed, MessageStatus.FAILED, now, error=result.reason, retry_at=retry_at
            )
            _RETRIED.inc()
            log.warning(
                "message.retry_scheduled", **context, reason=result.reason, delay_s=round(delay, 3)
            )
            return
        reason = (
            result.reason
            if result.outcome is Outcome.PERMANENT
            else f"attempts spent ({claimed.attempts}): {result.reason}"
        )
        await self._dead_letter(claimed, reason, now)

    async def _isolate(self, claimed: claims.ClaimedMessage, reason: str) -> None:
        _ISOLATED.inc()
        await self._dead_letter(claimed, reason, self.clock.now())

    async def _dead_letter(
        self, claimed: claims.ClaimedMessage, reason: str, now: datetime
    ) -> None:
        # The DLQ copy goes first, so a row marked dead always has its copy there.
        await self.broker.publish_dead(claimed.id, reason, now)
        await self._write(claimed, MessageStatus.DEAD, now, error=reason)
        _DEAD.inc()
        log.error(
            "message.dead_lettered",
            message_id=str(claimed.id),
            kind=claimed.kind,
            attempt=claimed.attempts,
            reason=reason,
        )

    async def _write(
        self,
        claimed: claims.ClaimedMessage,
        status: MessageStatus,
        now: datetime,
        *,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        recorded = await self._outcomes.submit(
            claims.OutcomeWrite(
                claimed.id,
                claimed.attempts,
                status,
                now,
                error=error[:500] if error else None,
                retry_at=retry_at,
            )
        )
        if not recorded:
            log.warning(
                "message.outcome_superseded",
                message_id=str(claimed.id),
                attempt=claimed.attempts,
                status=status.value,
            )


@asynccontextmanager
async def _batch_session(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Where a batch is one statement (PostgreSQL), it runs in autocommit: the statement is its
    own transaction, committed when it returns, and BEGIN and COMMIT cost no round trips.
    Elsewhere it is a unit of work."""
    async with sessions() as session:
        if claims.is_one_statement(session):
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session
            return
    async with unit_of_work(sessions) as session:
        yield session


def _detail(exc: Exception) -> str:
    """What went wrong, without the message's data: only a LookupError (an unknown kind) says
    more than its type, and it names only the kind."""
    return f"{exc}"[:200] if isinstance(exc, LookupError) else type(exc).__name__
