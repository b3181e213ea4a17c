"""`dlq replay` over a DLQ deeper than one page: any id is found, memory stays one page, and a
replay that dies half-way loses no dead letter.

Run on PostgreSQL with the real RabbitMQ (a throwaway vhost) and on SQLite with the in-process
queue. Dead rows are written straight into the ledger with their copies in the DLQ, in the same
order; no worker runs, so what a replay publishes stays in the main queue to be counted.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, update

from birthday_scheduler.clock import SystemClock
from birthday_scheduler.delivery import dlq
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.base import (
    DEAD_LETTER_QUEUE,
    MAIN_QUEUE,
    Broker,
    DeadLetterScan,
)
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.models import MessageLog
from pipeline_support import ledger, pipeline_settings, seed_due
from rabbit_vhost import close_all_connections, create_vhost, delete_vhost, vhost_url
from support import eventually

PAGE = 50
DEPTH = 230  # four full pages and a part: deeper than a page, as a DLQ past 10,000 is
REASON = "http 400: missing field: email"


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = create_vhost("dlq-replay-test")
    yield name
    delete_vhost(name)


class ScanRecorder:
    """The broker under test, keeping each scan a replay opens so the test can read its
    counts afterwards (how many letters it read, the most it held at once)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.scans: list[DeadLetterScan] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.broker, name)

    @contextlib.asynccontextmanager
    async def scan_dead_letters(self, page_size: int) -> AsyncIterator[DeadLetterScan]:
        async with self.broker.scan_dead_letters(page_size) as scan:
            self.scans.append(scan)
            yield scan


