"""In-process scheduler measurements, run as a child process of the suite.

The suite starts it with ``PYTHONPATH=<code>`` so it imports the package under measurement;
it prints one JSON object on stdout (the package's file, so the suite can check which code ran):

    python -m bench.tick_child idle --database-url URL --amqp-url URL --ticks N --now ISO
    python -m bench.tick_child wave --database-url URL --amqp-url URL --due N --now ISO

`idle`: `Scheduler.tick(now)` timed N times after 5 warm-ups; none may plan or re-publish.
`wave`: one `Scheduler.tick(now)` plans the N due and publishes them to RabbitMQ (publisher
confirms); the queue must then hold exactly N.
Only stable entry points are used (runtime.open_resources, runtime.build_scheduler,
Scheduler.tick, RabbitBroker), so it runs against older and newer code alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import datetime

import birthday_scheduler
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra import eventloop
from birthday_scheduler.infra.broker.base import MAIN_QUEUE
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from birthday_scheduler.infra.logging import configure_logging
from birthday_scheduler.settings import Settings


async def _idle(database_url: str, amqp_url: str, ticks: int, now: datetime) -> dict[str, object]:
    settings = Settings(database_url=database_url)
    async with runtime.open_resources(settings, broker=RabbitBroker(amqp_url)) as resources:
        scheduler = runtime.build_scheduler(resources, "bench-idle")
        for _ in range(5):  # warm the pool and asyncpg's prepared statements
            await scheduler.tick(now)
        timings = []
        for _ in range(ticks):
            started = time.perf_counter()
            report = await scheduler.tick(now)
            timings.append((time.perf_counter() - started) * 1000)
            if report.planned or report.republished:
                raise SystemExit(f"idle tick did work: {report}")
    return {"timings_ms": timings}


async def _wave(database_url: str, amqp_url: str, due: int, now: datetime) -> dict[str, object]:
    settings = Settings(database_url=database_url)
    async with runtime.open_resources(settings, broker=RabbitBroker(amqp_url)) as resources:
        scheduler = runtime.build_scheduler(resources, "bench-wave")
        started = time.perf_counter()
        report = await scheduler.tick(now)
        elapsed = time.perf_counter() - started
        published = await resources.require_broker().queue_depth(MAIN_QUEUE)
    if report.planned != due or published != due:
        raise SystemExit(f"expected {due} planned and published, got {report} / {published}")
    return {"seconds": elapsed, "planned": report.planned, "published": published}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tick_child")
    parser.add_argument("mode", choices=("idle", "wave"))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--ticks", type=int, default=50)
    parser.add_argument("--due", type=int, default=0)
    parser.add_argument("--now", type=datetime.fromisoformat, required=True)
    args = parser.parse_args(argv)
    configure_logging("warn")
    if args.mode == "idle":
        result = eventloop.run(_idle(args.database_url, args.amqp_url, args.ticks, args.now))
    else:
        result = eventloop.run(_wave(args.database_url, args.amqp_url, args.due, args.now))
    result["package"] = birthday_scheduler.__file__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
