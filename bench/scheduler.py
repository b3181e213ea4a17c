"""The scheduler: an idle tick over a big table, and a big wave planned and published.

One database of `idle_users` users (the first `plan_due` due at once, a year of sent ledger
rows), copied before any tick so the wave runs on the same data the idle tick saw.

* scheduler_idle_tick_ms: median of `Scheduler.tick(now)` with nothing due, what every replica
  pays every second all year. Ceiling: the naive scan that computes every user's local date in
  SQL, the work a scheduler without a next-fire index would do per tick.
* plan_100k_s: one `Scheduler.tick(now)` planning the whole wave and publishing it to RabbitMQ
  with confirms. Ceiling: the same number of ids published, pipelined and confirmed, with
  plain aio-pika into a quorum queue (bench/broker_ceiling.py).

Both ticks run in a child process (bench/tick_child.py) importing the code under measurement.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from datetime import datetime

import asyncpg  # type: ignore[import-untyped]

from bench import broker_ceiling, seed
from bench.context import Context
from bench.results import Result
from bench.services import ROOT, amqp_url, database_url

# Every user's local date at `now`, in SQL, for every row: birthdays today by month and day.
FULL_SCAN = """
SELECT count(*) FROM (
    SELECT date_of_birth,
           (($1::timestamptz AT TIME ZONE coalesce(timezone, 'UTC'))
            + make_interval(mins => coalesce(timezone_offset_minutes, 0)))::date AS local_date
    FROM users WHERE deleted_at IS NULL
) AS local
WHERE extract(month FROM local_date) = extract(month FROM date_of_birth)
  AND extract(day FROM local_date) = extract(day FROM date_of_birth)
"""


def child(ctx: Context, *args: str) -> dict[str, object]:
    """Run bench.tick_child with the code under measurement; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.tick_child", *args],
        env=ctx.code.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tick_child {args[0]} failed: {done.stderr.strip()[-800:]}")
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    if ctx.code.src is not None and not str(answer["package"]).startswith(str(ctx.code.src)):
        raise RuntimeError(f"tick_child imported {answer['package']}, not {ctx.code.src}")
    return answer


async def _full_scan_ms(url: str, now: datetime, runs: int = 5) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.fetchval(FULL_SCAN, now)  # warm the cache
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            await conn.fetchval(FULL_SCAN, now)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await conn.close()
    return statistics.median(timings)


async def run(ctx: Context) -> dict[str, Result]:
    p = ctx.profile
    name = await ctx.scope.database(ctx.code)
    url = database_url(name)
    load_s = await seed.load_spread(url, p.idle_users, p.plan_due)
    wave_db = await ctx.scope.database(ctx.code, template=name)  # before any tick

    idle = child(
        ctx, "idle", "--database-url", url, "--amqp-url", amqp_url(ctx.scope.vhost()),
        "--ticks", str(p.idle_ticks), "--now", seed.IDLE_NOW.isoformat(),
    )  # fmt: skip
    timings = [float(t) for t in idle["timings_ms"]]  # type: ignore[attr-defined]
    scan_ms = await _full_scan_ms(url, seed.IDLE_NOW)

    # The ceiling once on each side of the wave, the faster kept: on a noisy machine a single
    # run of it can land in someone else's burst.
    ceiling_runs = [await broker_ceiling.publish_rate(amqp_url(ctx.scope.vhost()), p.plan_due)]
    wave = child(
        ctx, "wave", "--database-url", database_url(wave_db),
        "--amqp-url", amqp_url(ctx.scope.vhost()), "--due", str(p.plan_due),
        "--now", seed.WAVE_NOW.isoformat(),
    )  # fmt: skip
    ceiling_runs.append(await broker_ceiling.publish_rate(amqp_url(ctx.scope.vhost()), p.plan_due))
    publish_s = min(ceiling_runs)
    wave_s = float(wave["seconds"])  # type: ignore[arg-type]
    return {
        "scheduler_idle_tick_ms": Result(
            "scheduler_idle_tick_ms",
            statistics.median(timings),
            "ms",
            scan_ms,
            f"{p.idle_users:,} users (loaded in {load_s:.0f} s); median of {len(timings)}, "
            f"max {max(timings):.1f} ms; ceiling: full scan computing local dates in SQL",
        ),
        "plan_100k_s": Result(
            "plan_100k_s",
            wave_s,
            "s",
            publish_s,
            f"{p.plan_due:,} due, one tick ({p.plan_due / wave_s:,.0f} rows/s); ceiling: "
            f"{p.plan_due:,} pipelined confirmed publishes ({p.plan_due / publish_s:,.0f} msg/s)",
        ),
    }
