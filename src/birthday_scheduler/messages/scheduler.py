"""The scheduler: each tick plans what has come due, then publishes after the commit.

Safe as several replicas: schedules are claimed with FOR UPDATE SKIP LOCKED, ledger rows are
unique per (user, kind, local date), and the broker only ever carries committed ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from birthday_scheduler.clock import Clock
from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker.base import MAIN_QUEUE, Broker, UnconfirmedPublish
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.infra.db_faults import is_unavailable
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.infra.metrics import (
    MESSAGES_ISOLATED,
    MESSAGES_PLANNED,
    MESSAGES_PROCESSED,
    SCHEDULER_LAST_TICK,
    SCHEDULER_TICK_DURATION,
)
from birthday_scheduler.messages import heartbeat, idle_probe, schedules
from birthday_scheduler.messages.ledger import planned as new_rows
from birthday_scheduler.messages.ledger import publishing
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.messages.planning import PlanningPolicy, plan_due
from birthday_scheduler.messages.sweep import StaleRow, late_reason, plan_sweep

log = get_logger(__name__)


# A row in these states may have a copy in the queue (published, or redelivered after its
# worker died): the sweep asks the broker before publishing another.
_BROKER_MAY_HOLD = (MessageStatus.QUEUED, MessageStatus.SENDING)
# Health calls a scheduler stale after a minute without a heartbeat; a few seconds is plenty.
HEARTBEAT_EVERY = timedelta(seconds=5)


@dataclass(frozen=True)
class _Batch:
    planned: int
    skipped: int
    republished: int
    full: bool


@dataclass(frozen=True)
class TickReport:
    planned: int
    skipped: int
    republished: int
    duration_ms: float


@dataclass
class Scheduler:
    sessions: async_sessionmaker[AsyncSession]
    broker: Broker
    clock: Clock
    policy: PlanningPolicy
    batch_size: int
    replica: str = "scheduler"
    # Concurrent transactions that drain a wave, so the database and Python overlap. One on
    # SQLite, which has a single writer.
    lanes: int = 3
    _last_beat: datetime | None = field(default=None, init=False)

    async def tick(self, now: datetime) -> TickReport:
        """Plan every schedule due at `now` and re-publish rows whose holder was lost.

        Both happen in one transaction per batch, so an idle tick is a single round of reads.
        """
        started = time.perf_counter()
        batches = []
        if await self._anything_to_do(now):
            batches.append(await self._batch(now))
        if batches and batches[0].full:
            # A wave (every 1 January birthday at once, say): drain it in parallel lanes, as
            # replicas would; SKIP LOCKED keeps the lanes' batches apart.
            lanes = await asyncio.gather(*(self._drain(now) for _ in range(self.lanes)))
            batches += [batch for lane in lanes for batch in lane]
        planned = sum(batch.planned for batch in batches)
        skipped = sum(batch.skipped for batch in batches)
        republished = sum(batch.republished for batch in batches)
        await self._beat(now)
        duration = time.perf_counter() - started
        SCHEDULER_TICK_DURATION.observe(duration)
        SCHEDULER_LAST_TICK.set(now.timestamp())
        report = TickReport(planned, skipped, republished, round(duration * 1000, 2))
        log.info(
            "scheduler.tick",
            planned=planned,
            skipped=skipped,
            republished=republished,
            duration_ms=report.duration_ms,
        )
        return report

    async def _anything_to_do(self, now: datetime) -> bool:
        engine = self.sessions.kw.get("bind")
        if not isinstance(engine, AsyncEngine) or not idle_probe.supported(engine):
            return True
        return await idle_probe.anything_to_do(engine, now)

    async def _drain(self, now: datetime) -> list[_Batch]:
        batches = [await self._batch(now)]
        while batches[-1].full:
            batches.append(await self._batch(now))
        return batches

    async def _batch(self, now: datetime) -> _Batch:
        policy = self.policy
        dead: list[tuple[uuid.UUID, str]] = []
        async with unit_of_work(self.sessions) as session:
            due = await schedules.claim_due_schedules(session, now, self.batch_size)
            written: list[tuple[uuid.UUID, MessageStatus]] = []
            revived: set[uuid.UUID] = set()
            if due:
                plan = plan_due(due, policy, now)
                revived = await new_rows.revivable(session, [row.id for row in plan.rows])
                written = await new_rows.write_tick_plan(
                    session,
                    plan.rows,
                    plan.advances,
                    now,
                    skip_reason=late_reason(policy.catch_up_window),
                )
                await schedules.drop_schedules(session, plan.dropped)
                reasons = {row.id: reason for row, reason in plan.dead}
                dead = [
                    (row_id, reasons[row_id])
                    for row_id in await new_rows.insert_dead_rows(session, plan.dead, now)
                ]
            stale = await publishing.lock_stale(session, now, self.batch_size)
            sweep = plan_sweep(
                stale,
                now,
                policy.catch_up_window,
                queue_has_backlog=await self._queue_has_backlog(stale),
            )
            await publishing.apply_sweep(
                session,
                sweep,
                now,
                publish_grace=policy.publish_grace,
                queue_lease=policy.queue_lease,
                late_reason=late_reason(policy.catch_up_window),
            )
        planned_ids = [row_id for row_id, status in written if status == MessageStatus.QUEUED]
        if revived & set(planned_ids) and await self._backlog():
            # A revived row's copy from before its cancel may still wait in the queue: publish
            # it only into an empty queue; otherwise its lease brings it to the sweep.
            planned_ids = [row_id for row_id in planned_ids if row_id not in revived]
        skipped = sum(1 for _, status in written if status == MessageStatus.SKIPPED)
        skipped += len(sweep.late)
        MESSAGES_PLANNED.inc(len(planned_ids))
        if skipped:
            MESSAGES_PROCESSED.labels(outcome="skipped").inc(skipped)
            log.warning("scheduler.messages_skipped", count=skipped, reason="past catch-up window")
        # After the commit: nothing is published before its row exists.
        await self._dead_letter(dead, now)
        await self._publish(planned_ids, sweep.republish, now)
        return _Batch(
            planned=len(planned_ids),
            skipped=skipped,
            republished=len(sweep.republish),
            full=len(due) >= self.batch_size or len(stale) >= self.batch_size,
        )

    async def _queue_has_backlog(self, stale: list[StaleRow]) -> bool:
        """Whether the main queue still holds messages; asked only when the lease of a row the
        broker may hold ran out. Unknown (broker unreachable) counts as a backlog: publishing
        would fail too."""
        if not any(row.status in _BROKER_MAY_HOLD for row in stale):
            return False
        return await self._backlog()

    async def _backlog(self) -> bool:
        try:
            return await self.broker.queue_depth(MAIN_QUEUE) > 0
        except BrokerError:
            return True

    async def _dead_letter(self, dead: list[tuple[uuid.UUID, str]], now: datetime) -> None:
        """A copy in the DLQ for each occasion that could not be planned, after its commit."""
        for row_id, reason in dead:
            MESSAGES_PROCESSED.labels(outcome="dead").inc()
            MESSAGES_ISOLATED.labels(stage="planning").inc()
            log.error("scheduler.message_unplannable", message_id=str(row_id), reason=reason)
            try:
                await self.broker.publish_dead(row_id, reason, now)
            except BrokerError as exc:
                # The row stays `dead` with its reason; `dlq replay --id` still finds nothing
                # to replay, so say so where operators look.
                log.error("scheduler.dead_letter_failed", message_id=str(row_id), error=str(exc))

    async def _beat(self, now: datetime) -> None:
        """Record the heartbeat every HEARTBEAT_EVERY, not every tick: it is a durable write."""
        if self._last_beat is not None and now - self._last_beat < HEARTBEAT_EVERY:
            return
        async with unit_of_work(self.sessions) as session:
            await heartbeat.beat(session, self.replica, now)
        self._last_beat = now

    async def _publish(
        self, planned_ids: list[uuid.UUID], stale: list[uuid.UUID], now: datetime
    ) -> None:
        """Publish committed rows, then record what the publish means for each.

        Planned rows were written `queued`: a confirmed publish needs no second write, a failed
        one hands them back as `pending` for the sweep. Swept rows carry only the publish grace
        until a confirmed publish gives them the queue's lease. Should the scheduler die in
        between, the leases already written bring every row back to the sweep.
        """
        if not planned_ids and not stale:
            return
        try:
            await self.broker.publish([*planned_ids, *stale])
        except BrokerError as exc:
            # Only what may be missing from the queue goes back: a confirmed row handed back
            # would be published a second time by the sweep.
            unconfirmed = set(exc.unconfirmed) if isinstance(exc, UnconfirmedPublish) else None
            if unconfirmed is not None:
                confirmed = [row_id for row_id in stale if row_id not in unconfirmed]
                planned_ids = [row_id for row_id in planned_ids if row_id in unconfirmed]
            else:
                confirmed = []
            log.error(
                "scheduler.publish_failed",
                count=len(planned_ids) + len(stale) - len(confirmed),
                error=str(exc),
            )
            async with unit_of_work(self.sessions) as session:
                await publishing.release_unpublished(
                    session, planned_ids, now, self.policy.publish_grace
                )
                await publishing.mark_queued(session, confirmed, now, self.policy.queue_lease)
            return
        if stale:
            async with unit_of_work(self.sessions) as session:
                await publishing.mark_queued(session, stale, now, self.policy.queue_lease)

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Tick until `stop` is set; a failed tick is logged and the next one tries again."""
        log.info("scheduler.started", interval_ms=round(interval_s * 1000))
        while not stop.is_set():
            try:
                await self.tick(self.clock.now())
            except Exception as exc:
                # The type only: a database error's text carries its SQL and parameters.
                if is_unavailable(exc):
                    log.warning("scheduler.database_unavailable", error=type(exc).__name__)
                else:
                    log.error("scheduler.tick_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
        log.info("scheduler.stopped")
