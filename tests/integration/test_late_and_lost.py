"""Late, or lost: a killed worker's rows come back within seconds, the catch-up window holds at
the moment of sending, a row that cannot be planned or sent is isolated, and the sweep never
puts a second copy of a row in the queue. On PostgreSQL and on SQLite, with a FakeClock.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.delivery.worker import DeliveryWorker
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE, MAIN_QUEUE
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.infra.metrics import MESSAGES_ISOLATED
from birthday_scheduler.messages.models import MessageLog, MessageSchedule
from birthday_scheduler.messages.scheduler import Scheduler
from birthday_scheduler.settings import Settings
from birthday_scheduler.users.models import User
from support import FakeClock, create_user_id, drain_queue

SEND = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
EVE = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


class Recorder:
    """A message service that accepts everything, or hangs until released."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.hang = False
        self.entered = asyncio.Event()

    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult:
        self.entered.set()
        if self.hang:
            await asyncio.Event().wait()  # until cancelled: the worker is killed mid-call
        self.accepted.append(idempotency_key)
        return SendResult(Outcome.SENT, 200, "sent")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        rate_limit_per_minute=0,
        message_service_timeout_ms=10_000,
        message_visibility_timeout_s=300,
        catch_up_window_hours=72,
    )


@pytest.fixture
def scheduler(resources: runtime.Resources) -> Scheduler:
    return runtime.build_scheduler(resources, "test-late-and-lost")


@pytest.fixture
def service() -> Recorder:
    return Recorder()


@pytest.fixture
def worker(resources: runtime.Resources, service: Recorder) -> DeliveryWorker:
    return runtime.build_worker(resources, service, runtime.build_breaker(resources))


async def rows(resources: runtime.Resources) -> list[MessageLog]:
    async with resources.sessions() as session:
        result = await session.execute(select(MessageLog).order_by(MessageLog.scheduled_at))
        return list(result.scalars())


