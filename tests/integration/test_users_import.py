"""`birthday-scheduler users import`: rows validated and planned exactly as POST /users would,
rejected rows reported without personal data, re-runs and repeated emails never duplicated.
On PostgreSQL (COPY path) and on SQLite (batched inserts)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.messages.models import MessageSchedule
from birthday_scheduler.users import import_rows, importer
from birthday_scheduler.users.models import User
from support import child_env, user_body

SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
HEADER = [
    "firstName",
    "lastName",
    "email",
    "dateOfBirth",
    "timezone",
    "timezoneOffset",
    "anniversaryDate",
    "sendLocalTime",
    "notifications",
]
# (CSV cells by column, the same user as a POST /users body minus its email)
VARIETY: list[tuple[dict[str, str], dict[str, Any]]] = [
    ({"timezone": "Europe/Paris"}, {"timezone": "Europe/Paris"}),
    ({"timezoneOffset": "330"}, {"timezoneOffset": 330}),
    ({"timezoneOffset": "-03:00"}, {"timezoneOffset": "-03:00"}),
    (
        {"timezone": "Asia/Tokyo", "anniversaryDate": "2011-06-15", "sendLocalTime": "07:30"},
        {"timezone": "Asia/Tokyo", "anniversaryDate": "2011-06-15", "sendLocalTime": "07:30"},
    ),
    (
        {
            "timezone": "America/New_York",
            "anniversaryDate": "2001-12-01",
            "notifications": '{"anniversary": false}',
        },
        {
            "timezone": "America/New_York",
            "anniversaryDate": "2001-12-01",
            "notifications": {"anniversary": False},
        },
    ),
    (
        {"timezone": "Australia/Sydney", "dateOfBirth": "1992-02-29"},
        {"timezone": "Australia/Sydney", "dateOfBirth": "1992-02-29"},
    ),
    (
        {"timezone": "UTC", "dateOfBirth": "1980-06-15T23:30:00+02:00"},
        {"timezone": "UTC", "dateOfBirth": "1980-06-15T23:30:00+02:00"},
    ),
]


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(name, "") for name in header])
    return path


def row(email: str, **cells: str) -> dict[str, str]:
    base = {"firstName": "Ada", "lastName": "Lovelace", "email": email, "dateOfBirth": "1990-07-01"}
    if "timezoneOffset" not in cells and "timezone" not in cells:
        base["timezone"] = "UTC"
    return base | cells


async def run_import(
    resources: runtime.Resources, source: Path, report: Path
) -> importer.ImportSummary:
    return await importer.import_file(
        resources.engine,
        resources.sessions,
        resources.clock,
        resources.planning_policy().send_time,
        source,
        report,
    )


def read_report(report: Path) -> list[list[str]]:
    with report.open(newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["line", "field", "reason"]
    return lines[1:]


async def users_by_email(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/users", params=params)).json()
        found.update({user["email"]: user for user in page["data"]})
        cursor = page["nextCursor"]
        if cursor is None:
            return found


async def counts(resources: runtime.Resources) -> tuple[int, int]:
    async with resources.sessions() as session:
        users = await session.scalar(
            select(func.count()).select_from(User).where(User.deleted_at.is_(None))
        )
        schedules = await session.scalar(select(func.count()).select_from(MessageSchedule))
    return int(users or 0), int(schedules or 0)


PLAN_FIELDS = (
    "firstName",
    "lastName",
    "dateOfBirth",
    "timezone",
    "timezoneOffset",
    "anniversaryDate",
    "sendLocalTime",
    "notifications",
    "nextMessages",
    "nextMessageAt",
    "createdAt",
)


async def test_imported_users_are_planned_exactly_as_post_plans_them(
    resources: runtime.Resources, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    rows = [row(f"import-{i}@example.com", **cells) for i, (cells, _) in enumerate(VARIETY)]
    summary = await run_import(resources, write_csv(tmp_path / "u.csv", rows), tmp_path / "r.csv")
    assert (summary.imported, summary.existing, summary.rejected) == (len(VARIETY), 0, 0)
    for i, (_, body) in enumerate(VARIETY):
        created = await client.post(
            "/users",
            json=user_body(**({"email": f"api-{i}@example.com", "timezoneOffset": ...} | body)),
        )
        assert created.status_code == 201, created.text
    users = await users_by_email(client)
    for i in range(len(VARIETY)):
        imported, posted = users[f"import-{i}@example.com"], users[f"api-{i}@example.com"]
        assert imported["nextMessages"], imported  # every user has at least a birthday planned
        assert {k: imported[k] for k in PLAN_FIELDS} == {k: posted[k] for k in PLAN_FIELDS}
    assert read_report(tmp_path / "r.csv") == []


async def test_rejected_rows_are_reported_by_line_and_field_and_not_imported(
    resources: runtime.Resources, tmp_path: Path
) -> None:
    rows = [
        row("good-1@example.com"),
        row("grace.hopper.example.com", firstName="Grace", lastName="Hopper"),  # line 3
        row("future@example.com", dateOfBirth="2999-01-01"),
        row("nozone@example.com", timezone=""),
        row("both@example.com", timezone="UTC", timezoneOffset="60"),
        row("badzone@example.com", timezone="Mars/Olympus"),
        row("noname@example.com", firstName=""),
        row("notif@example.com", notifications="{nope"),
        row("good-2@example.com"),
    ]
    source = write_csv(tmp_path / "u.csv", rows)
    with source.open("a") as out:
        out.write("Only,Three,cells\n")  # line 11
    summary = await run_import(resources, source, tmp_path / "r.csv")
    assert (summary.imported, summary.existing, summary.rejected) == (2, 0, 8)
    report = read_report(tmp_path / "r.csv")
    assert [(line, field) for line, field, _ in report] == [
        ("3", "email"),
        ("4", "dateOfBirth"),
        ("5", "row"),
        ("6", "row"),
        ("7", "timezone"),
        ("8", "firstName"),
        ("9", "notifications"),
        ("11", "row"),
    ]
    reasons = dict(((line, field), reason) for line, field, reason in report)
    assert reasons[("4", "dateOfBirth")] == "must not be in the future"
    assert reasons[("5", "row")] == "give exactly one of timezoneOffset or timezone"
    assert reasons[("11", "row")] == "has 3 cells; the header has 9"
    text = (tmp_path / "r.csv").read_text()
    for personal in ("Grace", "Hopper", "grace.hopper", "example.com"):
        assert personal not in text
    assert await counts(resources) == (2, 2)


async def test_rerun_and_repeated_emails_are_reported_as_present_not_duplicated(
    resources: runtime.Resources,
    client: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small chunks: repeats within a chunk and across chunks (an earlier chunk committed).
    monkeypatch.setattr(importer, "CHUNK_ROWS", 3)
    await client.post("/users", json=user_body(email="Taken@Example.com"))
    freed = (await client.post("/users", json=user_body(email="freed@example.com"))).json()
    assert (await client.delete(f"/users/{freed['id']}")).status_code == 204
    rows = [
        row("a@example.com"),
        row("A@EXAMPLE.COM"),  # same chunk, other case
        row("taken@example.com"),  # a live user has it
        row("b@example.com"),
        row("FREED@example.com"),  # its user was deleted: the address is free again
        row("c@example.com"),
        row("B@example.com"),  # next chunk
        row("a@Example.com"),
    ]
    source = write_csv(tmp_path / "u.csv", rows)
    first = await run_import(resources, source, tmp_path / "r.csv")
    assert (first.imported, first.existing, first.rejected) == (4, 4, 0)
    assert await counts(resources) == (5, 5)
    again = await run_import(resources, source, tmp_path / "r.csv")
    assert (again.imported, again.existing, again.rejected) == (0, 8, 0)
    assert await counts(resources) == (5, 5)
    emails = set(await users_by_email(client))
    assert emails == {
        "Taken@example.com",
        "a@example.com",
        "b@example.com",
        "FREED@example.com",
        "c@example.com",
    }


def cli(
    database_url: str | None, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = child_env(DATABASE_URL=database_url) if database_url else child_env()
    return subprocess.run(
        [SCRIPT, "users", "import", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exit_codes_summary_and_report(database_url: str, tmp_path: Path) -> None:
    clean = write_csv(tmp_path / "clean.csv", [row("one@example.com"), row("two@example.com")])
    done = cli(database_url, str(clean))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 2, already present 0, rejected 0;")
    assert read_report(tmp_path / "clean.csv.rejected.csv") == []

    again = cli(database_url, str(clean))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("imported 0, already present 2, rejected 0;")

    mixed = write_csv(tmp_path / "mixed.csv", [row("three@example.com"), row("nope")])
    report = tmp_path / "out" / "rejected.csv"
    report.parent.mkdir()
    partly = cli(database_url, str(mixed), "--report", str(report))
    assert partly.returncode == 1, partly.stderr
    assert partly.stdout.startswith("imported 1, already present 0, rejected 1 (report: ")
    assert [line for line, _, _ in read_report(report)] == ["3"]


def test_cli_on_the_embedded_default_of_a_fresh_checkout(tmp_path: Path) -> None:
    """No DATABASE_URL: the embedded SQLite under ./var/, migrated on first use as `all` does."""
    source = write_csv(tmp_path / "u.csv", [row("one@example.com")])
    done = cli(None, str(source), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 1, already present 0, rejected 0;")
    again = cli(None, str(source), cwd=tmp_path)
    assert again.stdout.startswith("imported 0, already present 1, rejected 0;")
    assert list((tmp_path / "var").iterdir())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("firstName,lastName,email,dateOfBirth,timezone,shoeSize\n", "unknown column 'shoeSize'"),
        ("firstName,lastName,email,timezone\n", "lacks the required column 'dateOfBirth'"),
        ("firstName,lastName,email,dateOfBirth\n", "needs a timezone or a timezoneOffset"),
        ("", "the first line must be a header"),
        (None, "cannot read"),
    ],
)
def test_cli_bad_file_exits_2_with_one_line(
    sqlite_database_url: str, tmp_path: Path, content: str | None, expected: str
) -> None:
    source = tmp_path / "u.csv"
    if content is not None:
        source.write_text(content + "Ada,Lovelace,ada@example.com,1990-07-01,UTC\n" * bool(content))
    result = cli(sqlite_database_url, str(source))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("birthday-scheduler: ")
    assert expected in lines[0]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_email_taken_after_the_look_up_is_skipped_not_duplicated(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL's fast path looks the chunk's emails up, then COPYs; a writer may take one in
    between. Simulated by a look-up that finds nothing: the COPY's unique violation sends the
    chunk through the staging table, which skips the taken email."""
    await client.post("/users", json=user_body(email="raced@example.com"))
    monkeypatch.setattr(
        importer,
        "_LIVE_EMAILS",
        "SELECT lower(email) FROM users WHERE false AND $1::text[] IS NOT NULL",
    )
    source = write_csv(tmp_path / "u.csv", [row("fresh@example.com"), row("RACED@example.com")])
    summary = await run_import(resources, source, tmp_path / "r.csv")
    assert (summary.imported, summary.existing, summary.rejected) == (1, 1, 0)
    assert await counts(resources) == (2, 2)


async def test_an_interrupted_import_keeps_whole_chunks_and_a_rerun_finishes_it(
    resources: runtime.Resources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    source = write_csv(tmp_path / "u.csv", [row(f"user-{i}@example.com") for i in range(5)])
    prepare = import_rows.prepare_chunk
    calls = 0

    def dies_on_the_third_chunk(*args: Any) -> import_rows.PreparedChunk:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("killed")
        return prepare(*args)

    monkeypatch.setattr(import_rows, "prepare_chunk", dies_on_the_third_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        await run_import(resources, source, tmp_path / "r.csv")
    assert await counts(resources) == (4, 4)  # two whole chunks, each user with its schedule
    monkeypatch.setattr(import_rows, "prepare_chunk", prepare)
    summary = await run_import(resources, source, tmp_path / "r.csv")
    assert (summary.imported, summary.existing, summary.rejected) == (1, 4, 0)
    assert await counts(resources) == (5, 5)
