"""Run every benchmark in bench/ (`make bench`), each in its own process, then summarise.

    .venv/bin/python -m bench [NAME ...]

Each module ``bench/<name>.py`` is run as ``python -m bench.<name>`` with its default
arguments and prints its own table; a module that exits non-zero (a missed target, a missing
service) is reported as such and the run exits non-zero. Benchmarks need the local PostgreSQL
and RabbitMQ; they are not part of `make test`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(
        path.stem
        for path in HERE.glob("*.py")
        if not path.stem.startswith("_") and path.stem != "conftest"
    )


def main(argv: list[str]) -> int:
    available = discover()
    unknown = [name for name in argv if name not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    results: list[tuple[str, int, float]] = []
    for name in argv or available:
        print(f"=== {name} ===", flush=True)
        started = time.perf_counter()
        # The repository root as working directory, so relative paths and `-m bench.x` resolve.
        completed = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent, check=False
        )
        results.append((name, completed.returncode, time.perf_counter() - started))
        print(flush=True)
    width = max(len("benchmark"), *(len(name) for name, _, _ in results))
    print("=== summary ===")
    print(f"{'benchmark'.ljust(width)}  {'result':<13}  {'wall':>8}")
    print(f"{'-' * width}  {'-' * 13}  {'-' * 8}")
    for name, code, seconds in results:
        outcome = "ok" if code == 0 else f"exit {code}"
        print(f"{name.ljust(width)}  {outcome:<13}  {seconds:>7.1f}s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
