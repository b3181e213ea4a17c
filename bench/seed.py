"""Set-based loading of users, schedules and last year's ledger (no API, no ORM).

Two populations:

* `load_spread`: N users, the first `due` of them due at 09:00Z on 15 June 2026 (`WAVE_NOW`),
  every other one's next birthday between 16 June 2026 and 13 June 2027 at 09:00 in a zone
  between -12:00 and +14:00, so nothing is due at `IDLE_NOW` and only the wave at `WAVE_NOW`.
  A year-old deployment's ledger (one `sent` row per user) comes with it.
* `load_due_at`: N users all due at one instant (the delivery and burst runs).

Ids are derived from the row number so users and schedules join without a round trip; the birth
dates agree with the schedules, so advancing a schedule gives a real next-year instant.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]

IDLE_NOW = datetime(2026, 6, 15, 8, 0, tzinfo=UTC)
WAVE_NOW = datetime(2026, 6, 15, 9, 0, 1, tzinfo=UTC)

_SPREAD_SEED = """
CREATE UNLOGGED TABLE bench_seed AS
SELECT
    md5('bench-user-' || i)::uuid AS id,
    i,
    CASE WHEN i <= $2 THEN date '2026-06-15'
         ELSE date '2026-06-16' + ((i::bigint * 7919) % 363)::int END AS occasion,
    CASE WHEN i <= $2 THEN 0 ELSE (((i % 27) - 12) * 60) END AS offset_minutes
FROM generate_series(1, $1::int) AS i
"""

_SPREAD_LOAD = (
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
    # Last year's messages, all sent: the ledger a year-old deployment carries.
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

# Everyone born on the instant's UTC day (1992: a leap year, so 29 February works too), in UTC,
# with the schedule firing at the instant itself: the planner takes the schedule's instant.
_DUE_AT_LOAD = (
    """
    INSERT INTO users (id, first_name, last_name, email, date_of_birth, timezone,
                       timezone_offset_minutes, created_at, updated_at)
    SELECT md5('bench-due-' || i)::uuid, 'Bench', 'Due ' || i, 'due-' || i || '@example.com',
           make_date(1992, extract(month FROM $2::date)::int, extract(day FROM $2::date)::int),
           NULL, 0, now(), now()
    FROM generate_series(1, $1::int) AS i
    """,
    """
    INSERT INTO message_schedules (user_id, kind, next_fire_at, occasion_date)
    SELECT md5('bench-due-' || i)::uuid, 'birthday', $3::timestamptz, $2::date
    FROM generate_series(1, $1::int) AS i
    """,
)


async def _settle(conn: asyncpg.Connection) -> None:
    await conn.execute("VACUUM ANALYZE")
    # Flush the load's dirty pages now, so the measurements do not share the disk with the
    # checkpoint it would otherwise trigger.
    await conn.execute("CHECKPOINT")


async def load_spread(url: str, users: int, due: int) -> float:
    """Seconds it took to load `users` users (the first `due` due at WAVE_NOW)."""
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(_SPREAD_SEED, users, due)
        for statement in _SPREAD_LOAD:
            await conn.execute(statement)
        await _settle(conn)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def load_due_at(url: str, count: int, instant: datetime) -> None:
    """`count` users whose birthday message is due at `instant` (UTC)."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            users, schedules = _DUE_AT_LOAD
            await conn.execute(users, count, instant.date())
            await conn.execute(schedules, count, instant.date(), instant)
        await _settle(conn)
    finally:
        await conn.close()


async def user_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id::text FROM users")
    finally:
        await conn.close()
    return [row[0] for row in rows]
