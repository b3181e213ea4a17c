"""Helpers shared by the deployment tests: PromQL metric-name extraction, known metric names,
and the promtool binary."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The names the service promises (CONTRACT section 6 and the process collector).
SPEC_METRICS = frozenset(
    {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_request_duration_seconds_sum",
        "http_request_duration_seconds_count",
        "circuit_breaker_state",
        "messages_processed_total",
        "queue_depth",
        "db_pool_size",
        "db_pool_checked_out",
        "scheduler_last_tick_timestamp_seconds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    }
)
# Series other exporters provide: Prometheus itself, rabbitmq_prometheus, postgres_exporter.
EXTERNAL_METRICS = frozenset({"up", "rabbitmq_queue_messages", "pg_stat_database_numbackends"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier not glued to a preceding word/number (1e3, 5m) and not a function call.
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
    | {"group_left", "group_right"}
)


def metric_names(expr: str) -> frozenset[str]:
    """Metric names a PromQL expression selects (labels, functions and keywords removed)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return frozenset(name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS)


def exported_metric_names() -> frozenset[str]:
    """Every sample name the service's own /metrics can expose (our module + process metrics)."""
    from prometheus_client import REGISTRY

    import birthday_scheduler.infra.metrics  # noqa: F401  (registers the collectors)

    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def promtool() -> str:
    """Path of promtool; a missing binary fails the test (it is a required tool, never a skip)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install it with "
            "`apt-get install -y --no-install-recommends prometheus` (Debian/Ubuntu)"
        )
    return path
