"""The benchmark suite behind `make bench`: one table, one JSON file.

    .venv/bin/python -m bench [--small] [--code SRC] [--name NAME | --out FILE] [--only GROUP]

Runs every group on the local PostgreSQL and RabbitMQ with real service processes, each group
in databases (bs_bench_*) and vhosts (bench-*) of its own, all dropped at the end whatever
happens; prints the table and writes bench/results/<name>.json (latest.json by default,
before.json with --code). `--code SRC` runs every service process and in-process measurement
with PYTHONPATH=SRC (another copy of the package, e.g. /work/before/src); the bench code stays
this one. `--small` runs tiny sizes (about a minute): it proves the suite runs, not the speed.
A group that fails is reported with its keys null and the run exits 1; missed targets are
shown in the table (met: NO) and do not change the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency wherever it installs
    uvloop = None  # type: ignore[assignment]

from bench import api_load, delivery, import_csv, results, scheduler
from bench.context import FULL, SMALL, Context
from bench.results import Result, unavailable
from bench.services import ROOT, Code, Scope, Services

T = TypeVar("T")
RESULTS_DIR = ROOT / "bench" / "results"
Group = Callable[[Context], Awaitable[dict[str, Result]]]
GROUPS: dict[str, tuple[Group, tuple[tuple[str, str], ...]]] = {
    "api": (
        api_load.run,
        (
            ("api_post_users_rps", "req/s"),
            ("api_post_users_p99_ms", "ms"),
            ("api_get_user_rps", "req/s"),
            ("api_get_user_p99_ms", "ms"),
            ("api_alive_rps", "req/s"),
        ),
    ),
    "scheduler": (scheduler.run, (("scheduler_idle_tick_ms", "ms"), ("plan_100k_s", "s"))),
    "delivery": (
        delivery.run,
        (
            ("deliver_rps", "msg/s"),
            ("deliver_rps_100ms", "msg/s"),
            ("burst_10k_lateness_p99_s", "s"),
        ),
    ),
    "import": (import_csv.run, (("import_rows_per_s", "rows/s"),)),
}


def _cancel_on_signals() -> None:
    """SIGINT or SIGTERM cancels the run once, where it awaits; its cleanup then runs whole
    (a second signal does not cut it short)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def cancel() -> None:
        print("bench: stopping: processes, databases and vhosts are cleaned up", file=sys.stderr)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: None)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, cancel)


def eventloop_run(main: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(main) if uvloop is not None else asyncio.run(main)


def _git_head(path: Path) -> str:
    """The commit `path` is checked out at, "+changes" when it has uncommitted changes."""
    head = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not head:
        return "unknown"
    changes = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no", "--", "."],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head}+changes" if changes else head


async def run(ctx: Context, groups: Sequence[str]) -> tuple[dict[str, Result], list[str]]:
    _cancel_on_signals()
    found: dict[str, Result] = {}
    failures: list[str] = []
    try:
        for group in groups:
            job, keys = GROUPS[group]
            started = time.perf_counter()
            print(f"bench: {group} ...", file=sys.stderr, flush=True)
            try:
                found.update(await job(ctx))
            except Exception as exc:  # one group's failure must not hide the others' numbers
                traceback.print_exc()
                failures.append(f"{group}: {exc}")
                for key, unit in keys:
                    found[key] = Result(key, None, unit, None, f"failed: {exc}"[:300])
            finally:
                ctx.services.stop_all()
            print(f"bench: {group} {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        ctx.services.stop_all()
        failures += await ctx.scope.close()
    peaks = ctx.services.peaks
    if peaks:
        worst = max(peaks, key=lambda name: peaks[name])
        listed = ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(peaks.items()))
        found["rss_mb_max"] = Result(
            "rss_mb_max", peaks[worst], "MB", None, f"{worst}; VmHWM per process (MB): {listed}"
        )
    else:
        found["rss_mb_max"] = unavailable("rss_mb_max", "MB", "no service process ran")
    return found, failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (about a minute)")
    parser.add_argument("--code", type=Path, help="the package's src/ to measure instead")
    parser.add_argument("--name", help="results/<name>.json (default latest, or before)")
    parser.add_argument("--out", type=Path, help="write the JSON here instead")
    parser.add_argument("--only", action="append", choices=sorted(GROUPS), help="repeatable")
    parser.add_argument("--api-seconds", type=float, help="duration of each wrk run")
    args = parser.parse_args(argv)

    profile = SMALL if args.small else FULL
    if args.api_seconds:
        from dataclasses import replace

        profile = replace(profile, api_seconds=args.api_seconds)
    code = Code(args.code.resolve() if args.code else None)
    out = args.out or RESULTS_DIR / f"{args.name or ('before' if args.code else 'latest')}.json"
    package = code.package_file()
    if code.src is not None and not package.startswith(str(code.src)):
        print(f"bench: PYTHONPATH={code.src} does not win: children import {package}")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    ctx = Context(profile, code, Scope(), Services(code, workdir), workdir)
    started, started_at = time.perf_counter(), datetime.now(UTC)
    revisions = {
        "code_revision": _git_head(code.src or ROOT / "src"),
        "bench_revision": _git_head(ROOT / "bench"),
    }
    groups = args.only or list(GROUPS)
    try:
        # The service's loop (uvloop): the broker ceilings run in this process.
        found, failures = eventloop_run(run(ctx, groups))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; databases, vhosts and processes cleaned up", file=sys.stderr)
        return 130
    wall = time.perf_counter() - started
    meta = {
        "profile": profile.name,
        "code": package,
        **revisions,  # at the start of the run
        "started": started_at.isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "cpus": os.cpu_count(),
        "groups": groups,
        "failures": failures,
        "created": ctx.scope.created,  # all dropped again
    }
    results.write(out, found, meta)
    print(results.table(found))
    print(f"\ncode: {package}  profile: {profile.name}  wall: {wall:.0f} s  written: {out}")
    if failures:
        print("failures:\n  " + "\n  ".join(failures))
        print(f"service logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0
