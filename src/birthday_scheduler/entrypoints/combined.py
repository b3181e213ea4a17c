"""`birthday-scheduler all`: API, scheduler and worker in one process.

With no DATABASE_URL / RABBITMQ_URL it runs on the embedded default: SQLite under ./var/, the
in-process queue, and (unless MESSAGE_SERVICE_URL is set) the built-in simulator on a free
loopback port. The embedded database is migrated at start so `all` works on a fresh checkout.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.entrypoints.scheduler import replica_name
from birthday_scheduler.entrypoints.worker import consume_until_stopped, message_service_client
from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.settings import Settings
from birthday_scheduler.simulator.app import SimulatorConfig, start_simulator
from birthday_scheduler.users import fast_email

log = get_logger(__name__)


@contextlib.asynccontextmanager
async def _message_service_url(settings: Settings) -> AsyncIterator[str | None]:
    if settings.message_service_url is not None:
        yield None
        return
    simulator = await start_simulator("127.0.0.1", 0, SimulatorConfig.from_env())
    log.info("simulator.started", url=simulator.url)
    try:
        yield simulator.url
    finally:
        await simulator.close()


async def main(settings: Settings) -> None:
    # POST /users checks each address's domain once, not per request (users/fast_email.py).
    with fast_email.installed():
        await _main(settings)


async def _main(settings: Settings) -> None:
    settings.require_safe_api_binding()
    stop = runtime.stop_on_signals()
    broker = runtime.build_broker(settings, embedded_allowed=True)
    async with (
        _message_service_url(settings) as simulator_url,
        runtime.open_resources(settings, broker=broker) as resources,
    ):
        if settings.is_embedded_database:
            await migrate.upgrade(resources.engine)
        client = message_service_client(settings, simulator_url)
        await client.start()
        try:
            breaker = runtime.build_breaker(resources)
            worker = runtime.build_worker(resources, client, breaker)
            scheduler = runtime.build_scheduler(resources, replica_name())
            app = create_app(runtime.api_context(resources, runs_consumer=True, breaker=breaker))
            log.info("all.started", host=settings.host, port=settings.port)
            await runtime.run_until_stopped(
                stop,
                runtime.serve_http(
                    app, settings.host, settings.port, stop, settings.shutdown_grace_s
                ),
                scheduler.run(stop, settings.scheduler_interval_ms / 1000),
                consume_until_stopped(resources, worker, stop),
                runtime.refresh_gauges(resources, stop),
            )
        finally:
            await client.close()
    log.info("all.stopped")
