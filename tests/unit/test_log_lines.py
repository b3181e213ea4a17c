"""Log lines as a process writes them to stdout: this service's structlog events (rendered once,
written straight to the handler's stream) and stdlib loggers' records (through the formatter)
carry the same keys, runbook levels and masking; a crash loses no line already logged."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from birthday_scheduler.infra.logging import _utc_now_iso

TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

PROGRAM = """
import logging, os, sys, uuid, warnings
import structlog
from birthday_scheduler.infra.logging import configure_logging, get_logger

configure_logging("info", sys.argv[1])
log = get_logger("birthday_scheduler.http")
lib = logging.getLogger("some.library")
structlog.contextvars.bind_contextvars(request_id="trace-ada@example.com")
log.debug("below.level")
log.info("http.request", method="GET", status=200, duration_ms=1.5, client=None)
log.warning("user.rejected", detail="bob@example.org is taken", attempt=2)
log.critical("process.crashed")
log.info("odd.values", id=uuid.UUID(int=1), ratio=float("nan"), big=2**70, name="Zoë")
try:
    raise ValueError("Key (lower(email))=(dave@example.com) already exists.")
except ValueError:
    log.exception("user.insert_failed")
    lib.exception("insert failed")
lib.info("sending to %s", "carol@example.net")
lib.warning("queued", extra={"recipient": "erin@example.com"})
warnings.warn("careful")
structlog.contextvars.clear_contextvars()
log.info("last.words")
os._exit(3)  # no interpreter shutdown, no flush at exit: every line must already be out
"""


def run(fmt: str) -> subprocess.CompletedProcess[str]:
    # A buffered stdout (a pipe, no PYTHONUNBUFFERED) shows whether each line is flushed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM), fmt],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_json_lines_from_structlog_and_stdlib_share_keys_levels_and_masking() -> None:
    done = run("json")
    assert done.returncode == 3, done.stderr
    assert done.stderr == ""  # warnings too are log lines on stdout
    assert "@example." not in done.stdout
    entries: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["logger"], e["level"], e["event"].split(":")[0]) for e in entries] == [
        ("birthday_scheduler.http", "info", "http.request"),
        ("birthday_scheduler.http", "warn", "user.rejected"),
        ("birthday_scheduler.http", "fatal", "process.crashed"),
        ("birthday_scheduler.http", "info", "odd.values"),
        ("birthday_scheduler.http", "error", "user.insert_failed"),
        ("some.library", "error", "insert failed"),
        ("some.library", "info", "sending to <redacted-email>"),
        ("some.library", "warn", "queued"),
        ("py.warnings", "warn", entries[8]["event"].split(":")[0]),
        ("birthday_scheduler.http", "info", "last.words"),
    ]
    for entry in entries:
        assert TIME_RE.fullmatch(entry["time"]), entry
        assert list(entry)[-1] == "event"
    for entry in entries[:-1]:
        # A caller-supplied request id is masked like any other value.
        assert entry["request_id"] == "<redacted-email>", entry
    assert "request_id" not in entries[-1]

    request = entries[0]
    assert list(request) == [
        "method",
        "status",
        "duration_ms",
        "client",
        "request_id",
        "level",
        "logger",
        "time",
        "event",
    ]
    assert (request["method"], request["status"], request["duration_ms"]) == ("GET", 200, 1.5)
    assert request["client"] is None
    assert entries[1]["detail"] == "<redacted-email> is taken"
    assert entries[1]["attempt"] == 2
    # Values beyond plain JSON render as they always have (repr, NaN, big ints, escapes).
    odd = entries[3]
    assert odd["id"] == "UUID('00000000-0000-0000-0000-000000000001')"
    assert odd["ratio"] != odd["ratio"]  # NaN
    assert odd["big"] == 2**70
    assert odd["name"] == "Zoë"
    for entry in entries[4:6]:
        assert "ValueError: Key <redacted-email> already exists." in entry["exception"]
        assert list(entry)[-2:] == ["exception", "event"]
    assert entries[7]["recipient"] == "<redacted-email>"
    assert "UserWarning: careful" in entries[8]["event"]


def test_console_format_renders_both_paths_masked() -> None:
    done = run("console")
    assert done.returncode == 3, done.stderr
    assert "@example." not in done.stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    for event in ("http.request", "user.rejected", "user.insert_failed", "insert failed"):
        assert event in out
    assert "detail='<redacted-email> is taken'" in out
    assert "request_id=<redacted-email>" in out
    assert "ValueError: Key <redacted-email> already exists." in out
    assert "last.words" in out.splitlines()[-1]
    assert "below.level" not in out


def test_time_is_what_datetime_isoformat_gives_with_z() -> None:
    instants_ns = [
        0,
        999,  # under a microsecond: no fraction, as isoformat leaves it out
        1_764_688_800_000_000_000,
        1_764_688_800_000_001_999,
        1_764_688_799_999_999_999,  # the last microsecond of a second, then the next second
        1_764_688_800_123_456_789,
        1_764_688_800_123_456_789,  # the same second again: the cached date and time
    ]
    for now_ns in instants_ns:
        seconds, nanos = divmod(now_ns, 1_000_000_000)
        expected = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)
        assert _utc_now_iso(now_ns) == expected.isoformat().replace("+00:00", "Z")
        assert TIME_RE.fullmatch(_utc_now_iso(now_ns))
