"""Acceptance: `make bench` still runs, on sizes small enough for CI (`python -m bench --small`).

Its speed goals are measured by `make bench`, not here: this run only proves that the suite
starts the real processes, measures every key with its ceiling, writes them all in the agreed
shape and leaves no database or vhost behind, so a refactor cannot leave `make bench` broken
until the next person needs the numbers.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from rabbit_vhost import rabbitmqctl
from support import PG_ADMIN_DSN, child_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "birthday-scheduler"
KEYS = {
    "api_post_users_rps": "req/s",
    "api_post_users_p99_ms": "ms",
    "api_get_user_rps": "req/s",
    "api_get_user_p99_ms": "ms",
    "api_alive_rps": "req/s",
    "scheduler_idle_tick_ms": "ms",
    "plan_100k_s": "s",
    "deliver_rps": "msg/s",
    "deliver_rps_100ms": "msg/s",
    "burst_10k_lateness_p99_s": "s",
    "import_rows_per_s": "rows/s",
    "rss_mb_max": "MB",
}
NO_CEILING = {"burst_10k_lateness_p99_s", "rss_mb_max"}


async def _databases() -> set[str]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database")
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


def _vhosts() -> set[str]:
    return set(rabbitmqctl("list_vhosts", "--no-table-headers").split())


def _has_import_command() -> bool:
    done = subprocess.run(
        [str(SCRIPT), "users", "import", "--help"], env=child_env(), capture_output=True,
        timeout=60, check=False,
    )  # fmt: skip
    return done.returncode == 0


@pytest.mark.timeout(360)
async def test_small_suite_writes_every_key_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "small.json"

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench", "--small", "--out", str(out)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=340, check=False,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == set(KEYS) | {"_meta"}
    assert results["_meta"]["profile"] == "small"
    assert results["_meta"]["failures"] == []
    for key in KEYS:
        assert key in completed.stdout  # the table names every key
    importable = _has_import_command()
    for key, unit in KEYS.items():
        entry = results[key]
        assert set(entry) >= {"value", "unit", "ceiling", "ratio", "target", "met"}, key
        assert entry["unit"] == unit, key
        if key == "import_rows_per_s" and not importable:
            assert entry["value"] is None, entry
            assert entry["detail"].startswith("not available"), entry
            continue
        if key == "import_rows_per_s":  # the real tables' floor explains the ratio
            assert "floor: the same rows prepared" in entry["detail"], entry
        assert isinstance(entry["value"], float), (key, entry)
        assert math.isfinite(entry["value"]), (key, entry)
        assert entry["value"] >= 0 if key == "burst_10k_lateness_p99_s" else entry["value"] > 0
        assert isinstance(entry["met"], bool), (key, entry)
        if key in NO_CEILING:
            assert entry["ceiling"] is None, (key, entry)
            assert entry["ratio"] is None, (key, entry)
        else:
            assert entry["ceiling"] > 0, (key, entry)
            assert entry["ratio"] == pytest.approx(entry["value"] / entry["ceiling"], rel=0.01)
    # What the run created, by name (other runs on this machine may use the same prefixes).
    created = [entry.split(" ", 1) for entry in results["_meta"]["created"]]
    databases = {name for kind, name in created if kind == "database"}
    vhosts = {name for kind, name in created if kind == "vhost"}
    assert all(name.startswith("bs_bench_") for name in databases), databases
    assert all(name.startswith("bench-") for name in vhosts), vhosts
    assert len(databases) >= 5, databases  # a template and one per group at least
    assert len(vhosts) >= 4, vhosts
    assert not databases & await _databases()
    assert not vhosts & _vhosts()


def test_code_option_makes_children_import_that_copy(tmp_path: Path) -> None:
    # `--code SRC` relies on PYTHONPATH preceding the venv's editable install.
    (tmp_path / "birthday_scheduler").mkdir()
    (tmp_path / "birthday_scheduler" / "__init__.py").write_text("")

    completed = subprocess.run(
        [
            sys.executable, "-c",
            "from pathlib import Path; from bench.services import Code; "
            f"print(Code(Path({str(tmp_path)!r})).package_file())",
        ],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    assert completed.stdout.strip() == str(tmp_path / "birthday_scheduler" / "__init__.py")


def test_compare_puts_runs_side_by_side_with_medians(tmp_path: Path) -> None:
    def run(name: str, rps: float, ceiling: float) -> str:
        path = tmp_path / f"{name}.json"
        entry = {"value": rps, "unit": "req/s", "ceiling": ceiling, "ratio": rps / ceiling}
        path.write_text(json.dumps({"api_alive_rps": entry, "_meta": {}}))
        return str(path)

    before = run("before", 100.0, 1000.0)
    after = ",".join((run("a1", 700.0, 1000.0), run("a2", 900.0, 1000.0), run("a3", 2.0, 1.0)))

    completed = subprocess.run(
        [sys.executable, "-m", "bench.compare", before, "--median", after],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    alive = next(line for line in completed.stdout.splitlines() if line.startswith("api_alive"))
    # The median value and the median ratio of the three runs, each on its own.
    assert alive.split()[:5] == ["api_alive_rps", "100", "(0.1x)", "700", "(0.9x)"]
    assert "import_rows_per_s" in completed.stdout  # every key has a row, n/a when missing
