"""The worker's batched claims and outcomes keep every rule of one message at a time: each
message is claimed once and sent to its own recipient, a racing claim loses, a late row is
skipped and a deleted user's row cancelled in the claim, an outcome of an older attempt is
fenced off even inside a batch, and a batch statement that fails fails every message in it, so
each goes back to the broker. On PostgreSQL and on SQLite, against the real database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text

from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.delivery.worker import DeliveryWorker
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.ledger import claims
from birthday_scheduler.messages.models import MessageLog, MessageStatus
from birthday_scheduler.settings import Settings
from birthday_scheduler.users.models import User
from support import FakeClock

NEVER = 3600.0  # a batch window no test waits out: batches leave once they are full
WINDOW = timedelta(hours=72)


@dataclasses.dataclass(frozen=True)
class Row:
    message_id: uuid.UUID
    email: str


class Recorder:
    """A message service that accepts everything, remembering who got which message."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []  # (idempotency key, email)
        self.before_answer: Callable[[str], Awaitable[None]] | None = None

    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult:
        self.sent.append((idempotency_key, email))
        if self.before_answer is not None:
            await self.before_answer(idempotency_key)
        return SendResult(Outcome.SENT, 200, "http 200")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, rate_limit_per_minute=0, catch_up_window_hours=72)


@pytest.fixture
def service() -> Recorder:
    return Recorder()


def worker_for(
    resources: runtime.Resources, service: Recorder, *, batch: int | None = None
) -> DeliveryWorker:
    """The worker as the process builds it; with `batch`, every batch leaves exactly when it
    holds that many items (and never on a timer)."""
    worker = runtime.build_worker(resources, service, runtime.build_breaker(resources))
    if batch is None:
        return worker
    return dataclasses.replace(worker, batch_window_s=NEVER, batch_max_items=batch)


async def seed(
    resources: runtime.Resources,
    clock: FakeClock,
    count: int,
    *,
    scheduled_at: datetime | None = None,
    status: MessageStatus = MessageStatus.QUEUED,
    deleted: bool = False,
) -> list[Row]:
    """`count` users, each with one due ledger row, written straight into the tables."""
    now = clock.now()
    due = scheduled_at or now - timedelta(seconds=1)
    rows = [Row(uuid.uuid4(), f"batch-{uuid.uuid4().hex[:10]}@example.com") for _ in range(count)]
    users = [uuid.uuid4() for _ in rows]
    async with unit_of_work(resources.sessions) as session:
        await session.execute(
            insert(User),
            [
                {
                    "id": user_id,
                    "first_name": "Batch",
                    "last_name": f"User{i}",
                    "email": row.email,
                    "date_of_birth": date(1990, 1, 1),
                    "timezone": None,
                    "timezone_offset_minutes": 0,
                    "created_at": now,
                    "updated_at": now,
                    "deleted_at": now if deleted else None,
                }
                for i, (row, user_id) in enumerate(zip(rows, users, strict=True))
            ],
        )
        await session.execute(
            insert(MessageLog),
            [
                {
                    "id": row.message_id,
                    "user_id": user_id,
                    "kind": "birthday",
                    "occasion_date": due.date(),
                    "idempotency_key": str(row.message_id),
                    "status": status.value,
                    "attempts": 0,
                    "scheduled_at": due,
                    "not_before": due,
                    "lease_until": now + timedelta(minutes=5),
                    "created_at": now,
                    "updated_at": now,
                }
                for row, user_id in zip(rows, users, strict=True)
            ],
        )
    return rows


async def ledger(resources: runtime.Resources, rows: Sequence[Row]) -> dict[uuid.UUID, MessageLog]:
    async with resources.sessions() as session:
        found = await session.execute(
            select(MessageLog).where(MessageLog.id.in_([r.message_id for r in rows]))
        )
        return {row.id: row for row in found.scalars()}


async def test_many_concurrent_messages_are_each_claimed_once_and_sent_to_their_own_recipient(
    resources: runtime.Resources, service: Recorder, clock: FakeClock
) -> None:
    rows = await seed(resources, clock, 120)
    worker = worker_for(resources, service, batch=len(rows))
    await asyncio.gather(*(worker.handle(r.message_id) for r in rows))
    assert sorted(service.sent) == sorted((str(r.message_id), r.email) for r in rows)
    found = await ledger(resources, rows)
    assert {(f.status, f.attempts, f.sent_at) for f in found.values()} == {("sent", 1, clock.now())}


