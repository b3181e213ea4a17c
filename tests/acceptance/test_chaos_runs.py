"""Acceptance: the chaos run behind `make chaos`, at its small size, in the suite.

`python -m chaos --small` runs the real API, two schedulers, two workers and the simulator as
processes on this machine's PostgreSQL and RabbitMQ, makes 200 messages due within the first
minutes, SIGKILLs workers and a scheduler, restarts the RabbitMQ node and PostgreSQL once each,
PATCHes users whose message is in flight, and then checks the ledger against the simulator's
log. Nothing may be lost or sent twice, and the run must leave no database or vhost behind.
"""

from __future__ import annotations

import ast
import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from rabbit_vhost import rabbitmqctl
from support import PG_ADMIN_DSN, child_env

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"chaos: messages=(?P<messages>\d+) faults=(?P<faults>\d+) lost=(?P<lost>\d+) "
    r"duplicates=(?P<duplicates>\d+) late_p99_s=(?P<late>\d+\.\d)"
)
FAULTS = re.compile(r"faults (\{.*?\}) outages_s")
MADE = re.compile(r"database (?P<database>bs_chaos_\w+), vhost (?P<vhost>chaos-\w+)")


async def _database_exists(name: str) -> bool:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def _vhost_exists(name: str) -> bool:
    return name in rabbitmqctl("list_vhosts").split()


def _run_small() -> tuple[int, str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "chaos", "--small"],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the run then stops its processes and drops what it made.
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
        raise AssertionError(f"chaos --small did not finish in 420 s:\n{err[-4000:]}") from None
    return process.returncode, out, err


@pytest.mark.timeout(600)
def test_small_chaos_run_loses_nothing_and_sends_nothing_twice() -> None:
    code, out, err = _run_small()

    lines = out.splitlines()
    assert len(lines) == 1, f"stdout: {out!r}\nstderr: {err[-4000:]}"
    summary = LINE.fullmatch(lines[0])
    assert summary is not None, lines[0]
    assert int(summary["messages"]) == 200
    assert (summary["lost"], summary["duplicates"]) == ("0", "0"), err[-4000:]
    assert code == 0, err[-4000:]  # nor early, planned twice, or sent to no one
    faults = FAULTS.search(err)
    assert faults is not None, err[-4000:]
    injected = ast.literal_eval(faults[1])
    assert injected["restart_rabbitmq"] == injected["restart_postgres"] == 1
    assert injected["kill_worker"] >= 2
    assert injected["patch_in_flight"] >= 10
    assert int(summary["faults"]) == sum(injected.values())
    # What it made is gone (by name: another chaos run may be going on beside this one).
    made = MADE.search(err)
    assert made is not None, err[-4000:]
    assert not asyncio.run(_database_exists(made["database"]))
    assert not _vhost_exists(made["vhost"])
