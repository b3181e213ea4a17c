"""`birthday-scheduler scheduler`: plans due messages and publishes them. Safe as replicas."""

from __future__ import annotations

import os
import socket

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.entrypoints.ops import serve_ops
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.settings import Settings

log = get_logger(__name__)


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def main(settings: Settings) -> None:
    stop = runtime.stop_on_signals()
    broker = runtime.build_broker(settings, embedded_allowed=False)
    async with runtime.open_resources(settings, broker=broker) as resources:
        scheduler = runtime.build_scheduler(resources, replica_name())
        await runtime.run_until_stopped(
            stop,
            scheduler.run(stop, settings.scheduler_interval_ms / 1000),
            serve_ops(runtime.api_context(resources), settings, stop),
            runtime.refresh_gauges(resources, stop),
        )
