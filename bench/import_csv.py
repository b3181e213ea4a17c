"""`birthday-scheduler users import FILE.csv` on `import_rows` rows, against PostgreSQL COPY.

The file has the API's field names as its header (firstName,lastName,email,dateOfBirth,timezone)
and unique emails. import_rows_per_s is rows over the command's wall time (start-up included);
its ceiling is COPY of the same file into a table of the same five columns with the users'
unique index on lower(email): the cheapest way PostgreSQL takes those rows. A code version
without the command reports the key as not available.

After the ceiling, on a fresh database, the detail gives the floor of the real tables
(bench/import_floor.py's `real_tables`): the same rows validated and planned beforehand, then
only written as the importer writes them (live-email look-up, COPY into `users` and
`message_schedules` with their indexes, checks and foreign key). No import can beat it, so it
tells how much of the distance to the ceiling is the schema's and how much the command's.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench.context import Context
from bench.results import Result, unavailable
from bench.services import SCRIPT, database_url

ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney")
COPY_TABLE = """
CREATE TABLE bench_copy (
    first_name varchar(100) NOT NULL,
    last_name varchar(100) NOT NULL,
    email varchar(254) NOT NULL,
    date_of_birth date NOT NULL,
    timezone varchar(64)
);
CREATE UNIQUE INDEX ux_bench_copy_email ON bench_copy (lower(email));
"""


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as out:
        out.write("firstName,lastName,email,dateOfBirth,timezone\n")
        for i in range(1, rows + 1):
            born = f"{1950 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}"
            out.write(f"Bench,Import {i},import-{i}@example.com,{born},{ZONES[i % len(ZONES)]}\n")


def _run_import(ctx: Context, url: str, csv: Path) -> tuple[float, int, float]:
    """Seconds, exit code and peak RSS (MB, from the kernel's rusage) of the import command."""
    log = (ctx.workdir / "import.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [SCRIPT, "users", "import", str(csv)],
        env=ctx.code.env(DATABASE_URL=url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    return elapsed, process.returncode, usage.ru_maxrss / 1024


async def ceiling_copy_s(url: str, csv: Path) -> float:
    """Seconds of the ceiling: COPY of the CSV into the five-column table."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(COPY_TABLE)
        started = time.perf_counter()
        await conn.copy_to_table(
            "bench_copy",
            source=str(csv),
            columns=["first_name", "last_name", "email", "date_of_birth", "timezone"],
            format="csv",
            header=True,
        )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM users WHERE deleted_at IS NULL"))
    finally:
        await conn.close()


async def run(ctx: Context) -> dict[str, Result]:
    key, unit = "import_rows_per_s", "rows/s"
    if not ctx.code.has_command("users", "import"):
        return {key: unavailable(key, unit, "this code has no `users import` command")}
    rows = ctx.profile.import_rows
    csv = ctx.workdir / "users.csv"
    write_csv(csv, rows)
    url = database_url(await ctx.scope.database(ctx.code))
    elapsed, code, rss_mb = _run_import(ctx, url, csv)
    imported = await _count(url)
    copy_s = await ceiling_copy_s(database_url(await ctx.scope.database(ctx.code)), csv)
    floor_clause = await _floor(ctx, csv, rows / elapsed, rows / copy_s)
    detail = (
        f"{rows:,} rows in {elapsed:.1f} s, exit {code}, {imported:,} users after; "
        f"command peak RSS {rss_mb:.0f} MB; ceiling: COPY in {copy_s:.1f} s; {floor_clause}"
    )
    failed = "" if code == 0 and imported == rows else f"exit {code}, {imported:,} of {rows:,}"
    return {key: Result(key, rows / elapsed, unit, rows / copy_s, detail, failed=failed)}


async def _floor(ctx: Context, csv: Path, rate: float, ceiling: float) -> str:
    """The detail's floor clause: the real tables' write of the same rows, prepared beforehand."""
    # Imported here: import_floor builds on this module's file and ceiling.
    from bench.import_floor import real_tables

    url = database_url(await ctx.scope.database(ctx.code))
    try:
        found = await real_tables(url, csv)
    except asyncpg.PostgresError as exc:  # another code's schema (--code) may not take the rows
        return f"floor: not measured ({type(exc).__name__})"
    rows = found.users
    floor, copy_only = rows / found.write_s, rows / found.copy_s
    return (
        f"floor: the same rows prepared beforehand, written as the importer writes them "
        f"(live-email look-up + COPY into users + message_schedules) in {found.write_s:.2f} s "
        f"({floor:,.0f} rows/s, {floor / ceiling:.2f}x of the ceiling; the COPYs alone "
        f"{copy_only / ceiling:.2f}x); import at {rate / floor:.2f}x of that floor"
    )
