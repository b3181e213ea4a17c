"""How fast `users import` could be, part by part: a probe run by hand, and the floor that the
suite's import group (bench/import_csv.py) measures after its ceiling with the same `real_tables`.

    .venv/bin/python -m bench.import_floor [--rows N]          # the database floor
    .venv/bin/python -m bench.import_floor --cpu [--rows N]    # validate+plan CPU per row

The floor: bench/import_csv.py's file (N rows, 1,000,000 by default), validated and planned
first (untimed), then written as the importer writes a chunk: one transaction per
CHUNK_ROWS, the look-up of live emails, COPY (asyncpg copy_records_to_table) of the same columns
into the real `users` and `message_schedules`. Only the database calls are timed. In the same
run, before and after, the suite's ceiling: COPY of the same CSV into its five-column table with
a unique index on lower(email). Every database is a copy of one migrated by the code's own
`db migrate` (bench.services.Scope), dropped at the end.

--cpu: the Python per row of the import's validate+plan step (import_rows.prepare_chunk, under
the importer's domain memo and GC settings), as process CPU time, which the other jobs on a
shared machine disturb less than wall time; each pass re-reads the rows, best and median of
--repeat passes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench.import_csv import ceiling_copy_s, write_csv
from bench.services import Code, Scope, database_url
from birthday_scheduler.users import fast_email, import_rows, importer
from birthday_scheduler.users.import_rows import PreparedChunk

SEND_TIME = datetime(2026, 1, 1, 9).time()


def _chunks(path: Path) -> Iterator[list[import_rows.Record]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        chunk: list[import_rows.Record] = []
        for line, cells in enumerate(reader, start=2):
            chunk.append((line, cells))
            if len(chunk) == importer.CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _prepared(path: Path) -> Iterator[PreparedChunk]:
    columns = ("firstName", "lastName", "email", "dateOfBirth", "timezone")
    with (
        import_rows.memoized_email_domains(),
        fast_email.installed(),
        importer._fewer_collections(),
    ):
        for records in _chunks(path):
            yield import_rows.prepare_chunk(records, columns, SEND_TIME, datetime.now(UTC))


@dataclass(frozen=True)
class Floor:
    """The database's part of an import of prepared rows: seconds of the live-email look-ups, of
    the COPYs into users and into message_schedules (the commit included), this process's CPU
    seconds in them (asyncpg encoding the records); rows written to each table."""

    lookup_s: float
    users_s: float
    schedules_s: float
    client_s: float
    users: int
    schedules: int

    @property
    def copy_s(self) -> float:
        return self.users_s + self.schedules_s

    @property
    def write_s(self) -> float:
        """The importer's write: look-up and COPYs."""
        return self.lookup_s + self.copy_s


async def real_tables(url: str, path: Path) -> Floor:
    """The CSV at `path`, validated and planned first (untimed), written into the real tables of
    the migrated database at `url` as the importer writes a chunk; only the database is timed."""
    conn = await asyncpg.connect(url)
    lookup_s = users_s = schedules_s = client_s = 0.0
    users = schedules = 0
    try:
        for chunk in _prepared(path):
            started = time.perf_counter()
            cpu = time.process_time()
            async with conn.transaction():
                emails = [u.email for u in chunk.users]
                taken = await conn.fetch(importer._LIVE_EMAILS, emails)
                looked = time.perf_counter()
                await conn.copy_records_to_table(
                    "users", records=chunk.users, columns=importer.USER_COLUMNS
                )
                copied = time.perf_counter()
                await conn.copy_records_to_table(
                    "message_schedules", records=chunk.schedules, columns=importer.SCHEDULE_COLUMNS
                )
            done = time.perf_counter()
            client_s += time.process_time() - cpu
            if taken:  # a fresh database holds none of the file's emails
                raise RuntimeError(f"floor: {len(taken)} emails already live")
            lookup_s += looked - started
            users_s += copied - looked
            schedules_s += done - copied  # the commit included
            users += len(chunk.users)
            schedules += len(chunk.schedules)
        return Floor(lookup_s, users_s, schedules_s, client_s, users, schedules)
    finally:
        await conn.close()


async def floor(rows: int) -> None:
    scope = Scope()
    code = Code()
    try:
        with tempfile.TemporaryDirectory(prefix="import-floor-") as workdir:
            path = Path(workdir) / "users.csv"
            write_csv(path, rows)
            before = await ceiling_copy_s(database_url(await scope.database(code)), path)
            found = await real_tables(database_url(await scope.database(code)), path)
            after = await ceiling_copy_s(database_url(await scope.database(code)), path)
    finally:
        problems = await scope.close()
        for problem in problems:
            print(problem, file=sys.stderr)
    ceiling = rows / statistics.mean((before, after))
    copy_rate = rows / found.copy_s
    write_rate = rows / found.write_s
    print(f"{rows:,} rows: {found.users:,} users, {found.schedules:,} schedules")
    print(
        f"ceiling (COPY CSV -> 5-column table): {before:.2f} s before, {after:.2f} s after "
        f"= {ceiling:,.0f} rows/s"
    )
    print(
        f"real tables, COPY only: {found.copy_s:.2f} s = {copy_rate:,.0f} rows/s "
        f"({copy_rate / ceiling:.2f}x ceiling): users {found.users_s:.2f} s, "
        f"message_schedules {found.schedules_s:.2f} s"
    )
    print(
        f"real tables, look-up + COPY (the importer's write): {found.write_s:.2f} s "
        f"= {write_rate:,.0f} rows/s ({write_rate / ceiling:.2f}x ceiling)"
    )
    print(f"this process's CPU in those writes: {found.client_s / rows * 1e6:.1f} µs/row")
    print(f"0.5x ceiling = {ceiling / 2:,.0f} rows/s")


def cpu(rows: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="import-cpu-") as workdir:
        path = Path(workdir) / "users.csv"
        write_csv(path, rows)
        passes = []
        for _ in range(repeat):
            started = time.process_time()
            users = sum(len(chunk.users) for chunk in _prepared(path))
            passes.append((time.process_time() - started) / rows * 1e6)
            assert users == rows
    print(
        f"prepare_chunk on {rows:,} rows: best {min(passes):.1f} µs/row CPU, "
        f"median {statistics.median(passes):.1f} ({', '.join(f'{p:.1f}' for p in passes)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_floor", description=__doc__)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--cpu", action="store_true", help="validate+plan CPU per row")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.cpu:
        cpu(args.rows or 100_000, args.repeat)
    else:
        asyncio.run(floor(args.rows or 1_000_000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
