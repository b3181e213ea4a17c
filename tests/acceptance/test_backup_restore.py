"""Acceptance: scripts/backup.sh and scripts/restore.sh, as the runbook's section 7 uses them.

Real PostgreSQL, real pg_dump/psql, a database of its own per test.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.db import create_engine
from birthday_scheduler.settings import Settings
from support import drop_database, pg_admin, pg_url

ROOT = Path(__file__).resolve().parents[2]
BACKUP = str(ROOT / "scripts" / "backup.sh")
RESTORE = str(ROOT / "scripts" / "restore.sh")
SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
DUMP_NAME = re.compile(r"^birthday_scheduler_\d{8}_\d{6}\.sql\.gz$")
TABLES = (
    "users",
    "message_schedules",
    "message_logs",
    "started_occasions",
    "scheduler_heartbeats",
    "alembic_version",
)
SECRET = "s3cret-Pa55word"

pytestmark = pytest.mark.postgres


def run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BACKUP_"))}
    base.pop("RETENTION_DAYS", None)
    return subprocess.run(
        args,
        env=base | (env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def psql(database_url: str, query: str) -> list[str]:
    result = run(
        ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-tA", "-d", database_url, "-c", query]
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def snapshot(database_url: str) -> dict[str, list[str]]:
    """Every row of every table, in a stable order, as text."""
    return {
        table: psql(database_url, f"SELECT t::text FROM {table} t ORDER BY t::text")
        for table in TABLES
    }


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A migrated database with users, schedules, a ledger row and a heartbeat in it."""
    name = f"bs_backup_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    url = pg_url(name)
    engine = create_engine(Settings(), url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    try:
        yield url
    finally:
        await drop_database(name)


def seed(database_url: str, users: int = 3) -> None:
    for n in range(users):
        user_id = uuid.uuid4()
        psql(
            database_url,
            "INSERT INTO users (id, first_name, last_name, email, date_of_birth,"
            " timezone_offset_minutes, created_at, updated_at) VALUES"
            f" ('{user_id}', 'First{n}', 'Last{n}', 'user{n}-{uuid.uuid4().hex[:6]}@example.com',"
            f" '1990-0{n + 1}-15', {n * 60}, now(), now())",
        )
        psql(
            database_url,
            "INSERT INTO message_schedules (user_id, kind, next_fire_at, occasion_date) VALUES"
            f" ('{user_id}', 'birthday', now() + interval '30 days', '2027-0{n + 1}-15')",
        )
        psql(
            database_url,
            "INSERT INTO message_logs (id, user_id, kind, occasion_date, idempotency_key, status,"
            " attempts, scheduled_at, not_before, sent_at, created_at, updated_at) VALUES"
            f" ('{uuid.uuid4()}', '{user_id}', 'birthday', '2026-0{n + 1}-15',"
            f" 'key-{uuid.uuid4().hex}', 'sent', 1, now(), now(), now(), now(), now())",
        )
    psql(
        database_url,
        "INSERT INTO scheduler_heartbeats (replica, last_tick_at)"
        " VALUES ('host:' || gen_random_uuid(), now())",
    )


def backup(database_url: str, backup_dir: Path, **extra: str) -> Path:
    result = run([BACKUP], {"DATABASE_URL": database_url, "BACKUP_DIR": str(backup_dir), **extra})
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.parent == backup_dir
    assert DUMP_NAME.match(path.name), path.name
    return path


def test_backup_then_restore_onto_the_same_and_onto_an_empty_database(
    database: str, tmp_path: Path
) -> None:
    seed(database)
    before = snapshot(database)
    assert len(before["users"]) == 3
    assert len(before["message_logs"]) == 3

    dump = backup(database, tmp_path / "backups")
    assert gzip.decompress(dump.read_bytes()).startswith(b"--")
    assert oct(dump.stat().st_mode & 0o777) == "0o600"  # dumps hold personal data

    # Damage the live database, then restore over it: the dump drops what it recreates.
    psql(database, "DELETE FROM message_logs")
    psql(database, "DELETE FROM message_schedules")
    psql(database, "DELETE FROM users WHERE first_name = 'First0'")
    seed(database, users=1)
    assert snapshot(database) != before
    restored = run([RESTORE, "--yes", str(dump)], {"DATABASE_URL": database})
    assert restored.returncode == 0, restored.stderr
    assert snapshot(database) == before

    # Lose every table (as after a bad migration or a wiped volume), then restore again.
    psql(database, "DROP TABLE " + ", ".join(TABLES) + " CASCADE")
    assert psql(database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == ["0"]
    restored = run([RESTORE, str(dump), "--yes"], {"DATABASE_URL": database})
    assert restored.returncode == 0, restored.stderr
    assert snapshot(database) == before

    status = run([SCRIPT, "db", "status"], {"DATABASE_URL": database})
    assert status.returncode == 0, status.stdout + status.stderr
    assert '"upToDate": true' in status.stdout


def test_backup_refuses_without_a_database_url_and_fails_cleanly_on_a_bad_one(
    tmp_path: Path,
) -> None:
    backup_dir = tmp_path / "backups"
    missing = run([BACKUP], {"BACKUP_DIR": str(backup_dir)})
    assert missing.returncode != 0
    assert "DATABASE_URL" in missing.stderr

    unreachable = f"postgresql://backup:{SECRET}@127.0.0.1:1/birthday_scheduler"
    failed = run([BACKUP], {"DATABASE_URL": unreachable, "BACKUP_DIR": str(backup_dir)})
    assert failed.returncode != 0
    assert "backup.sh:" in failed.stderr
    assert failed.stdout == ""
    assert SECRET not in failed.stderr + failed.stdout
    assert list(backup_dir.iterdir()) == []  # no partial or empty dump left behind

    bad_retention = run(
        [BACKUP],
        {"DATABASE_URL": unreachable, "BACKUP_DIR": str(backup_dir), "RETENTION_DAYS": "x"},
    )
    assert bad_retention.returncode != 0
    assert "RETENTION_DAYS" in bad_retention.stderr


def test_backup_into_the_default_directory(database: str, tmp_path: Path) -> None:
    result = run([BACKUP], {"DATABASE_URL": database}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("./backups/birthday_scheduler_")
    assert len(list((tmp_path / "backups").glob("birthday_scheduler_*.sql.gz"))) == 1


def test_retention_deletes_only_our_old_dumps_after_a_good_backup(
    database: str, tmp_path: Path
) -> None:
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    old = backup_dir / "birthday_scheduler_20000101_020000.sql.gz"
    recent = backup_dir / "birthday_scheduler_20000201_020000.sql.gz"
    unrelated = backup_dir / "other_service.sql.gz"
    for path, age in ((old, "40 days ago"), (recent, "10 days ago"), (unrelated, "90 days ago")):
        path.write_bytes(gzip.compress(b"-- old dump\n"))
        assert run(["touch", "-d", age, str(path)]).returncode == 0

    # A failed backup must not touch the old dumps: retention runs only after success.
    failed = run(
        [BACKUP],
        {"DATABASE_URL": "postgresql://x@127.0.0.1:1/x", "BACKUP_DIR": str(backup_dir)},
    )
    assert failed.returncode != 0
    assert old.exists()

    new = backup(database, backup_dir, RETENTION_DAYS="30")
    assert new.exists()
    assert not old.exists()
    assert recent.exists()
    assert unrelated.exists()

    backup_dir_2 = tmp_path / "short"
    backup_dir_2.mkdir()
    week_old = backup_dir_2 / "birthday_scheduler_20000301_020000.sql.gz"
    week_old.write_bytes(gzip.compress(b"-- old dump\n"))
    assert run(["touch", "-d", "8 days ago", str(week_old)]).returncode == 0
    backup(database, backup_dir_2, RETENTION_DAYS="7")
    assert not week_old.exists()


def test_restore_refuses_unless_told_exactly_what_to_do(database: str, tmp_path: Path) -> None:
    seed(database, users=1)
    before = snapshot(database)
    dump = backup(database, tmp_path / "backups")
    not_gzip = tmp_path / "broken.sql.gz"
    not_gzip.write_text("DROP TABLE users;")
    env = {"DATABASE_URL": database}

    cases = [
        ([RESTORE], env, "usage"),
        ([RESTORE, "--yes"], env, "usage"),
        ([RESTORE, str(dump)], env, "--yes"),
        ([RESTORE, "--yes", str(dump)], {}, "DATABASE_URL"),
        ([RESTORE, "--yes", str(tmp_path / "missing.sql.gz")], env, "no such file"),
        ([RESTORE, "--yes", str(not_gzip)], env, "not a valid gzip"),
        ([RESTORE, "--force", str(dump)], env, "unknown option"),
    ]
    for args, case_env, message in cases:
        result = run(args, case_env)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
    assert snapshot(database) == before


def test_a_failing_restore_changes_nothing(database: str, tmp_path: Path) -> None:
    seed(database, users=2)
    before = snapshot(database)
    # A dump that breaks half-way: the tables are dropped first, then a statement fails.
    dump = backup(database, tmp_path / "backups")
    text = gzip.decompress(dump.read_bytes()).decode()
    broken = tmp_path / "broken.sql.gz"
    broken.write_bytes(gzip.compress((text + "\nSELECT no_such_function();\n").encode()))

    result = run([RESTORE, "--yes", str(broken)], {"DATABASE_URL": database})
    assert result.returncode != 0
    assert "rolled back" in result.stderr
    assert snapshot(database) == before
