"""`birthday-scheduler worker`: consumes the queue and delivers. Safe as replicas."""

from __future__ import annotations

import asyncio

from birthday_scheduler.delivery.client import MessageServiceClient
from birthday_scheduler.delivery.worker import DeliveryWorker
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.entrypoints.ops import serve_ops
from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.settings import Settings

log = get_logger(__name__)


def message_service_client(settings: Settings, url: str | None = None) -> MessageServiceClient:
    target = url or settings.message_service_url
    if target is None:
        raise ConfigurationError("MESSAGE_SERVICE_URL: required for `worker`")
    key = settings.message_service_api_key
    return MessageServiceClient(
        target,
        key.get_secret_value() if key else None,
        settings.message_service_timeout_ms / 1000,
        max_connections=max(10, settings.worker_concurrency),
    )


async def consume_until_stopped(
    resources: runtime.Resources, worker: DeliveryWorker, stop: asyncio.Event
) -> None:
    broker = resources.require_broker()
    await broker.consume(worker.handle, prefetch=resources.settings.worker_concurrency)
    log.info("worker.started", concurrency=resources.settings.worker_concurrency)
    await stop.wait()
    # Take no new messages; let the ones in hand finish (or go back to the queue) in time.
    try:
        await asyncio.wait_for(broker.stop_consuming(), resources.settings.shutdown_grace_s)
    except TimeoutError:
        log.warning("worker.shutdown_grace_exceeded", grace_s=resources.settings.shutdown_grace_s)
    log.info("worker.stopped")


async def main(settings: Settings) -> None:
    stop = runtime.stop_on_signals()
    broker = runtime.build_broker(settings, embedded_allowed=False)
    client = message_service_client(settings)
    async with runtime.open_resources(settings, broker=broker) as resources:
        resources.require_broker()
        breaker = runtime.build_breaker(resources)
        await client.start()
        try:
            worker = runtime.build_worker(resources, client, breaker)
            context = runtime.api_context(resources, runs_consumer=True, breaker=breaker)
            await runtime.run_until_stopped(
                stop,
                consume_until_stopped(resources, worker, stop),
                serve_ops(context, settings, stop),
                runtime.refresh_gauges(resources, stop),
            )
        finally:
            await client.close()