async def test_a_message_delivered_twice_into_one_batch_is_sent_once(
    resources: runtime.Resources, service: Recorder, clock: FakeClock
) -> None:
    [twice, once] = await seed(resources, clock, 2)
    worker = worker_for(resources, service)
    await asyncio.gather(*(worker.handle(i) for i in (twice.message_id, once.message_id) * 2))
    assert sorted(service.sent) == sorted(
        [(str(twice.message_id), twice.email), (str(once.message_id), once.email)]
    )
    found = await ledger(resources, [twice, once])
    assert {(f.status, f.attempts) for f in found.values()} == {("sent", 1)}


async def test_two_workers_racing_for_the_same_messages_send_each_once(
    resources: runtime.Resources, service: Recorder, clock: FakeClock
) -> None:
    rows = await seed(resources, clock, 40)
    first, second = worker_for(resources, service), worker_for(resources, service)
    await asyncio.gather(
        *(first.handle(r.message_id) for r in rows),
        *(second.handle(r.message_id) for r in reversed(rows)),
    )
    keys = [key for key, _ in service.sent]
    assert sorted(keys) == sorted(str(r.message_id) for r in rows)
    found = await ledger(resources, rows)
    assert {(f.status, f.attempts) for f in found.values()} == {("sent", 1)}


async def test_a_claim_batch_skips_the_late_cancels_the_deleted_and_leaves_the_finished(
    resources: runtime.Resources, service: Recorder, clock: FakeClock
) -> None:
    [on_time] = await seed(resources, clock, 1)
    [late] = await seed(resources, clock, 1, scheduled_at=clock.now() - WINDOW - timedelta(hours=1))
    [gone] = await seed(resources, clock, 1, deleted=True)
    [done] = await seed(resources, clock, 1, status=MessageStatus.SENT)
    [not_yet] = await seed(resources, clock, 1, scheduled_at=clock.now() + timedelta(hours=1))
    everything = [on_time, late, gone, done, not_yet]
    worker = worker_for(resources, service)
    await asyncio.gather(*(worker.handle(r.message_id) for r in everything))
    assert service.sent == [(str(on_time.message_id), on_time.email)]
    found = await ledger(resources, everything)
    assert (found[on_time.message_id].status, found[on_time.message_id].attempts) == ("sent", 1)
    assert found[late.message_id].status == "skipped"
    assert "catch-up window" in (found[late.message_id].last_error or "")
    assert found[late.message_id].attempts == 0
    assert (found[gone.message_id].status, found[gone.message_id].attempts) == ("cancelled", 1)
    assert found[gone.message_id].lease_until is None
    assert (found[done.message_id].status, found[done.message_id].attempts) == ("sent", 0)
    assert (found[not_yet.message_id].status, found[not_yet.message_id].attempts) == ("queued", 0)


async def test_claim_batch_answers_each_id_in_order_and_a_repeat_is_not_claimable(
    resources: runtime.Resources, clock: FakeClock
) -> None:
    [first, second] = await seed(resources, clock, 2)
    [late] = await seed(resources, clock, 1, scheduled_at=clock.now() - WINDOW - timedelta(hours=1))
    now = clock.now()
    ids = [second.message_id, late.message_id, first.message_id, second.message_id]
    async with unit_of_work(resources.sessions) as session:
        answers = await claims.claim_batch(
            session, ids, now, timedelta(seconds=15), now - WINDOW, "late"
        )
    assert [a.claimed.email if a.claimed else None for a in answers] == [
        second.email,
        None,
        first.email,
        None,
    ]
    assert [a.skipped_late for a in answers] == [False, True, False, False]
    assert [a.claimed.attempts if a.claimed else None for a in answers] == [1, None, 1, None]


