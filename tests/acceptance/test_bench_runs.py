"""Acceptance: the benchmarks behind `make bench` still run, on sizes small enough for CI.

Their speed goals are measured by `make bench`, not here: these runs only prove that each
benchmark builds its data, exercises the code paths it reports on (PostgreSQL, RabbitMQ, the
first repository version it compares against) and prints every row, so a refactor cannot
leave `make bench` broken until the next person needs the numbers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from support import PG_ADMIN_DSN, child_env

ROOT = Path(__file__).resolve().parents[2]


def _run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def _bench_databases() -> set[str]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'bs_bench_%'")
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


async def test_scheduler_bench_reports_every_measure_and_drops_its_databases() -> None:
    before = await _bench_databases()

    completed = _run_bench(
        "bench.scheduler_bench", "--users", "3000", "--due", "1000", "--ticks", "5",
        "--compare", "300",
    )  # fmt: skip

    # 1 is a missed speed target, which tiny sizes on a busy machine may well report.
    assert completed.returncode in (0, 1), completed.stderr
    for measure in (
        "idle tick, 3,000 users, median",
        "plan 1,000 due (one tick)",
        "plan 1,000 due, published to RabbitMQ",
        "plan 300, first repository",
        "plan 300, current repository",
        "speed-up",
    ):
        assert measure in completed.stdout, completed.stdout
    assert await _bench_databases() == before


def test_broker_publish_bench_counts_what_it_published() -> None:
    completed = _run_bench("bench.broker_publish", "400")

    assert completed.returncode == 0, completed.stderr
    assert "messages:             400" in completed.stdout
    assert "pipelined confirms:" in completed.stdout
