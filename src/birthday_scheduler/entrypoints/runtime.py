"""Start-up and shutdown shared by every process: resources opened once, signals, servers."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.clock import Clock, SystemClock
from birthday_scheduler.delivery.breaker import CircuitBreaker, CircuitState
from birthday_scheduler.delivery.worker import DeliveryWorker, RetryPolicy, Sender
from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE, MAIN_QUEUE, Broker
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from birthday_scheduler.infra.db import create_engine, pool_status, session_factory, warm_pool
from birthday_scheduler.infra.db_lease import ConnectionLease
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.infra.metrics import (
    CIRCUIT_BREAKER_STATE,
    DB_POOL_CHECKED_OUT,
    DB_POOL_SIZE,
    QUEUE_DEPTH,
)
from birthday_scheduler.messages import heartbeat
from birthday_scheduler.messages.planning import PlanningPolicy
from birthday_scheduler.messages.scheduler import Scheduler
from birthday_scheduler.settings import Settings
from birthday_scheduler.users.service import UsersService

log = get_logger(__name__)
PUBLISH_GRACE = timedelta(seconds=30)
# A claimed row's lease is one send's time-out plus this: enough to record the outcome after a
# slow answer, short enough that a killed worker's message goes out again within seconds.
SENDING_LEASE_MARGIN = timedelta(seconds=5)
BREAKER_NAME = "message_service"
GAUGE_INTERVAL_S = 5.0


@dataclass
class Resources:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    broker: Broker | None

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.message_visibility_timeout_s)

    def planning_policy(self) -> PlanningPolicy:
        return PlanningPolicy(
            send_time=self.settings.send_local_time,
            catch_up_window=timedelta(hours=self.settings.catch_up_window_hours),
            queue_lease=self.lease,
            publish_grace=PUBLISH_GRACE,
        )

    def require_broker(self) -> Broker:
        if self.broker is None:
            raise ConfigurationError("RABBITMQ_URL: required for this command")
        return self.broker


def sending_lease(settings: Settings) -> timedelta:
    return timedelta(milliseconds=settings.message_service_timeout_ms) + SENDING_LEASE_MARGIN


def build_broker(settings: Settings, *, embedded_allowed: bool) -> Broker | None:
    if settings.rabbitmq_url is not None:
        return RabbitBroker(settings.rabbitmq_url.get_secret_value())
    return MemoryBroker() if embedded_allowed else None


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, *, broker: Broker | None, clock: Clock | None = None
) -> AsyncIterator[Resources]:
    engine = create_engine(settings)
    lease = None
    if engine.dialect.name == "postgresql":
        # One-statement hot paths (the API's reads and creates, the scheduler's idle probe)
        # reuse connections without the pool's per-checkout greenlets; two are always left
        # to everything else.
        lease = ConnectionLease.open(engine, max(1, settings.database_pool_max - 2))
    try:
        if settings.database_pool_min and not settings.is_embedded_database:
            await warm_pool(engine, settings.database_pool_min)
        if broker is not None:
            await broker.start()
        yield Resources(settings, clock or SystemClock(), engine, session_factory(engine), broker)
    finally:
        if broker is not None:
            await broker.close()
        if lease is not None:
            await lease.close()
        await engine.dispose()


def build_scheduler(resources: Resources, replica: str) -> Scheduler:
    return Scheduler(
        sessions=resources.sessions,
        broker=resources.require_broker(),
        clock=resources.clock,
        policy=resources.planning_policy(),
        batch_size=resources.settings.scheduler_batch_size,
        replica=replica,
        lanes=1 if resources.settings.is_embedded_database else 3,
    )


def build_breaker(resources: Resources) -> CircuitBreaker:
    def on_transition(name: str, _old: CircuitState, new: CircuitState) -> None:
        CIRCUIT_BREAKER_STATE.labels(name=name).set(int(new))

    CIRCUIT_BREAKER_STATE.labels(name=BREAKER_NAME).set(0)
    return CircuitBreaker(
        BREAKER_NAME,
        resources.settings.circuit_breaker_failure_threshold,
        resources.settings.circuit_breaker_reset_timeout_ms / 1000,
        resources.clock,
        on_transition=on_transition,
    )


def build_worker(resources: Resources, sender: Sender, breaker: CircuitBreaker) -> DeliveryWorker:
    s = resources.settings
    return DeliveryWorker(
        sessions=resources.sessions,
        broker=resources.require_broker(),
        sender=sender,
        breaker=breaker,
        clock=resources.clock,
        retry=RetryPolicy(
            max_attempts=s.max_delivery_attempts,
            base_delay_s=s.retry_base_delay_ms / 1000,
            max_delay_s=s.retry_max_delay_ms / 1000,
        ),
        lease=sending_lease(s),
        catch_up_window=timedelta(hours=s.catch_up_window_hours),
        texts=s.message_texts(),
        rng=random.Random(),  # noqa: S311 - jitter, not security
    )


def api_context(
    resources: Resources,
    *,
    runs_consumer: bool = False,
    breaker: CircuitBreaker | None = None,
) -> ApiContext:
    async def last_tick() -> Any:
        return await heartbeat.latest(resources.sessions)

    return ApiContext(
        settings=resources.settings,
        engine=resources.engine,
        sessions=resources.sessions,
        clock=resources.clock,
        users=UsersService(resources.planning_policy()),
        broker=resources.broker,
        runs_consumer=runs_consumer,
        breaker_state=(lambda: int(breaker.state)) if breaker is not None else None,
        scheduler_last_tick=last_tick,
    )


def stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT: stop taking work, finish, exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    return stop


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("process.stopping", signal=sig.name)
    stop.set()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the process's stop event drives shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def serve_http(
    app: FastAPI, host: str, port: int, stop: asyncio.Event, grace_s: float = 30.0
) -> None:
    """Serve until `stop`; then finish requests in flight for up to `grace_s` seconds."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(grace_s),
        # The app reads X-Forwarded-For itself, trusting FORWARDED_ALLOW_IPS (api/app.py);
        # uvicorn's own reading (of the raw, unvalidated variable) must not run as well.
        proxy_headers=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    await task
    if not stop.is_set():  # the server died on its own (port taken, say): stop the rest
        stop.set()
        if not server.started:
            raise ConfigurationError(f"HOST/PORT: could not listen on {host}:{port}")


async def refresh_gauges(resources: Resources, stop: asyncio.Event) -> None:
    """Keep pool and queue gauges current for /metrics between scrapes."""
    while not stop.is_set():
        size, checked_out = pool_status(resources.engine)
        DB_POOL_SIZE.set(size)
        DB_POOL_CHECKED_OUT.set(checked_out)
        if resources.broker is not None:
            for queue in (MAIN_QUEUE, DEAD_LETTER_QUEUE):
                with contextlib.suppress(Exception):
                    QUEUE_DEPTH.labels(queue=queue).set(await resources.broker.queue_depth(queue))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), GAUGE_INTERVAL_S)


async def run_until_stopped(stop: asyncio.Event, *jobs: Awaitable[None]) -> None:
    """Run jobs together; if one fails, stop the others, then re-raise its error."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


Job = Callable[[], Awaitable[None]]
