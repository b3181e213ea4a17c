"""Delivery through real worker processes, and a burst through the whole pipeline.

* deliver_rps: `deliver` messages already queued (planned and published by one tick of the
  code under measurement), then `workers` worker processes deliver them to the simulator at
  0 ms latency; the rate from the first `sent_at` to the last. A scheduler process runs beside
  them as in a deployment (a retry goes out again only through it); it finds nothing due.
  Ceiling: plain aio-pika consuming and acknowledging the same number with the same
  consumers x prefetch.
* deliver_rps_100ms: the same with the simulator answering after 100 ms. Ceiling: the bound
  workers x concurrency / latency.
* burst_10k_lateness_p99_s: scheduler, workers and simulator running; `burst` messages made due
  at one instant a few seconds ahead; p99 of (simulator's accepted time - that instant). A
  message accepted before its instant fails the key whatever its p99.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]

from bench import broker_ceiling, seed
from bench.context import Context
from bench.results import Result
from bench.scheduler import child
from bench.services import amqp_url, database_url, free_port

STATUS = """
SELECT count(*) FILTER (WHERE status = 'sent') AS sent,
       count(*) FILTER (WHERE status IN ('dead', 'skipped', 'cancelled')) AS lost,
       min(sent_at) AS first, max(sent_at) AS last
FROM message_logs
"""


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _start_pipeline(ctx: Context, url: str, vhost: str, latency_ms: int, keep: int) -> str:
    """Simulator, workers and a scheduler, all ready; the simulator's base URL."""
    p = ctx.profile
    sim_port = free_port()
    simulator = ctx.services.start(
        "simulator", ["message-service"], "/health", sim_port,
        PORT=str(sim_port), SIMULATOR_LATENCY_MS=str(latency_ms),
        SIMULATOR_MAX_DELIVERIES=str(max(keep, 10_000)),
    )  # fmt: skip
    simulator.wait_ready()  # before any worker: a refused connection would be a retry
    started = [simulator]
    common = {"DATABASE_URL": url, "RABBITMQ_URL": amqp_url(vhost)}
    for slot in range(1, p.workers + 1):
        port = free_port()
        worker = ctx.services.start(
            f"worker{slot}", ["worker"], "/alive", port, **common,
            METRICS_PORT=str(port), WORKER_CONCURRENCY=str(p.worker_concurrency),
            MESSAGE_SERVICE_URL=f"http://127.0.0.1:{sim_port}/send",
        )  # fmt: skip
        started.append(worker)
    # The scheduler runs in every pipeline: retries go through the ledger, which only a
    # scheduler publishes again.
    port = free_port()
    started.append(
        ctx.services.start(
            "scheduler", ["scheduler"], "/alive", port, **common, METRICS_PORT=str(port)
        )
    )
    for service in started:
        service.wait_ready()
    return f"http://127.0.0.1:{sim_port}"


async def _wait_sent(url: str, count: int, within_s: float) -> asyncpg.Record:
    deadline = time.monotonic() + within_s
    conn = await asyncpg.connect(url)
    try:
        while True:
            row = await conn.fetchrow(STATUS)
            if row["sent"] + row["lost"] >= count:
                return row
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {row['sent']} of {count} sent within {within_s:.0f} s")
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def _delivery_rate(ctx: Context, count: int, latency_ms: int) -> tuple[float, str]:
    name = await ctx.scope.database(ctx.code)
    url = database_url(name)
    vhost = ctx.scope.vhost()
    due_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    await seed.load_due_at(url, count, due_at)
    child(
        ctx, "wave", "--database-url", url, "--amqp-url", amqp_url(vhost), "--due", str(count),
        "--now", datetime.now(UTC).isoformat(),
    )  # fmt: skip
    sim = _start_pipeline(ctx, url, vhost, latency_ms, count)
    try:
        bound = ctx.profile.workers * ctx.profile.worker_concurrency / max(latency_ms, 1) * 1000
        # Generous: a slow code version must still finish and be measured, not time out.
        row = await _wait_sent(url, count, 60 + count / min(100, bound / 2))
        stats = _get_json(f"{sim}/stats")
    finally:
        ctx.services.stop_all()
    spread = (row["last"] - row["first"]).total_seconds()
    rate = (row["sent"] - 1) / spread if spread > 0 else math.nan
    assert isinstance(stats, dict)
    detail = (
        f"{row['sent']:,} sent, {row['lost']} dead/skipped, {stats.get('duplicates')} duplicates "
        f"at the simulator; {ctx.profile.workers} workers x {ctx.profile.worker_concurrency}"
    )
    return rate, detail


async def _burst(ctx: Context) -> Result:
    count = ctx.profile.burst
    name = await ctx.scope.database(ctx.code)
    url = database_url(name)
    vhost = ctx.scope.vhost()
    sim = _start_pipeline(ctx, url, vhost, 0, count)
    try:
        instant = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
        await seed.load_due_at(url, count, instant)
        if datetime.now(UTC) >= instant:
            raise RuntimeError("loading the burst took longer than its lead time")
        await _wait_sent(url, count, 300)
        deliveries = _get_json(f"{sim}/deliveries")
    finally:
        ctx.services.stop_all()
    assert isinstance(deliveries, list)
    late = sorted((datetime.fromisoformat(d["time"]) - instant).total_seconds() for d in deliveries)
    early = sum(1 for s in late if s < 0)
    p99 = late[min(len(late) - 1, math.ceil(0.99 * len(late)) - 1)]
    return Result(
        "burst_10k_lateness_p99_s",
        p99,
        "s",
        None,
        f"{len(late):,} of {count:,} accepted; p50 {late[len(late) // 2]:.2f} s, "
        f"max {late[-1]:.2f} s; {early} early",
        failed=f"{early} accepted before their instant" if early else "",
    )


async def run(ctx: Context) -> dict[str, Result]:
    p = ctx.profile
    rate, detail = await _delivery_rate(ctx, p.deliver, 0)
    ceiling = await broker_ceiling.consume_rate(
        amqp_url(ctx.scope.vhost()), p.deliver, p.workers, p.worker_concurrency
    )
    slow_rate, slow_detail = await _delivery_rate(ctx, p.deliver_100ms, p.latency_ms)
    bound = p.workers * p.worker_concurrency / (p.latency_ms / 1000)
    return {
        "deliver_rps": Result(
            "deliver_rps", rate, "msg/s", ceiling, f"{detail}; ceiling: aio-pika consume+ack"
        ),
        "deliver_rps_100ms": Result(
            "deliver_rps_100ms",
            slow_rate,
            "msg/s",
            bound,
            f"{slow_detail}; ceiling: workers x concurrency / {p.latency_ms} ms",
        ),
        "burst_10k_lateness_p99_s": await _burst(ctx),
    }
