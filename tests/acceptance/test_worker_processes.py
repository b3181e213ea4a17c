"""Acceptance: real `scheduler` and `worker` processes, killed and stopped while they deliver.

The processes run the console script against real PostgreSQL and RabbitMQ (a throwaway vhost)
and the message-service simulator served from this test process on loopback, slow enough
(300 ms a send) that a worker always has deliveries in flight when it is interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.infra.db import create_engine, session_factory
from birthday_scheduler.settings import Settings
from birthday_scheduler.simulator.app import RunningSimulator, SimulatorConfig, start_simulator
from pipeline_support import (
    Seeded,
    assert_each_sent_once,
    configure,
    control,
    ledger,
    seed_due,
    statuses,
    wait_for_statuses,
)
from rabbit_vhost import create_vhost, delete_vhost, vhost_url
from support import eventually, free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
MESSAGES = 200
GRACE_S = 10


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = create_vhost("worker-processes")
    yield name
    delete_vhost(name)


@dataclass
class Cluster:
    """The processes of one test, their environment and where their logs go."""

    env: dict[str, str]
    logs: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def spawn(self, command: str) -> asyncio.subprocess.Process:
        # Log to a file, not a pipe nobody reads: a full pipe would stall the process.
        log = self.logs / f"{command}-{len(self.processes)}.log"
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                SCRIPT,
                command,
                env={**self.env, "METRICS_PORT": str(free_port())},
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    async def stop_all(self) -> list[int]:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process in self.processes:
            try:
                codes.append(await asyncio.wait_for(process.wait(), timeout=GRACE_S + 10))
            except TimeoutError:
                process.kill()
                codes.append(await process.wait())
        return codes

    def events(self, process: asyncio.subprocess.Process) -> list[str]:
        index = self.processes.index(process)
        (log,) = self.logs.glob(f"*-{index}.log")
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        return [json.loads(line)["event"] for line in lines]


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator("127.0.0.1", 0, SimulatorConfig(latency_ms=500))
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def sessions(pg_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(Settings(), pg_database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def cluster(
    pg_database_url: str, vhost: str, simulator: RunningSimulator, tmp_path: Path
) -> AsyncIterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "RABBITMQ_"))}
    env.update(
        DATABASE_URL=pg_database_url,
        RABBITMQ_URL=vhost_url(vhost),
        MESSAGE_SERVICE_URL=simulator.url,
        MESSAGE_VISIBILITY_TIMEOUT_S="3",
        SCHEDULER_INTERVAL_MS="100",
        WORKER_CONCURRENCY="10",
        RETRY_BASE_DELAY_MS="20",
        RETRY_MAX_DELAY_MS="200",
        SHUTDOWN_GRACE_S=str(GRACE_S),
        LOG_LEVEL="info",
        LOG_FORMAT="json",
    )
    running = Cluster(env, tmp_path)
    try:
        yield running
    finally:
        await running.stop_all()


async def in_flight(sessions: async_sessionmaker[AsyncSession], at_least: int) -> bool:
    counts = await statuses(sessions)
    return counts["sending"] >= at_least and counts["sent"] >= 1


async def finish(
    sessions: async_sessionmaker[AsyncSession],
    simulator: RunningSimulator,
    seeded: list[Seeded],
) -> None:
    await wait_for_statuses(sessions, [s.message_id for s in seeded], "sent", within=60)
    assert_each_sent_once(seeded, await control(simulator, "GET", "/deliveries"))


async def test_a_worker_killed_mid_delivery_loses_and_repeats_nothing(
    cluster: Cluster,
    sessions: async_sessionmaker[AsyncSession],
    simulator: RunningSimulator,
) -> None:
    seeded = await seed_due(sessions, MESSAGES)
    await cluster.spawn("scheduler")
    doomed = await cluster.spawn("worker")
    await eventually(lambda: in_flight(sessions, at_least=5), within=30)
    # Slow the service down (still inside the 3 s lease) so that the worker surely holds calls
    # in flight when it dies, however busy this machine is.
    started = (await control(simulator, "GET", "/stats"))["requests"]
    await configure(simulator, latency_ms=2_500)

    async def slow_calls_in_flight() -> bool:
        return (await control(simulator, "GET", "/stats"))["requests"] >= started + 5

    await eventually(slow_calls_in_flight, within=30)

    doomed.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(doomed.wait(), timeout=10) == -signal.SIGKILL
    # Read after it died: rows claimed (an attempt counted) whose outcome was never recorded.
    # The service fails nothing here, so such a row is still `sending`, or already `queued`
    # again if the scheduler found its lease run out.
    orphans = {
        i
        for i, row in (await ledger(sessions)).items()
        if row.status in ("sending", "queued") and row.attempts >= 1
    }
    assert orphans

    await configure(simulator, latency_ms=50)
    await cluster.spawn("worker")
    await finish(sessions, simulator, seeded)
    rows = await ledger(sessions)
    # Handed back once their lease ran out and claimed again: the lost attempt stays counted.
    assert all(rows[i].attempts >= 2 for i in orphans)

    # scheduler, the killed worker, its replacement
    assert await cluster.stop_all() == [0, -signal.SIGKILL, 0]


async def test_a_worker_stopped_under_load_finishes_what_it_holds_and_exits_zero(
    cluster: Cluster,
    sessions: async_sessionmaker[AsyncSession],
    simulator: RunningSimulator,
) -> None:
    seeded = await seed_due(sessions, MESSAGES)
    await cluster.spawn("scheduler")
    stopping = await cluster.spawn("worker")
    await eventually(lambda: in_flight(sessions, at_least=5), within=30)

    stopping.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(stopping.wait(), timeout=GRACE_S + 5) == 0
    # It stopped taking messages and finished the deliveries in hand before exiting: no row
    # is left claimed by a process that is gone.
    counts = await statuses(sessions)
    assert counts["sending"] == 0, counts
    assert 0 < counts["sent"] < MESSAGES
    events = cluster.events(stopping)
    assert events.index("broker.consumer_stopped") < events.index("worker.stopped")
    assert "worker.shutdown_grace_exceeded" not in events

    await cluster.spawn("worker")
    await finish(sessions, simulator, seeded)
    assert await cluster.stop_all() == [0, 0, 0]
