"""Scheduler cost on real PostgreSQL: an idle tick over a big table, and planning a big batch.

Creates its own database ``bs_bench_<random>`` on the local server (postgres, trust auth),
migrates it, loads the users and their schedules with set-based SQL (no API, no ORM), and drops
the database afterwards, whatever happens:

    .venv/bin/python -m bench.scheduler_bench [--users N] [--due N] [--ticks N]

(a) idle tick: N users, none due; `Scheduler.tick(now)` timed `--ticks` times. This is what
    every replica pays every SCHEDULER_INTERVAL_MS all year, so it must stay small (target
    median under 5 ms). It includes the stale sweep (`lock_stale`) and the heartbeat write.
(b) planning: `--due` schedules come due at once (the 1 January birthday wave, say); one tick
    plans them all (ledger rows, schedule advances, publish into the in-process queue).
    Target under 10 s for 100,000.
(c) the same wave published to RabbitMQ (a throwaway vhost on the local server, publisher
    confirms), on a copy of the database taken before any tick: what a deployment sees. No
    target; `--no-rabbit` leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra import eventloop, migrate
from birthday_scheduler.infra.broker.base import MAIN_QUEUE, Broker
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from birthday_scheduler.infra.db import create_engine
from birthday_scheduler.infra.logging import configure_logging
from birthday_scheduler.infra.sql import upsert
from birthday_scheduler.messages import schedules
from birthday_scheduler.messages.ledger import common, planned
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.settings import Settings

# Reuse the tests' vhost helpers without making tests/ a package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rabbit_vhost import create_vhost, delete_vhost, vhost_url

ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

# The due wave fires at 09:00Z on 15 June 2026 (UTC users born on 15 June). Every other user's
# next birthday is between 16 June 2026 and 13 June 2027 at 09:00 in a zone between -12:00 and
# +14:00, so the earliest of them fires at 19:00Z on 15 June: nothing else is due at either
# instant below.
IDLE_NOW = datetime(2026, 6, 15, 8, 0, tzinfo=UTC)
WAVE_NOW = datetime(2026, 6, 15, 9, 0, 1, tzinfo=UTC)

# One row per user: the due wave first, then birthdays spread over the following year in every
# whole-hour zone. Ids are derived from the row number so users and schedules join without a
# round trip. The users' birth dates agree with their schedules, so advancing a schedule (which
# recomputes from the birth date) gives a real next-year instant.
SEED_SQL = """
CREATE UNLOGGED TABLE bench_seed AS
SELECT
    md5('bench-user-' || i)::uuid AS id,
    i,
    CASE WHEN i <= $2 THEN date '2026-06-15'
         ELSE date '2026-06-16' + ((i::bigint * 7919) % 363)::int END AS occasion,
    CASE WHEN i <= $2 THEN 0 ELSE (((i % 27) - 12) * 60) END AS offset_minutes