async def test_a_killed_workers_message_goes_out_within_thirty_seconds(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    service: Recorder,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    await create_user_id(client)
    clock.set(SEND)
    await scheduler.tick(SEND)
    [message_id] = await drain_queue(resources.require_broker())
    service.hang = True
    killed = asyncio.create_task(worker.handle(message_id))
    await asyncio.wait_for(service.entered.wait(), timeout=5)
    killed.cancel()  # the process dies between the claim and the outcome
    await asyncio.gather(killed, return_exceptions=True)
    [row] = await rows(resources)
    assert (row.status, row.attempts) == ("sending", 1)

    # The broker redelivers the unacked copy at once: the row is still held, so it is dropped.
    await worker.handle(message_id)
    assert service.accepted == []

    service.hang = False
    kill = SEND
    republished = 0
    for seconds in range(1, 31):  # a tick a second, as the scheduler runs
        clock.set(kill + timedelta(seconds=seconds))
        republished += (await scheduler.tick(clock.now())).republished
        for queued in await drain_queue(resources.require_broker()):
            await worker.handle(queued)
        if service.accepted:
            break
    assert service.accepted == [str(message_id)]
    assert republished == 1
    assert clock.now() - kill <= timedelta(seconds=30)
    [row] = await rows(resources)
    assert (row.status, row.attempts) == ("sent", 2)


async def test_a_message_held_back_past_the_window_is_skipped_when_it_would_be_sent(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    service: Recorder,
    clock: FakeClock,
) -> None:
    """Planned on time, then the workers (or the service, or the broker) were away for four
    days: the copy that finally reaches a worker is recorded skipped, not sent days late."""
    clock.set(EVE)
    await create_user_id(client)
    await scheduler.tick(SEND)
    [message_id] = await drain_queue(resources.require_broker())

    clock.set(SEND + timedelta(hours=73))
    await worker.handle(message_id)

    assert service.accepted == []
    [row] = await rows(resources)
    assert row.status == "skipped"
    assert row.lease_until is None
    assert row.last_error is not None
    assert "catch-up window" in row.last_error


async def test_the_sweep_skips_rows_past_the_window_instead_of_publishing_them(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    await create_user_id(client)
    await scheduler.tick(SEND)
    await drain_queue(resources.require_broker())  # the broker lost it

    report = await scheduler.tick(SEND + timedelta(hours=73))

    assert report.republished == 0
    assert await resources.require_broker().queue_depth(MAIN_QUEUE) == 0
    [row] = await rows(resources)
    assert row.status == "skipped"
    assert row.last_error is not None
    assert "catch-up window" in row.last_error


async def test_catch_up_window_of_zero_is_refused() -> None:
    from birthday_scheduler.errors import ConfigurationError
    from birthday_scheduler.settings import load_settings

    with pytest.raises(ConfigurationError, match="CATCH_UP_WINDOW_HOURS"):
        load_settings({"CATCH_UP_WINDOW_HOURS": "0"})


async def test_a_schedule_that_cannot_be_planned_is_dead_lettered_and_the_rest_go_on(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    broken = await create_user_id(client, timezone="Europe/Paris", timezoneOffset=...)
    healthy = await create_user_id(client)
    # The host's tzdata lost the zone after the user was created (or the row was edited by hand).
    async with unit_of_work(resources.sessions) as session:
        await session.execute(
            update(User).where(User.id == uuid.UUID(broken)).values(timezone="Mars/Olympus_Mons")
        )
    isolated_before = MESSAGES_ISOLATED.labels(stage="planning")._value.get()

    first = await scheduler.tick(SEND)
    second = await scheduler.tick(SEND + timedelta(seconds=1))

    assert first.planned == 1  # the healthy user's
    assert second.planned == 0
    by_user = {str(row.user_id): row for row in await rows(resources)}
    assert by_user[healthy].status == "queued"
    assert by_user[broken].status == "dead"
    assert by_user[broken].last_error is not None
    assert "time zone 'Mars/Olympus_Mons'" in by_user[broken].last_error
    assert await resources.require_broker().queue_depth(DEAD_LETTER_QUEUE) == 1
    assert MESSAGES_ISOLATED.labels(stage="planning")._value.get() == isolated_before + 1
    async with resources.sessions() as session:
        left = await session.scalar(
            select(MessageSchedule.user_id).where(MessageSchedule.user_id == uuid.UUID(broken))
        )
    assert left is None  # it no longer fails every tick


async def test_a_message_of_a_kind_no_longer_registered_is_dead_lettered_by_the_worker(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    service: Recorder,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    await create_user_id(client)
    await scheduler.tick(SEND)
    [message_id] = await drain_queue(resources.require_broker())
    async with unit_of_work(resources.sessions) as session:
        await session.execute(
            update(MessageLog).where(MessageLog.id == message_id).values(kind="retired_kind")
        )

    clock.set(SEND + timedelta(seconds=1))
    await worker.handle(message_id)  # returns: the message is acked, not redelivered for ever

    [row] = await rows(resources)
    assert row.status == "dead"
    assert row.last_error is not None
    assert "retired_kind" in row.last_error
    assert service.accepted == []
    assert await resources.require_broker().queue_depth(DEAD_LETTER_QUEUE) == 1


async def test_a_message_whose_attempts_are_spent_by_crashes_is_dead_lettered(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    service: Recorder,
    clock: FakeClock,
) -> None:
    """A message that kills its worker every time (claimed, never recorded) would otherwise come
    back at every lease for ever."""
    clock.set(EVE)
    await create_user_id(client)
    await scheduler.tick(SEND)
    [message_id] = await drain_queue(resources.require_broker())
    limit = resources.settings.max_delivery_attempts
    async with unit_of_work(resources.sessions) as session:
        await session.execute(
            update(MessageLog).where(MessageLog.id == message_id).values(attempts=limit)
        )

    clock.set(SEND + timedelta(seconds=1))
    await worker.handle(message_id)

    [row] = await rows(resources)
    assert row.status == "dead"
    assert service.accepted == []


async def test_workers_down_for_a_day_leave_one_copy_of_each_row_in_the_queue(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    service: Recorder,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    for _ in range(20):
        await create_user_id(client)
    broker = resources.require_broker()
    assert (await scheduler.tick(SEND)).planned == 20

    # No consumer for a day; the scheduler ticks through many visibility timeouts.
    for minutes in range(5, 24 * 60, 5):
        await scheduler.tick(SEND + timedelta(minutes=minutes))
    assert await broker.queue_depth(MAIN_QUEUE) == 20

    # A queue that really lost its messages (purged) is refilled, once per row, and the
    # workers, back, send each once.
    await drain_queue(broker)
    refilled: list[uuid.UUID] = []
    for minutes in range(24 * 60 + 5, 24 * 60 + 20, 5):
        clock.set(SEND + timedelta(minutes=minutes))
        await scheduler.tick(clock.now())
        for message_id in await drain_queue(broker):
            refilled.append(message_id)
            await worker.handle(message_id)
    every_row = sorted(r.id for r in await rows(resources))
    assert sorted(refilled) == every_row
    assert sorted(service.accepted) == sorted(str(row_id) for row_id in every_row)


async def test_a_row_skipped_when_planned_says_why(
    client: httpx.AsyncClient, resources: runtime.Resources, scheduler: Scheduler, clock: FakeClock
) -> None:
    clock.set(EVE)
    await create_user_id(client)

    await scheduler.tick(SEND + timedelta(hours=73))  # the scheduler was down for three days

    [row] = await rows(resources)
    assert row.status == "skipped"
    assert row.last_error is not None
    assert "catch-up window" in row.last_error


async def test_a_killed_workers_redelivered_copy_is_the_only_copy(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    service: Recorder,
    clock: FakeClock,
) -> None:
    """The broker hands a killed worker's unacked message back to the queue; when the row's
    lease runs out the sweep must not publish a second copy beside it."""
    clock.set(EVE)
    await create_user_id(client)
    clock.set(SEND)
    await scheduler.tick(SEND)
    broker = resources.require_broker()
    [message_id] = await drain_queue(broker)
    service.hang = True
    killed = asyncio.create_task(worker.handle(message_id))
    await asyncio.wait_for(service.entered.wait(), timeout=5)
    killed.cancel()
    await asyncio.gather(killed, return_exceptions=True)
    await broker.publish([message_id])  # the broker's redelivery, waiting for a worker

    clock.set(SEND + timedelta(minutes=5))
    report = await scheduler.tick(clock.now())

    assert report.republished == 0
    assert await broker.queue_depth(MAIN_QUEUE) == 1
    [row] = await rows(resources)
    assert (row.status, row.attempts) == ("queued", 1)  # handed back, its attempt counted
    service.hang = False
    [copy] = await drain_queue(broker)
    await worker.handle(copy)
    assert service.accepted == [str(message_id)]


async def test_a_revived_occasion_is_not_published_beside_its_queued_copy(
    client: httpx.AsyncClient, resources: runtime.Resources, scheduler: Scheduler, clock: FakeClock
) -> None:
    """Published, then cancelled by an edit and revived by another (the same local date): the
    first copy still waits in the queue, so the revival must not add a second (found by the
    model-based test)."""
    clock.set(EVE)
    user_id = await create_user_id(client, timezoneOffset=120)  # 09:00 at +02:00 is 07:00Z
    first_send = datetime(2026, 7, 1, 7, tzinfo=UTC)
    await scheduler.tick(first_send)
    broker = resources.require_broker()
    assert await broker.queue_depth(MAIN_QUEUE) == 1  # nobody has taken it yet

    for offset in (-300, 0):  # west (cancelled), then back to a zone whose 09:00 is ahead
        clock.set(first_send + timedelta(minutes=30))
        response = await client.patch(f"/users/{user_id}", json={"timezoneOffset": offset})
        assert response.status_code == 200, response.text
    # Revived (same id, queued again) but not published: the queue still holds its copy.
    assert (await scheduler.tick(SEND)).planned == 0

    assert await broker.queue_depth(MAIN_QUEUE) == 1
    [row] = await rows(resources)
    assert row.status == "queued"
    assert await drain_queue(broker) == [row.id]
