"""The scheduler and the workers ride out a PostgreSQL outage and carry on by themselves.

The pipeline (scheduler ticking, worker consuming the in-process queue, the simulator as the
message service) reaches the real PostgreSQL through a TCP proxy the test refuses, black-holes
and restores; the test seeds and reads the ledger over a direct connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.db import create_engine, session_factory
from birthday_scheduler.settings import Settings
from birthday_scheduler.simulator.app import SimulatorConfig
from pipeline_support import (
    Pipeline,
    Seeded,
    assert_each_sent_once,
    open_pipeline,
    pipeline_settings,
    seed_due,
    wait_for_statuses,
)
from support import eventually, holds
from tcp_proxy import TcpProxy, tcp_proxy

BATCH = 20
OUTAGE_S = 2.0


@pytest.fixture
async def direct(pg_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(Settings(), pg_database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def proxy(pg_database_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(pg_database_url)
    async with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as opened:
        yield opened


def _sent_any(pipeline: Pipeline, seeded: list[Seeded]) -> bool:
    """Whether the simulator accepted any of `seeded` (read in-process, no round trip)."""
    return any(str(s.message_id) in pipeline.simulator.state.by_key for s in seeded)


async def _out_of_reach(pipeline: Pipeline, seeded: list[Seeded]) -> None:
    """For the outage's length, none of `seeded` (due now) can go out: the loops fail, retry."""
    await holds(lambda: not _sent_any(pipeline, seeded), during=OUTAGE_S)


async def test_scheduler_and_workers_carry_on_after_the_database_is_back(
    pg_database_url: str, proxy: TcpProxy, direct: async_sessionmaker[AsyncSession]
) -> None:
    proxied = make_url(pg_database_url).set(port=proxy.port)
    settings = pipeline_settings(
        proxied.render_as_string(hide_password=False), message_service_timeout_ms=1_000
    )
    # Slow answers, so the first batch is mid-delivery when the database goes away.
    simulator = SimulatorConfig(latency_ms=300)
    async with open_pipeline(settings, MemoryBroker(), simulator) as pipeline:
        in_flight = await seed_due(direct, BATCH)
        await eventually(lambda: pipeline.calls() > 0, within=20)
        await proxy.refuse()
        held_back = await seed_due(direct, BATCH)
        await _out_of_reach(pipeline, held_back)
        await proxy.restore()
        sent = [s.message_id for s in in_flight + held_back]
        await wait_for_statuses(direct, sent, "sent", within=60)

        # A network that swallows packets: ticks and claims hang, then carry on when it heals.
        silent = await seed_due(direct, BATCH)
        await proxy.blackhole()
        await _out_of_reach(pipeline, silent)
        await proxy.restore()
        await wait_for_statuses(direct, sent + [s.message_id for s in silent], "sent", within=60)
        assert_each_sent_once(in_flight + held_back + silent, await pipeline.deliveries())
