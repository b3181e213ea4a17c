"""Helpers for the delivery-pipeline tests: seed due messages, run the real pieces, read results.

The pipeline is assembled with `entrypoints.runtime` exactly as the processes assemble it; the
only test-sized parts are the settings (milliseconds instead of seconds) and, where a test
loses publishes on purpose, the scheduler's publish grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.clock import SystemClock
from birthday_scheduler.delivery.breaker import CircuitBreaker, CircuitState
from birthday_scheduler.delivery.client import MessageServiceClient
from birthday_scheduler.delivery.worker import DeliveryWorker
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.base import Broker
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.kinds import BIRTHDAY
from birthday_scheduler.messages.models import MessageLog, MessageSchedule
from birthday_scheduler.messages.planning import ledger_id
from birthday_scheduler.messages.scheduler import Scheduler
from birthday_scheduler.settings import Settings
from birthday_scheduler.simulator.app import RunningSimulator, SimulatorConfig, start_simulator
from birthday_scheduler.users.models import User
from support import eventually

# Small enough that retries, breaker resets and sweeps happen within a test's time budget.
FAST: dict[str, Any] = {
    "retry_base_delay_ms": 20,
    "retry_max_delay_ms": 200,
    "message_service_timeout_ms": 2_000,
    "circuit_breaker_failure_threshold": 5,
    "circuit_breaker_reset_timeout_ms": 300,
    "max_delivery_attempts": 25,
    "scheduler_interval_ms": 50,
    "scheduler_batch_size": 500,
    # Longer than a backlog of a thousand takes to drain here: a `queued` row whose lease runs
    # out is published again, and the duplicates only add load.
    "message_visibility_timeout_s": 60,
    "worker_concurrency": 50,
    "database_pool_max": 20,
    "database_pool_min": 1,
    "shutdown_grace_s": 10,
}


def pipeline_settings(
    database_url: str, rabbitmq_url: str | None = None, **overrides: Any
) -> Settings:
    values = {**FAST, **overrides}
    return Settings(database_url=database_url, rabbitmq_url=rabbitmq_url, **values)


@dataclass(frozen=True)
class Seeded:
    message_id: uuid.UUID
    user_id: uuid.UUID
    first_name: str
    last_name: str
    email: str

    @property
    def text(self) -> str:
        return f"Hey, {self.first_name} {self.last_name} it's your birthday"


def _birth_date(today: date) -> date:
    # A 29 February "today" needs a leap year of birth.
    return date(1992 if (today.month, today.day) == (2, 29) else 1990, today.month, today.day)


async def seed_due(
    sessions: async_sessionmaker[AsyncSession],
    count: int,
    *,
    now: datetime | None = None,
    email: str | None = None,
) -> list[Seeded]:
    """`count` users whose birthday message fell due a second ago, straight into the tables.

    `email` overrides every user's address (a blank one makes the service answer 400).
    """
    now = now or datetime.now(UTC)
    occasion = now.date()
    tag = uuid.uuid4().hex[:8]
    seeded = [
        Seeded(
            message_id=ledger_id(user_id, BIRTHDAY.name, occasion),
            user_id=user_id,
            first_name=f"First{tag}{i}",
            last_name=f"Last{tag}{i}",
            email=email if email is not None else f"user-{tag}-{i}@example.com",
        )
        for i, user_id in enumerate(uuid.uuid4() for _ in range(count))
    ]
    async with unit_of_work(sessions) as session:
        await session.execute(
            insert(User),
            [
                {
                    "id": s.user_id,
                    "first_name": s.first_name,
                    "last_name": s.last_name,
                    "email": s.email,
                    "date_of_birth": _birth_date(occasion),
                    "timezone": None,
                    "timezone_offset_minutes": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for s in seeded
            ],
        )
        await session.execute(
            insert(MessageSchedule),
            [
                {
                    "user_id": s.user_id,
                    "kind": BIRTHDAY.name,
                    "next_fire_at": now - timedelta(seconds=1),
                    "occasion_date": occasion,
                }
                for s in seeded
            ],
        )
    return seeded


async def set_email(
    sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID, email: str
) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(update(User).where(User.id == user_id).values(email=email))


@dataclass(frozen=True)
class LedgerRow:
    id: uuid.UUID
    status: str
    attempts: int
    idempotency_key: str
    last_error: str | None


async def ledger(sessions: async_sessionmaker[AsyncSession]) -> dict[uuid.UUID, LedgerRow]:
    async with sessions() as session:
        rows = await session.execute(
            select(
                MessageLog.id,
                MessageLog.status,
                MessageLog.attempts,
                MessageLog.idempotency_key,
                MessageLog.last_error,
            )
        )
        return {row.id: LedgerRow(*row) for row in rows.all()}


async def statuses(sessions: async_sessionmaker[AsyncSession]) -> Counter[str]:
    return Counter(row.status for row in (await ledger(sessions)).values())


async def wait_for_statuses(
    sessions: async_sessionmaker[AsyncSession],
    ids: list[uuid.UUID],
    wanted: str,
    within: float,
) -> dict[uuid.UUID, LedgerRow]:
    """Poll until every id in `ids` has a ledger row in status `wanted`; returns the ledger."""
    target = set(ids)

    async def done() -> bool:
        rows = await ledger(sessions)
        return all(i in rows and rows[i].status == wanted for i in target)

    try:
        await eventually(done, within=within, interval=0.1)
    except AssertionError:
        raise AssertionError(
            f"not all {len(target)} rows became {wanted!r} within {within}s: "
            f"{dict(await statuses(sessions))}"
        ) from None
    return await ledger(sessions)


# --- the simulator -------------------------------------------------------------------------


async def control(simulator: RunningSimulator, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, simulator.base_url + path, json=body) as response,
    ):
        assert response.status < 300, await response.text()
        return await response.json() if response.status != 204 else None


async def configure(simulator: RunningSimulator, **changes: Any) -> None:
    await control(simulator, "PUT", "/config", changes)


def assert_each_sent_once(seeded: list[Seeded], deliveries: list[dict[str, Any]]) -> None:
    """The service accepted every seeded message exactly once, with the right text."""
    keys = Counter(d["idempotencyKey"] for d in deliveries)
    assert set(keys) == {str(s.message_id) for s in seeded}
    repeated = {key: n for key, n in keys.items() if n != 1}
    assert not repeated, f"keys accepted more than once: {repeated}"
    by_key = {d["idempotencyKey"]: d for d in deliveries}
    for s in seeded:
        delivery = by_key[str(s.message_id)]
        assert (delivery["email"], delivery["message"]) == (s.email, s.text)


# --- the pipeline --------------------------------------------------------------------------


@dataclass
class Pipeline:
    resources: runtime.Resources
    simulator: RunningSimulator
    scheduler: Scheduler
    breaker: CircuitBreaker = field(init=False)
    worker: DeliveryWorker = field(init=False)
    transitions: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)
    # The simulator's request count at each transition (same index as `transitions`).
    calls_at_transitions: list[int] = field(default_factory=list)

    def calls(self) -> int:
        """Requests the simulator has received so far (read in-process, no HTTP round trip)."""
        return int(self.simulator.state.counters["requests"])

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self.resources.sessions

    @property
    def broker(self) -> Broker:
        return self.resources.require_broker()

    async def seed(self, count: int, **options: Any) -> list[Seeded]:
        return await seed_due(self.sessions, count, **options)

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await control(self.simulator, "GET", "/stats")
        return result

    async def deliveries(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await control(self.simulator, "GET", "/deliveries")
        return result


def _breaker(settings: Settings, pipeline: Pipeline) -> CircuitBreaker:
    """The breaker as build_breaker makes it, its transitions recorded instead of metered."""

    def on_transition(_name: str, old: CircuitState, new: CircuitState) -> None:
        pipeline.transitions.append((old, new))
        pipeline.calls_at_transitions.append(pipeline.calls())

    return CircuitBreaker(
        runtime.BREAKER_NAME,
        settings.circuit_breaker_failure_threshold,
        settings.circuit_breaker_reset_timeout_ms / 1000,
        SystemClock(),
        on_transition=on_transition,
    )


@contextlib.asynccontextmanager
async def open_pipeline(
    settings: Settings,
    broker: Broker,
    simulator_config: SimulatorConfig,
    *,
    publish_grace: timedelta = runtime.PUBLISH_GRACE,
) -> AsyncIterator[Pipeline]:
    """Simulator on loopback, resources, client, breaker, worker consuming, scheduler ticking."""
    simulator = await start_simulator("127.0.0.1", 0, simulator_config)
    stop = asyncio.Event()
    try:
        async with runtime.open_resources(settings, broker=broker) as resources:
            client = MessageServiceClient(
                simulator.url,
                None,
                settings.message_service_timeout_ms / 1000,
                max_connections=max(10, settings.worker_concurrency),
            )
            await client.start()
            scheduler = runtime.build_scheduler(resources, "pipeline-test")
            scheduler = dataclasses.replace(
                scheduler,
                policy=dataclasses.replace(scheduler.policy, publish_grace=publish_grace),
            )
            pipeline = Pipeline(resources, simulator, scheduler)
            pipeline.breaker = _breaker(settings, pipeline)
            pipeline.worker = runtime.build_worker(resources, client, pipeline.breaker)
            await broker.consume(pipeline.worker.handle, settings.worker_concurrency)
            ticking = asyncio.create_task(
                scheduler.run(stop, settings.scheduler_interval_ms / 1000)
            )
            try:
                yield pipeline
            finally:
                stop.set()
                await ticking
                await broker.stop_consuming()
                await client.close()
    finally:
        await simulator.close()


# --- a cuttable TCP path to RabbitMQ ---------------------------------------------------------


class TcpProxy:
    """A loopback TCP relay that can be cut (connections dropped, new ones refused) and restored.

    To the client that is what a broker restart looks like, without stopping the machine's
    RabbitMQ under every other test that is using it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # refuse new connections from now on
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)
