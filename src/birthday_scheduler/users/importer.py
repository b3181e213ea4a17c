"""`birthday-scheduler users import FILE.csv`: bulk onboarding, each row created as POST /users
would create it, in chunks.

The file is streamed CHUNK_ROWS rows at a time (peak RSS ~110 MB for 1,000,000 rows, most of
it the imported modules). Each chunk is validated and planned by import_rows.py (the API's own
rules), then written in one transaction: a crash leaves whole chunks, each user with its
schedules, and a re-run skips what is already there.

PostgreSQL: one look-up finds which of the chunk's emails a live user already has (the
database's lower(), through ux_users_email_live); the others are COPYed (asyncpg) straight into
`users`, their schedules into `message_schedules`. If a writer takes one of those emails between
the look-up and the COPY, the COPY's unique violation rolls the chunk back and it goes again
through a temporary staging table and `INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING id`
(no conflict target: it yields to any unique index, the partial expression index included).
SQLite (one writer at a time, so a look-up then inserts in one transaction is race-free): the
same look-up, then batched inserts.

Measured (1,000,000 rows of bench/import_csv.py's file, PostgreSQL on this 2-core machine shared
with other jobs, so absolute times vary up to 2x from run to run):
- Staging + INSERT … SELECT for every chunk, with uuid4 ids (load average 5-7): 12.2 s of
  database time per 200,000 rows; look-up + COPY with time-ordered (v7) ids, whose primary
  keys grow at their right edge: 4.2 s. The staging path is kept for the race only.
- Validation: a row of plain cells is read without pydantic and its address without
  email-validator's per-address parsing (import_rows._plain_row, fast_email; both proven to
  give UserWrite's values by Hypothesis tests); any other row goes through UserWrite, whose
  domain check is memoized per domain (that took it from ~86 to ~22 µs a row). Read +
  validate + plan (`python -m bench.import_floor --cpu`, 100,000 rows, CPU time): 32.4 ->
  17.7 (address shortcut) -> 13.4 µs a row.
- The floor (`python -m bench.import_floor`, 1,000,000 rows validated beforehand, one run):
  look-up + COPY into the real users and message_schedules take 29.4 s (34,000 rows/s, 8 µs a
  row of it this process encoding records), COPY alone 26.3 s (users 12.2, schedules 14.1),
  against 3.5 s for bench's five-column COPY (284,000 rows/s): 0.12x. Three indexes on users,
  two and a foreign key on message_schedules, and a second row per user are the difference:
  however little its Python costs, the import stays under ~0.13x of a ceiling of the same run.
- The next chunk is read, validated and planned in a thread while the database writes the
  previous one; both need this process's one GIL (13 + 8 µs a row) and the database a core of
  the two. bench, two before/after pairs, load average 2-3: 1,000,000 rows in 57.2 and 62.2 s
  before (17,495 and 16,080 rows/s; ratio 0.054 and 0.055), 50.9 and 38.9 s after (19,630
  and 25,680 rows/s; ratio 0.131 and 0.114, the ceiling's COPY taking 3.1-6.7 s); peak RSS
  108 MB. Processes in parallel would multiply the memory past the 150 MB
  budget for at most 2x on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import gc
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from birthday_scheduler.clock import Clock, SystemClock
from birthday_scheduler.errors import BirthdaySchedulerError, ConfigurationError
from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.db import create_engine, session_factory, unit_of_work
from birthday_scheduler.messages.models import MessageSchedule
from birthday_scheduler.settings import Settings
from birthday_scheduler.users import fast_email, import_rows
from birthday_scheduler.users.import_rows import NewUser, PreparedChunk, Record
from birthday_scheduler.users.models import User

CHUNK_ROWS = 10_000
_users = cast(Table, User.__table__)
_schedules = cast(Table, MessageSchedule.__table__)
USER_COLUMNS = NewUser._fields
SCHEDULE_COLUMNS = ("user_id", "kind", "next_fire_at", "occasion_date")
_STAGING = "import_users_staging"


class ImportFileError(BirthdaySchedulerError):
    """The file cannot be imported (unreadable, not UTF-8 CSV, bad header): one line why."""


@dataclass
class ImportSummary:
    imported: int = 0
    existing: int = 0  # rows whose email a live user (or an earlier line) already has
    rejected: int = 0
    rows: int = 0
    seconds: float = 0.0

    def line(self, report: Path) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        rejected = f"rejected {self.rejected:,}"
        if self.rejected:
            rejected += f" (report: {report})"
        return (
            f"imported {self.imported:,}, already present {self.existing:,}, {rejected}; "
            f"{self.rows:,} rows in {self.seconds:.1f} s ({rate:,.0f} rows/s)"
        )


def default_report_path(source: Path) -> Path:
    return source.with_name(source.name + ".rejected.csv")


Progress = Callable[[int], None]  # called with the number of rows done so far


async def run(
    settings: Settings, source: Path, report: Path, progress: Progress | None = None
) -> ImportSummary:
    """The command: the settings' database, the system clock, SEND_LOCAL_TIME as the default."""
    # Not runtime.open_resources: it would import the web server and the broker client
    # (~15 MB of the 150 MB this command may use) for an engine and a clock.
    engine = create_engine(settings)
    try:
        if settings.is_embedded_database:
            await migrate.upgrade(engine)  # as `all` does: works on a fresh checkout
        return await import_file(
            engine,
            session_factory(engine),
            SystemClock(),
            settings.send_local_time,
            source,
            report,
            progress,
        )
    finally:
        await engine.dispose()


