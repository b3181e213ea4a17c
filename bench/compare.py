"""Results side by side: the BEFORE and AFTER columns of a change (or several runs of each).

    .venv/bin/python -m bench.compare bench/results/before.json bench/results/latest.json

One column per file (value, and ratio to its own run's ceiling in brackets); with several
files for one side, pass `--median A.json,B.json` groups instead: each group becomes one
column of the medians of its runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results import KEYS, TARGETS


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _cell(value: float | None, ratio: float | None) -> str:
    if value is None:
        return "n/a"
    shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{shown} ({ratio:.2g}x)" if ratio is not None else shown


def column(runs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Per key: the median value and median ratio of `runs`."""
    cells = {}
    for key in KEYS:
        entries = [run[key] for run in runs if key in run]
        value = _median([e["value"] for e in entries])
        ratio = _median([e["ratio"] for e in entries])
        cells[key] = _cell(value, ratio)
    return cells


def render(headers: Sequence[str], columns: Sequence[dict[str, str]]) -> str:
    rows = [("key", *headers, "target")]
    rows += [(key, *(c[key] for c in columns), str(TARGETS[key])) for key in KEYS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("files", nargs="*", type=Path, help="one column per file")
    parser.add_argument(
        "--median", action="append", default=[], help="comma-separated files: one column"
    )
    args = parser.parse_args(argv)
    groups = [[path] for path in args.files] + [
        [Path(p) for p in group.split(",")] for group in args.median
    ]
    if not groups:
        parser.error("give result files")
    headers = [",".join(p.stem for p in group) for group in groups]
    columns = [column([json.loads(p.read_text()) for p in group]) for group in groups]
    print(render(headers, columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