async def test_an_outcome_of_an_older_attempt_is_fenced_off_inside_a_batch(
    resources: runtime.Resources, service: Recorder, clock: FakeClock
) -> None:
    rows = await seed(resources, clock, 6)
    stolen = rows[0]
    worker = worker_for(resources, service, batch=len(rows))

    async def steal(key: str) -> None:
        # While this worker waits for the service, its lease runs out and another worker
        # claims the row: this attempt's outcome must not overwrite that one's.
        if key != str(stolen.message_id):
            return
        later = clock.now() + timedelta(minutes=1)
        async with unit_of_work(resources.sessions) as session:
            assert await claims.claim_for_sending(
                session, stolen.message_id, later, timedelta(minutes=5), later - WINDOW
            )

    assert worker.lease < timedelta(minutes=1)  # the first claim's lease ends before `later`
    service.before_answer = steal
    await asyncio.gather(*(worker.handle(r.message_id) for r in rows))
    found = await ledger(resources, rows)
    assert (found[stolen.message_id].status, found[stolen.message_id].attempts) == ("sending", 2)
    assert {(found[r.message_id].status, found[r.message_id].attempts) for r in rows[1:]} == {
        ("sent", 1)
    }


async def test_record_outcomes_fences_each_write_by_its_own_attempt(
    resources: runtime.Resources, clock: FakeClock
) -> None:
    rows = await seed(resources, clock, 3)
    now = clock.now()
    async with unit_of_work(resources.sessions) as session:
        for row in rows:
            assert await claims.claim_for_sending(
                session, row.message_id, now, timedelta(seconds=15), now - WINDOW
            )
    retry_at = now + timedelta(minutes=2)
    writes = [
        claims.OutcomeWrite(rows[0].message_id, 1, MessageStatus.SENT, now),
        claims.OutcomeWrite(rows[1].message_id, 0, MessageStatus.SENT, now),  # an older attempt
        claims.OutcomeWrite(
            rows[2].message_id, 1, MessageStatus.FAILED, now, error="http 503", retry_at=retry_at
        ),
        claims.OutcomeWrite(rows[0].message_id, 2, MessageStatus.DEAD, now, error="not mine"),
    ]
    async with unit_of_work(resources.sessions) as session:
        assert await claims.record_outcomes(session, writes) == [True, False, True, False]
    found = await ledger(resources, rows)
    sent, fenced, failed = (found[r.message_id] for r in rows)
    assert (sent.status, sent.sent_at, sent.lease_until, sent.last_error) == (
        "sent",
        now,
        None,
        None,
    )
    assert (fenced.status, fenced.attempts) == ("sending", 1)
    assert (failed.status, failed.not_before, failed.lease_until, failed.last_error) == (
        "failed",
        retry_at,
        retry_at,
        "http 503",
    )
    assert failed.sent_at is None


async def refuse_updates(resources: runtime.Resources, message_id: uuid.UUID, status: str) -> None:
    """A trigger that makes any statement moving this row into `status` fail."""
    async with unit_of_work(resources.sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.id = '{message_id}' AND NEW.status = '{status}' THEN "
                    "RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON message_logs "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
        else:
            await session.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON message_logs "
                    f"WHEN NEW.id = '{message_id.hex}' AND NEW.status = '{status}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )


async def test_a_failed_claim_batch_fails_every_message_in_it_and_sends_none(
    resources: runtime.Resources, service: Recorder, clock: FakeClock
) -> None:
    rows = await seed(resources, clock, 8)
    await refuse_updates(resources, rows[3].message_id, "sending")
    worker = worker_for(resources, service, batch=len(rows))
    results = await asyncio.gather(
        *(worker.handle(r.message_id) for r in rows), return_exceptions=True
    )
    assert all(isinstance(result, Exception) for result in results), results
    assert service.sent == []
    found = await ledger(resources, rows)
    assert {(f.status, f.attempts) for f in found.values()} == {("queued", 0)}


async def test_a_failed_outcome_batch_fails_every_message_in_it(
    resources: runtime.Resources, service: Recorder, clock: FakeClock
) -> None:
    rows = await seed(resources, clock, 8)
    await refuse_updates(resources, rows[5].message_id, "sent")
    worker = worker_for(resources, service, batch=len(rows))
    results = await asyncio.gather(
        *(worker.handle(r.message_id) for r in rows), return_exceptions=True
    )
    # Every handle raised, so the broker hands every message back: none is acked unrecorded.
    assert all(isinstance(result, Exception) for result in results), results
    assert len(service.sent) == len(rows)
    found = await ledger(resources, rows)
    assert {(f.status, f.attempts) for f in found.values()} == {("sending", 1)}
