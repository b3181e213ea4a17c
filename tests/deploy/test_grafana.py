"""deploy/grafana: provisioning and the five runbook dashboards, whose queries are valid PromQL
(checked by promtool) over metric names the service and its exporters really expose."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_promql import (
    EXTERNAL_METRICS,
    SPEC_METRICS,
    exported_metric_names,
    metric_names,
    promtool,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
# Runbook "Key Dashboards".
TITLES = {
    "Overview",
    "API Performance",
    "Worker Performance",
    "Database Performance",
    "Business Metrics",
}
# Runbook "Prometheus Queries": each appears verbatim in some panel.
RUNBOOK_QUERIES = {
    "rate(http_requests_total[5m])",
    'rate(http_requests_total{status=~"5.."}[5m]) / rate(http_requests_total[5m])',
    "histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[5m]))",
    'rabbitmq_queue_messages{queue="birthday_messages"}',
    'pg_stat_database_numbackends{datname="birthday_scheduler"}',
    "process_resident_memory_bytes / 1024 / 1024 / 1024",
    "circuit_breaker_state",
}
# What each dashboard must show (runbook: "Key Dashboards" descriptions).
REQUIRED_METRICS = {
    "Overview": {"http_requests_total", "circuit_breaker_state", "process_resident_memory_bytes"},
    "API Performance": {"http_requests_total", "http_request_duration_seconds_bucket"},
    "Worker Performance": {"messages_processed_total", "queue_depth", "circuit_breaker_state"},
    "Database Performance": {"db_pool_size", "db_pool_checked_out", "pg_stat_database_numbackends"},
    "Business Metrics": {"messages_processed_total"},
}
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        loaded[path.name] = json.loads(path.read_text())
    return loaded


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    document = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = document["datasources"]
    result: dict[str, Any] = source
    return result


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def test_the_five_runbook_dashboards_exist_with_unique_uids(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    titles = [d["title"] for d in dashboards.values()]
    uids = [d["uid"] for d in dashboards.values()]
    assert sorted(titles) == sorted(TITLES)
    assert len(set(uids)) == len(uids)
    assert all(uid and len(uid) <= 40 for uid in uids)  # Grafana's uid limit


def test_every_panel_queries_the_provisioned_prometheus(
    dashboards: dict[str, dict[str, Any]], datasource: dict[str, Any]
) -> None:
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"  # the compose service
    for name, dashboard in dashboards.items():
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(set(ids)) == len(ids), name
        for panel in panels(dashboard):
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            assert panel["datasource"]["uid"] == datasource["uid"], name
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"], name
                assert target["expr"].strip(), name


def test_panels_use_only_metrics_that_exist(dashboards: dict[str, dict[str, Any]]) -> None:
    known = exported_metric_names() | EXTERNAL_METRICS
    assert known >= SPEC_METRICS, "the service no longer exports a promised metric"
    for name, dashboard in dashboards.items():
        for expr in expressions(dashboard):
            used = metric_names(expr)
            assert used, f"{name}: no metric in {expr!r}"
            assert used <= known, f"{name}: unknown {sorted(used - known)} in {expr!r}"


def test_dashboards_show_what_the_runbook_promises(dashboards: dict[str, dict[str, Any]]) -> None:
    all_exprs = {expr for d in dashboards.values() for expr in expressions(d)}
    assert all_exprs >= RUNBOOK_QUERIES, RUNBOOK_QUERIES - all_exprs
    by_title = {d["title"]: d for d in dashboards.values()}
    for title, required in REQUIRED_METRICS.items():
        used = {m for expr in expressions(by_title[title]) for m in metric_names(expr)}
        assert required <= used, f"{title} misses {sorted(required - used)}"


def test_every_query_is_valid_promql(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    # promtool parses recording rules, so every panel query becomes one to be checked.
    exprs = sorted({expr for d in dashboards.values() for expr in expressions(d)})
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": e} for n, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_loads_the_dashboards_folder() -> None:
    document = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/birthday-scheduler.yml").read_text()
    )
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    # ... which is where docker-compose mounts deploy/grafana/dashboards.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in compose["services"]["grafana"]["volumes"]
    }
    assert (ROOT / mounts[DASHBOARDS_MOUNT]).resolve() == DASHBOARDS.resolve()
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == (
        GRAFANA / "provisioning"
    ).resolve()