FROM generate_series(1, $1::int) AS i
"""

LOAD_SQL = (
    """
    INSERT INTO users (id, first_name, last_name, email, date_of_birth, timezone,
                       timezone_offset_minutes, created_at, updated_at)
    SELECT id, 'Bench', 'User ' || i, 'bench-' || i || '@example.com',
           make_date(1990 - (i % 50)::int, extract(month FROM occasion)::int,
                     extract(day FROM occasion)::int),
           NULL, offset_minutes, timestamptz '2025-01-01 00:00Z', timestamptz '2025-01-01 00:00Z'
    FROM bench_seed ORDER BY id
    """,
    """
    INSERT INTO message_schedules (user_id, kind, next_fire_at, occasion_date)
    SELECT id, 'birthday',
           (occasion + time '09:00') AT TIME ZONE 'UTC' - make_interval(mins => offset_minutes),
           occasion
    FROM bench_seed ORDER BY id
    """,
    # Last year's messages, all sent: the ledger a year-old deployment carries. The sweep's
    # partial index must keep them out of the idle tick's way.
    """
    INSERT INTO message_logs (id, user_id, kind, occasion_date, idempotency_key, status,
                              attempts, scheduled_at, not_before, sent_at, created_at,
                              updated_at)
    SELECT md5('bench-log-' || i)::uuid, id, 'birthday', occasion - 365,
           md5('bench-log-' || i), 'sent', 1,
           timestamptz '2025-06-15 09:00Z', timestamptz '2025-06-15 09:00Z',
           timestamptz '2025-06-15 09:00:01Z', timestamptz '2025-06-15 09:00Z',
           timestamptz '2025-06-15 09:00:01Z'
    FROM bench_seed
    """,
    "DROP TABLE bench_seed",
)


# --- the repository's first versions, kept as the baseline of the comparison -----------------


async def _legacy_insert_ledger_rows(
    session: AsyncSession, rows: Sequence[planned.NewLedgerRow], now: datetime
) -> list[tuple[uuid.UUID, MessageStatus]]:
    """A multi-row `.values([...])`: one bind parameter per cell, compiled afresh per call."""
    if not rows:
        return []
    stmt = upsert(session, common.ledger_table).values(
        [
            {
                "id": row.id,
                "user_id": row.user_id,
                "kind": row.kind,
                "occasion_date": row.occasion_date,
                "idempotency_key": str(row.id),
                "status": row.status.value,
                "attempts": 0,
                "scheduled_at": row.scheduled_at,
                "not_before": row.scheduled_at,
                "lease_until": row.lease_until,
                "created_at": now,
                "updated_at": now,
            }
            for row in rows
        ]
    )
    revived = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id", "kind", "occasion_date"],
        set_={
            "status": revived.status,
            "attempts": 0,
            "last_error": None,
            "scheduled_at": revived.scheduled_at,
            "not_before": revived.not_before,
            "lease_until": revived.lease_until,
            "updated_at": revived.updated_at,
        },
        where=common.ledger_table.c.status == MessageStatus.CANCELLED.value,
    ).returning(common.ledger_table.c.id, common.ledger_table.c.status)
    result = await session.execute(stmt)
    return [(row_id, MessageStatus(status)) for row_id, status in result.all()]


async def _legacy_advance_schedules(
    session: AsyncSession, advances: Sequence[schedules.ScheduleAdvance]
) -> None:
    """An executemany: one UPDATE statement per schedule."""
    if not advances:
        return
    c = schedules._schedules.c
    await session.execute(
        update(schedules._schedules)
        .where(c.user_id == bindparam("b_user", type_=c.user_id.type))
        .where(c.kind == bindparam("b_kind", type_=c.kind.type))
        .values(
            next_fire_at=bindparam("b_fire", type_=c.next_fire_at.type),
            occasion_date=bindparam("b_date", type_=c.occasion_date.type),
        ),
        [
            {
                "b_user": a.user_id,
                "b_kind": a.kind,
                "b_fire": a.next_fire_at,
                "b_date": a.occasion_date,
            }
            for a in advances
        ],
    )


async def _legacy_write_tick_plan(
    session: AsyncSession,
    rows: Sequence[planned.NewLedgerRow],
    advances: Sequence[schedules.ScheduleAdvance],
    now: datetime,
    *,
    skip_reason: str | None = None,  # the first repository had none: the same signature only
) -> list[tuple[uuid.UUID, MessageStatus]]:
    written = await _legacy_insert_ledger_rows(session, rows, now)
    await _legacy_advance_schedules(session, advances)
    return written


@contextlib.contextmanager
def _legacy_repository() -> Iterator[None]:
    # The scheduler looks it up on the module at call time, so swapping it is enough.
    saved = planned.write_tick_plan
    planned.write_tick_plan = _legacy_write_tick_plan
    try:
        yield
    finally:
        planned.write_tick_plan = saved


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    target: str
    ok: bool | None  # None: informational, no target


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _database_url(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


async def _load(url: str, users: int, due: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SEED_SQL, users, due)
        for statement in LOAD_SQL:
            await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE")
        # Flush the load's dirty pages now, so the measurements below do not share the disk
        # with the checkpoint it would otherwise trigger.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _idle_ticks(resources: runtime.Resources, ticks: int) -> list[float]:
    scheduler = runtime.build_scheduler(resources, "bench-idle")
    for _ in range(5):  # warm the pool and asyncpg's prepared statements
        await scheduler.tick(IDLE_NOW)
    timings = []
    for _ in range(ticks):
        started = time.perf_counter()
        report = await scheduler.tick(IDLE_NOW)
        timings.append(time.perf_counter() - started)
        if report.planned or report.republished:
            raise SystemExit(f"idle tick did work: {report}")
    return timings


async def _wave(resources: runtime.Resources, due: int) -> float:
    """Seconds one tick takes to plan, publish and mark `due` messages."""
    scheduler = runtime.build_scheduler(resources, "bench-wave")
    started = time.perf_counter()
    report = await scheduler.tick(WAVE_NOW)
    elapsed = time.perf_counter() - started
    published = await resources.require_broker().queue_depth(MAIN_QUEUE)
    if report.planned != due or published != due:
        raise SystemExit(f"expected {due} planned and published, got {report} / {published}")
    return elapsed


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _fresh_database(users: int, due: int) -> tuple[str, float]:
    name = f"bs_bench_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = _database_url(name)
    engine = create_engine(Settings(), url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return name, await _load(url, users, due)


async def _timed_wave(name: str, due: int, broker: Broker | None = None) -> float:
    settings = Settings(database_url=_database_url(name))
    async with runtime.open_resources(settings, broker=broker or MemoryBroker()) as resources:
        return await _wave(resources, due)


async def _rabbit_wave(name: str, due: int) -> float:
    """The wave on database `name`, published to RabbitMQ in a vhost of its own."""
    vhost = create_vhost("bench")
    try:
        return await _timed_wave(name, due, RabbitBroker(vhost_url(vhost)))
    finally:
        delete_vhost(vhost)


async def _compare(due: int) -> tuple[float, float]:
    """Plan the same wave with the first and the current repository, on identical copies."""
    baseline, _ = await _fresh_database(due, due)
    current = f"{baseline}_b"
    try:
        await _admin(f'CREATE DATABASE "{current}" TEMPLATE "{baseline}"')
        with _legacy_repository():
            before = await _timed_wave(baseline, due)
        after = await _timed_wave(current, due)
    finally:
        for name in (baseline, current):
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return before, after


async def run(users: int, due: int, ticks: int, compare: int, rabbit: bool) -> list[Row]:
    if not 0 < due <= users:
        raise SystemExit("--due must be between 1 and --users")
    name, load_s = await _fresh_database(users, due)
    copy = f"{name}_rabbit"
    try:
        if rabbit:  # before any tick: the same wave, still due
            await _admin(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
        settings = Settings(database_url=_database_url(name))
        async with runtime.open_resources(settings, broker=MemoryBroker()) as resources:
            timings = await _idle_ticks(resources, ticks)
            wave_s = await _wave(resources, due)
        rabbit_s = await _rabbit_wave(copy, due) if rabbit else None
    finally:
        for database in (name, copy):
            await _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    median_ms = statistics.median(timings) * 1000
    rows = [
        Row(f"load {users:,} users + schedules + ledger", f"{load_s:.1f} s", "-", None),
        Row(f"idle tick, {users:,} users, median", f"{median_ms:.2f} ms", "< 5 ms", median_ms < 5),
        Row(f"idle tick, p95 of {ticks}", f"{_percentile(timings, 0.95) * 1000:.2f} ms", "-", None),
        Row(f"idle tick, max of {ticks}", f"{max(timings) * 1000:.2f} ms", "-", None),
        Row(
            f"plan {due:,} due (one tick)", f"{wave_s:.2f} s", "< 10 s per 100k", wave_s < due / 1e4
        ),
        Row("plan rate", f"{due / wave_s:,.0f} rows/s", "> 10,000 rows/s", None),
    ]
    if rabbit_s is not None:
        rows.append(
            Row(
                f"plan {due:,} due, published to RabbitMQ",
                f"{rabbit_s:.2f} s ({due / rabbit_s:,.0f} rows/s)",
                "-",
                None,
            )
        )
    if compare:
        before, after = await _compare(compare)
        rows += [
            Row(
                f"plan {compare:,}, first repository", f"{compare / before:,.0f} rows/s", "-", None
            ),
            Row(
                f"plan {compare:,}, current repository", f"{compare / after:,.0f} rows/s", "-", None
            ),
            Row("speed-up", f"{before / after:.1f}x", "-", None),
        ]
    return rows


def print_table(title: str, rows: Sequence[Row]) -> None:
    headers = ("measure", "value", "target", "")
    cells = [
        (row.name, row.value, row.target, {True: "ok", False: "MISSED", None: ""}[row.ok])
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (headers, *cells)) for i in range(len(headers))]
    rule = "  ".join("-" * width for width in widths)
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(rule)
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler_bench")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=100_000)
    parser.add_argument("--ticks", type=int, default=50)
    parser.add_argument(
        "--compare",
        type=int,
        default=10_000,
        help="also plan this many with the first repository version and report the ratio (0: off)",
    )
    parser.add_argument(
        "--no-rabbit",
        dest="rabbit",
        action="store_false",
        help="leave out the wave published to the local RabbitMQ",
    )
    args = parser.parse_args(argv)
    configure_logging("warn")
    rows = eventloop.run(run(args.users, args.due, args.ticks, args.compare, args.rabbit))
    print_table("scheduler on PostgreSQL", rows)
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