async def import_file(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    default_send_time: dt.time,
    source: Path,
    report: Path,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import `source` into the database behind `engine`; rejected rows go to `report`."""
    started = time.perf_counter()
    with _open_source(source) as handle, _open_report(report) as report_handle:
        reader = csv.reader(handle)
        try:
            columns = import_rows.check_header(_first_row(reader, source))
        except import_rows.HeaderError as exc:
            raise ImportFileError(f"{source}: {exc}") from None
        status = await migrate.schema_status(engine)
        if not status.up_to_date:
            raise ConfigurationError(
                "the database schema is not at the newest revision: "
                "run `birthday-scheduler db migrate` first"
            )
        report_writer = csv.writer(report_handle)
        report_writer.writerow(("line", "field", "reason"))
        chunks = _chunks(reader, source)
        summary = ImportSummary()

        def prepare_next() -> PreparedChunk | None:
            records = next(chunks, None)
            if records is None:
                return None
            return import_rows.prepare_chunk(records, columns, default_send_time, clock.now())

        with import_rows.memoized_email_domains(), fast_email.installed(), _fewer_collections():
            async with _writer(engine, sessions) as write:
                prepared = await asyncio.to_thread(prepare_next)
                while prepared is not None:
                    # The database writes this chunk while a thread prepares the next.
                    writing = asyncio.ensure_future(write(prepared))
                    try:
                        following = await asyncio.to_thread(prepare_next)
                    finally:
                        inserted = await writing  # a whole chunk, even if reading failed
                        _account(summary, prepared, inserted, report_writer)
                        report_handle.flush()
                        if progress is not None:
                            progress(summary.rows)
                    prepared = following
    summary.seconds = time.perf_counter() - started
    return summary


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Python's cyclic GC, left as is, runs every 700 allocations and walks every live object
    (the modules' included) at each full pass; validation allocates several objects a row.
    Freezing what exists and collecting less often: prepare_chunk on 30,000 rows, 3 alternated
    runs each on two files, median 51 -> 39 and 83 -> 64 µs a row. The rows hold no cycles, so
    memory does not grow for it."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _account(summary: ImportSummary, chunk: PreparedChunk, inserted: int, report: Any) -> None:
    summary.rows += chunk.rows
    summary.imported += inserted
    summary.existing += len(chunk.users) - inserted + chunk.repeated_in_chunk
    summary.rejected += chunk.rejected_rows
    report.writerows((r.line, r.field, r.reason) for r in chunk.rejections)


def _open_source(source: Path) -> IO[str]:
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name.
        return source.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFileError(f"cannot read {source}: {exc.strerror or exc}") from None


def _open_report(report: Path) -> IO[str]:
    try:
        return report.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ImportFileError(f"cannot write the report {report}: {exc.strerror or exc}") from None


def _first_row(reader: Iterator[list[str]], source: Path) -> list[str]:
    try:
        return next(reader, [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportFileError(f"{source}: line 1 is not UTF-8 CSV ({_short(exc)})") from None


def _chunks(reader: Any, source: Path) -> Iterator[list[Record]]:
    """Non-blank records with the number of the line each starts on, CHUNK_ROWS at a time."""
    chunk: list[Record] = []
    line = reader.line_num
    while True:
        try:
            cells = next(reader, None)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ImportFileError(
                f"{source}: line {line + 1} is not UTF-8 CSV ({_short(exc)}); the rows before "
                "it were imported: fix the file and run the import again"
            ) from None
        if cells is None:
            break
        start, line = line + 1, reader.line_num
        if not cells:
            continue  # a blank line
        chunk.append((start, cells))
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _short(exc: Exception) -> str:
    return type(exc).__name__ if isinstance(exc, UnicodeDecodeError) else str(exc)[:80]


# --- writers -----------------------------------------------------------------------------------

Write = Callable[[PreparedChunk], Any]


class _WriterContext:
    """Picks the dialect's writer; the PostgreSQL one holds one connection for the import."""

    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._engine = engine
        self._sessions = sessions
        self._conn: Any = None

    async def __aenter__(self) -> Write:
        if self._engine.dialect.name != "postgresql":
            return lambda chunk: _write_sqlite(self._sessions, chunk)
        self._conn = await self._engine.connect()
        raw = await self._conn.get_raw_connection()
        pg = raw.driver_connection
        # No constraints or indexes: a scratch copy, emptied at every commit.
        await pg.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} "
            "(LIKE users INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        return lambda chunk: _write_postgres(pg, chunk)

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            # The pooled connection is closed, not returned: its temporary table goes with it.
            await self._conn.invalidate()
            await self._conn.close()


