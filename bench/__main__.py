"""`make bench`: the benchmark suite (see bench/suite.py and docs/BENCHMARKS.md)."""

from __future__ import annotations

from bench.suite import main

if __name__ == "__main__":
    raise SystemExit(main())
