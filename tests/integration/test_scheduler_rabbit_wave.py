"""A due wave published to the real RabbitMQ while the broker refuses part of it.

The main queue is capped (max-length with reject-publish), so the broker nacks whatever does
not fit, in the middle of the scheduler's pipelined batches. Only the rows whose publish was
not confirmed go back `pending`; the sweep publishes them once the grace has passed; in the end
every planned row has landed in the queue exactly once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import aio_pika
import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.base import MAIN_QUEUE
from birthday_scheduler.infra.broker.policy import decode_body
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from birthday_scheduler.messages.models import MessageLog, MessageStatus
from birthday_scheduler.settings import Settings
from rabbit_vhost import create_vhost, delete_vhost, rabbitmqctl, vhost_url
from support import FakeClock

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

DUE = 200
ROOM = 120  # messages the queue takes before it refuses publishes
WAVE_NOW = datetime(2026, 6, 15, 9, 0, 1, tzinfo=UTC)


@pytest.fixture
def vhost() -> Iterator[str]:
    name = create_vhost("wave-test")
    # Before the queue exists, so the cap holds from its declaration on.
    rabbitmqctl(
        "set_policy", "-p", name, "--apply-to", "queues", "capped", f"^{MAIN_QUEUE}$",
        f'{{"max-length": {ROOM}, "overflow": "reject-publish"}}',
    )  # fmt: skip
    yield name
    delete_vhost(name)


@pytest.fixture
async def resources(pg_database_url: str, vhost: str) -> AsyncIterator[runtime.Resources]:
    conn = await asyncpg.connect(pg_database_url)
    try:
        await conn.execute(
            """
            INSERT INTO users (id, first_name, last_name, email, date_of_birth,
                               timezone_offset_minutes, created_at, updated_at)
            SELECT gen_random_uuid(), 'Wave', 'User ' || i, 'wave-' || i || '@example.com',
                   date '1990-06-15', 0, timestamptz '2026-01-01 00:00Z',
                   timestamptz '2026-01-01 00:00Z'
            FROM generate_series(1, $1::int) AS i
            """,
            DUE,
        )
        await conn.execute(
            """
            INSERT INTO message_schedules (user_id, kind, next_fire_at, occasion_date)
            SELECT id, 'birthday', timestamptz '2026-06-15 09:00Z', date '2026-06-15' FROM users
            """
        )
    finally:
        await conn.close()
    # Small batches and publishes: the refusal falls in the middle of the wave's batches.
    settings = Settings(database_url=pg_database_url, scheduler_batch_size=40)
    broker = RabbitBroker(vhost_url(vhost), publish_batch=15, operation_timeout=10.0)
    async with runtime.open_resources(settings, broker=broker, clock=FakeClock(WAVE_NOW)) as res:
        yield res


async def take_all(vhost: str) -> list[uuid.UUID]:
    """Every id the main queue holds, removed from it."""
    connection = await aio_pika.connect(vhost_url(vhost))
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(MAIN_QUEUE, passive=True)
        taken = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            taken.append(decode_body(message.body))
        return taken
    finally:
        await connection.close()


async def statuses(resources: runtime.Resources) -> dict[uuid.UUID, str]:
    async with resources.sessions() as session:
        rows = await session.execute(select(MessageLog.id, MessageLog.status))
        return {row_id: status for row_id, status in rows.all()}


async def test_a_wave_the_broker_refuses_in_part_lands_in_the_queue_exactly_once(
    resources: runtime.Resources, vhost: str
) -> None:
    scheduler = runtime.build_scheduler(resources, "wave-test")

    report = await scheduler.tick(WAVE_NOW)

    assert report.planned == DUE
    first = await take_all(vhost)
    rows = await statuses(resources)
    assert len(rows) == DUE
    assert 0 < len(first) < DUE  # the broker refused part of the wave
    # Exactly the confirmed rows stay queued; the others wait, pending, for the sweep.
    assert {i for i, s in rows.items() if s == MessageStatus.QUEUED} == set(first)
    assert {i for i, s in rows.items() if s == MessageStatus.PENDING} == set(rows) - set(first)

    # The queue has room again (drained); once the grace has passed the sweep publishes the
    # rows handed back, and only those.
    swept = await scheduler.tick(WAVE_NOW + runtime.PUBLISH_GRACE)
    assert swept.republished == DUE - len(first)
    second = await take_all(vhost)

    assert Counter(first + second) == Counter(list(rows))  # each planned row once, none lost
    assert set((await statuses(resources)).values()) == {MessageStatus.QUEUED}