def _writer(engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> _WriterContext:
    return _WriterContext(engine, sessions)


_COLUMN_LIST = ", ".join(USER_COLUMNS)
# Which of the chunk's emails a live user has, by the database's own lower(), the expression
# and predicate of ux_users_email_live (so the look-up uses it, and agrees with it exactly).
# LATERAL … LIMIT 1: one index probe per email, whatever the planner thinks of the table's size.
_LIVE_EMAILS = (
    "SELECT e FROM unnest($1::text[]) AS e CROSS JOIN LATERAL "
    "(SELECT 1 FROM users WHERE lower(email) = lower(e) AND deleted_at IS NULL LIMIT 1) AS live"
)
# Constants only. No conflict target: it yields to any unique index, ux_users_email_live too.
_MOVE_STAGED = (
    f"INSERT INTO users ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {_STAGING} "  # noqa: S608
    "ON CONFLICT DO NOTHING RETURNING id"
)

_SQLITE_LIVE_EMAILS = text(
    "SELECT value FROM json_each(:emails) WHERE EXISTS "
    "(SELECT 1 FROM users WHERE lower(email) = lower(value) AND deleted_at IS NULL)"
)


async def _write_postgres(pg: Any, chunk: PreparedChunk) -> int:
    if not chunk.users:
        return 0
    try:
        async with pg.transaction():
            return await _copy_new(pg, chunk)
    except asyncpg.UniqueViolationError:
        # A writer took one of these emails between the look-up and the COPY: redo the
        # chunk through the staging table, which yields to whoever got there first.
        async with pg.transaction():
            return await _move_staged(pg, chunk)


async def _copy_new(pg: Any, chunk: PreparedChunk) -> int:
    """The users whose email no live user has, COPYed straight into users (a unique
    violation, if a writer races us, rolls the chunk back), and their schedules."""
    emails = [u.email for u in chunk.users]
    taken = {row[0] for row in await pg.fetch(_LIVE_EMAILS, emails)}
    users = [u for u in chunk.users if u.email not in taken] if taken else chunk.users
    if users:
        await pg.copy_records_to_table("users", records=users, columns=USER_COLUMNS)
    await _copy_schedules(pg, chunk, {u.id for u in users} if taken else None)
    return len(users)


async def _move_staged(pg: Any, chunk: PreparedChunk) -> int:
    await pg.copy_records_to_table(_STAGING, records=chunk.users, columns=USER_COLUMNS)
    inserted = {row[0] for row in await pg.fetch(_MOVE_STAGED)}
    await _copy_schedules(pg, chunk, inserted)
    return len(inserted)


async def _copy_schedules(pg: Any, chunk: PreparedChunk, only: set[uuid.UUID] | None) -> None:
    """The chunk's schedules (those of the users in `only`, when not all were inserted)."""
    planned = chunk.schedules if only is None else [s for s in chunk.schedules if s.user_id in only]
    if planned:
        await pg.copy_records_to_table(
            "message_schedules", records=planned, columns=SCHEDULE_COLUMNS
        )


async def _write_sqlite(sessions: async_sessionmaker[AsyncSession], chunk: PreparedChunk) -> int:
    if not chunk.users:
        return 0
    async with unit_of_work(sessions) as session:
        taken = await _live_emails(session, [u.email for u in chunk.users])
        new = [u for u in chunk.users if u.email not in taken]
        if not new:
            return 0
        await session.execute(insert(_users), [_user_values(u) for u in new])
        ids = {u.id for u in new}
        planned = [s._asdict() for s in chunk.schedules if s.user_id in ids]
        if planned:
            await session.execute(insert(_schedules), planned)
    return len(new)


async def _live_emails(session: AsyncSession, emails: Sequence[str]) -> set[str]:
    rows = await session.execute(_SQLITE_LIVE_EMAILS, {"emails": json.dumps(emails)})
    return set(rows.scalars())


def _user_values(user: NewUser) -> dict[str, Any]:
    values = user._asdict()
    values["notifications"] = json.loads(user.notifications)
    return values


@contextlib.contextmanager
def progress_bar(source: Path) -> Iterator[Progress | None]:
    """A progress bar on a terminal; None (no bar) when stdout is a file or a pipe."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    total = _count_lines(source)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stdout),
        transient=True,
    ) as bar:
        task = bar.add_task("importing", total=total)
        yield lambda done: bar.update(task, completed=done)


def _count_lines(source: Path) -> int | None:
    """Data lines, for the bar's total (a quoted cell holding a line break counts twice)."""
    try:
        with source.open("rb") as handle:
            lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return None
    return max(lines - 1, 0)
