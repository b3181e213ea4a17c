"""The suite's results: one entry per key, its JSON file and its table (pure, no I/O but files).

Each key is ``{"value", "unit", "ceiling", "ratio", "target", "met", "detail"}``: the ceiling is
what the same work costs without the service's code, measured in the same run on the same
machine (absolute numbers drift on a shared machine, ratios hold); ``ratio`` is value/ceiling.
A key the code under measurement cannot produce (an older version without the command) has
every number null and says why in ``detail``.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEYS = (
    "api_post_users_rps",
    "api_post_users_p99_ms",
    "api_get_user_rps",
    "api_get_user_p99_ms",
    "api_alive_rps",
    "scheduler_idle_tick_ms",
    "plan_100k_s",
    "deliver_rps",
    "deliver_rps_100ms",
    "burst_10k_lateness_p99_s",
    "import_rows_per_s",
    "rss_mb_max",
)


@dataclass(frozen=True)
class Target:
    """`on` ("value" or "ratio") compared with `op` (">=" or "<=") to `bound`."""

    on: str
    op: str
    bound: float

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None:
            return None
        compare = operator.ge if self.op == ">=" else operator.le
        return bool(compare(subject, self.bound))

    def __str__(self) -> str:
        return f"{self.on} {self.op} {self.bound:g}"


# The targets, per key.
TARGETS: dict[str, Target] = {
    "api_post_users_rps": Target("ratio", ">=", 0.8),
    "api_post_users_p99_ms": Target("value", "<=", 50),
    "api_get_user_rps": Target("ratio", ">=", 0.8),
    "api_get_user_p99_ms": Target("value", "<=", 30),
    "api_alive_rps": Target("ratio", ">=", 0.8),
    "scheduler_idle_tick_ms": Target("value", "<=", 5),
    "plan_100k_s": Target("ratio", "<=", 1.4),
    "deliver_rps": Target("value", ">=", 2000),
    "deliver_rps_100ms": Target("ratio", ">=", 0.8),
    "burst_10k_lateness_p99_s": Target("value", "<=", 10),
    "import_rows_per_s": Target("ratio", ">=", 0.5),
    "rss_mb_max": Target("value", "<=", 150),
}


@dataclass(frozen=True)
class Result:
    key: str
    value: float | None
    unit: str
    ceiling: float | None = None
    detail: str = ""
    failed: str = ""  # a condition of the key broken whatever its number (a message sent early)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ceiling:
            return None
        return self.value / self.ceiling

    @property
    def met(self) -> bool | None:
        if self.failed:
            return False
        return TARGETS[self.key].met(self.value, self.ratio)

    def as_json(self) -> dict[str, Any]:
        return {
            "value": _round(self.value),
            "unit": self.unit,
            "ceiling": _round(self.ceiling),
            "ratio": _round(self.ratio),
            "target": str(TARGETS[self.key]),
            "met": self.met,
            "detail": "; ".join(filter(None, (self.failed, self.detail))),
        }


def unavailable(key: str, unit: str, why: str) -> Result:
    return Result(key, None, unit, None, f"not available: {why}")


def _round(number: float | None) -> float | None:
    return None if number is None else float(f"{number:.4g}")


def write(path: Path, results: dict[str, Result], meta: dict[str, Any]) -> None:
    document: dict[str, Any] = {key: results[key].as_json() for key in KEYS if key in results}
    document["_meta"] = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _cell(number: float | None) -> str:
    if number is None:
        return "-"
    if abs(number) >= 100:
        return f"{number:,.0f}"
    return f"{number:.3g}"


def table(results: dict[str, Result]) -> str:
    headers = ("key", "value", "unit", "ceiling", "ratio", "target", "met")
    rows = []
    for key in KEYS:
        if key not in results:
            continue
        result = results[key]
        met = {True: "yes", False: "NO", None: "-"}[result.met]
        rows.append(
            (
                key,
                _cell(result.value),
                result.unit,
                _cell(result.ceiling),
                _cell(result.ratio),
                str(TARGETS[key]),
                met,
            )
        )
    widths = [max(len(line[i]) for line in (headers, *rows)) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