@dataclass
class Backend:
    resources: runtime.Resources
    broker: ScanRecorder
    vhost: str | None

    async def dead_rows(self, count: int) -> list[uuid.UUID]:
        """`count` dead ledger rows, each with its copy in the DLQ, in the same order."""
        now = datetime.now(UTC)
        # Due in a year, so the ids are not the ones a tick would plan today.
        seeded = await seed_due(self.resources.sessions, count, now=now)
        ids = [uuid.uuid4() for _ in seeded]
        async with unit_of_work(self.resources.sessions) as session:
            await session.execute(
                insert(MessageLog),
                [
                    {
                        "id": message_id,
                        "user_id": s.user_id,
                        "kind": "birthday",
                        "occasion_date": (now + timedelta(days=365)).date(),
                        "idempotency_key": str(message_id),
                        "status": "dead",
                        "attempts": 1,
                        "last_error": REASON,
                        "scheduled_at": now,
                        "not_before": now,
                        "lease_until": None,
                        "sent_at": None,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for message_id, s in zip(ids, seeded, strict=True)
                ],
            )
        for message_id in ids:
            await self.broker.publish_dead(message_id, REASON, now)
        return ids

    async def statuses(self) -> dict[uuid.UUID, str]:
        return {i: row.status for i, row in (await ledger(self.resources.sessions)).items()}

    async def dlq_ids(self) -> list[uuid.UUID]:
        # A fixed limit, not queue_depth: see broker_contract.dead_letter_ids.
        return [d.message_id for d in await self.broker.dead_letters(2 * DEPTH)]

    async def replay(self, ids: list[uuid.UUID]) -> dlq.ReplayReport:
        return await dlq.replay(
            self.resources.sessions,
            self.broker,
            ids,
            SystemClock(),
            self.resources.lease,
            page_size=PAGE,
        )

    async def replay_all(self, pages: list[dlq.ReplayReport]) -> int:
        return await dlq.replay_all(
            self.resources.sessions,
            self.broker,
            SystemClock(),
            self.resources.lease,
            pages.append,
            page_size=PAGE,
        )


@pytest.fixture(params=["postgresql+rabbitmq", "sqlite+memory"])
def stores(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(database URL, vhost or None for the in-process queue)."""
    if request.param == "postgresql+rabbitmq":
        return request.getfixturevalue("pg_database_url"), request.getfixturevalue("vhost")
    return request.getfixturevalue("sqlite_database_url"), None


@pytest.fixture
async def backend(stores: tuple[str, str | None]) -> AsyncIterator[Backend]:
    database_url, vhost = stores
    broker: Broker
    if vhost is not None:
        suffix = uuid.uuid4().hex[:8]
        broker = RabbitBroker(
            vhost_url(vhost),
            main_queue=f"main_{suffix}",
            dead_letter_queue=f"dlq_{suffix}",
            reconnect_interval=0.3,
        )
        settings = pipeline_settings(database_url, vhost_url(vhost))
    else:
        broker = MemoryBroker()
        settings = pipeline_settings(database_url)
    async with runtime.open_resources(settings, broker=broker) as resources:
        yield Backend(resources, ScanRecorder(broker), vhost)


async def test_replay_finds_an_id_past_the_first_page_holding_one_page(backend: Backend) -> None:
    ids = await backend.dead_rows(DEPTH)
    deep, unknown = ids[217], uuid.uuid4()  # the fifth page; and an id the DLQ never had

    report = await backend.replay([deep, unknown])

    assert (report.replayed, report.not_dead, report.missing) == ([deep], [], [unknown])
    [scan] = backend.broker.scans
    assert scan.read == DEPTH  # looking for `unknown` took the whole queue
    assert scan.peak_held <= PAGE
    statuses = await backend.statuses()
    assert statuses[deep] == "queued"
    assert await backend.broker.queue_depth(MAIN_QUEUE) == 1
    # Every other letter is still there, in its old order.
    assert await backend.dlq_ids() == [i for i in ids if i != deep]
    assert {statuses[i] for i in ids if i != deep} == {"dead"}


async def test_replay_stops_once_every_id_is_found(backend: Backend) -> None:
    ids = await backend.dead_rows(DEPTH)
    wanted = [ids[120], ids[3]]
    async with unit_of_work(backend.resources.sessions) as session:
        await session.execute(
            update(MessageLog).where(MessageLog.id == ids[3]).values(status="sent")
        )

    report = await backend.replay(wanted)

    assert (report.replayed, report.not_dead, report.missing) == ([ids[120]], [ids[3]], [])
    [scan] = backend.broker.scans
    assert scan.read == 3 * PAGE  # up to the page that held the last one, no further
    assert scan.peak_held <= PAGE
    # The copy of the row no longer dead was dropped too; the rest are all still there.
    assert sorted(await backend.dlq_ids()) == sorted(set(ids) - set(wanted))


async def test_replay_all_pages_through_the_whole_dlq(backend: Backend) -> None:
    ids = await backend.dead_rows(DEPTH)
    already_sent = set(ids[100:110])
    async with unit_of_work(backend.resources.sessions) as session:
        await session.execute(
            update(MessageLog).where(MessageLog.id.in_(already_sent)).values(status="sent")
        )
    pages: list[dlq.ReplayReport] = []

    replayed = await backend.replay_all(pages)

    assert replayed == DEPTH - len(already_sent)
    assert [len(p.replayed) + len(p.not_dead) for p in pages] == [50, 50, 50, 50, 30]
    assert [i for p in pages for i in p.replayed] == [i for i in ids if i not in already_sent]
    assert {i for p in pages for i in p.not_dead} == already_sent
    [scan] = backend.broker.scans
    assert (scan.read, scan.peak_held) == (DEPTH, PAGE)
    assert await backend.dlq_ids() == []
    assert await backend.broker.queue_depth(MAIN_QUEUE) == replayed
    statuses = await backend.statuses()
    assert {statuses[i] for i in ids if i not in already_sent} == {"queued"}


class Died(Exception):
    """The replaying process dies (a kill, an OOM) at the point the test chooses."""


async def test_a_replay_that_dies_half_way_loses_no_dead_letter(backend: Backend) -> None:
    ids = await backend.dead_rows(DEPTH)
    real_scan = backend.broker.broker.scan_dead_letters
    pages_removed = 0

    @contextlib.asynccontextmanager
    async def dying_scan(page_size: int) -> AsyncIterator[DeadLetterScan]:
        async with real_scan(page_size) as scan:
            real_remove = scan.remove

            async def remove(message_ids: Any) -> None:
                # Dies on the third page after its rows were reset and committed, before
                # their copies are removed: the window the module docstring is about.
                nonlocal pages_removed
                if pages_removed == 2:
                    if backend.vhost is not None:
                        close_all_connections(backend.vhost)  # the broker sees it die
                    raise Died
                pages_removed += 1
                await real_remove(message_ids)

            scan.remove = remove
            yield scan

    backend.broker.scan_dead_letters = dying_scan
    with pytest.raises(Died):
        await backend.replay_all([])

    # A restarted process: the broker has handed back what the dead one held.
    del backend.broker.scan_dead_letters
    if backend.vhost is not None:
        backend.broker.broker = RabbitBroker(
            vhost_url(backend.vhost),
            main_queue=backend.broker.broker._main_name,
            dead_letter_queue=backend.broker.broker._dlq_name,
        )
        await backend.broker.start()
    try:
        # The dead connection's page is requeued by the broker in its own time.
        left = DEPTH - 2 * PAGE  # pages three to five

        async def handed_back() -> bool:
            return await backend.broker.queue_depth(DEAD_LETTER_QUEUE) == left

        await eventually(handed_back, within=20)
        statuses = await backend.statuses()
        in_dlq = set(await backend.dlq_ids())
        # No loss: a row still dead has its copy; a row reset will be published by the sweep.
        assert all(i in in_dlq for i in ids if statuses[i] == "dead")
        assert {statuses[i] for i in ids if statuses[i] != "dead"} <= {"pending", "queued"}
        assert [statuses[i] for i in ids].count("queued") == 2 * PAGE
        assert [statuses[i] for i in ids].count("pending") == PAGE  # reset, not yet published
        assert in_dlq == set(ids[2 * PAGE :])  # the dying page's copies came back

        # Run again: the rest is replayed, the stale copies are dropped as no longer dead.
        pages: list[dlq.ReplayReport] = []
        assert await backend.replay_all(pages) == DEPTH - 3 * PAGE
        assert {i for p in pages for i in p.not_dead} == set(ids[2 * PAGE : 3 * PAGE])
        assert await backend.dlq_ids() == []
        statuses = await backend.statuses()
        assert "dead" not in {statuses[i] for i in ids}
    finally:
        if backend.vhost is not None:
            await backend.broker.close()
