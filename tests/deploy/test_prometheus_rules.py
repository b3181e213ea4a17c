"""deploy/prometheus: promtool validates the config and rules and runs the alert unit tests;
the rules cover the runbook's Key Metrics table and named alerts with known metric names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_promql import EXTERNAL_METRICS, exported_metric_names, metric_names, promtool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
# Runbook "Key Metrics" rows: each has a warning and a critical rule.
KEY_METRIC_ALERTS = {
    "HighRequestRate",
    "HighErrorRate",
    "HighP99Latency",
    "HighQueueDepth",
    "DatabasePoolSaturation",
    "HighMemoryUsage",
}
# Alerts the runbook names, plus the scheduler watchdog.
NAMED_ALERTS = {
    "HighQueueDepth",
    "CircuitBreakerOpen",
    "WorkerCrashRecovery",
    "ServiceDown",
    "SchedulerStalled",
}
# Thresholds from the runbook table, found in each rule's expression.
THRESHOLDS = {
    ("HighRequestRate", "warning"): "> 200",
    ("HighRequestRate", "critical"): "> 500",
    ("HighErrorRate", "warning"): "> 0.05",
    ("HighErrorRate", "critical"): "> 0.10",
    ("HighP99Latency", "warning"): "> 1",
    ("HighP99Latency", "critical"): "> 3",
    ("HighQueueDepth", "warning"): "> 1000",
    ("HighQueueDepth", "critical"): "> 5000",
    ("DatabasePoolSaturation", "warning"): "> 0.8",
    ("DatabasePoolSaturation", "critical"): "> 0.9",
    ("HighMemoryUsage", "warning"): "> 1.5 * 1024 * 1024 * 1024",
    ("HighMemoryUsage", "critical"): "> 2 * 1024 * 1024 * 1024",
}


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def unit_tests() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    return document


def test_promtool_accepts_the_config() -> None:
    run_promtool("check", "config", "deploy/prometheus/prometheus.yml")


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", "deploy/prometheus/alerts.yml")
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    assert "SUCCESS" in result.stdout


def test_config_scrapes_every_process_and_loads_the_alerts() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["api"] == ["api:8000"]
    assert targets["worker"] == ["worker:9100"]
    assert targets["scheduler"] == ["scheduler:9100"]
    assert targets["rabbitmq"] == ["rabbitmq:15692"]
    rabbitmq = next(j for j in config["scrape_configs"] if j["job_name"] == "rabbitmq")
    # rabbitmq_queue_messages{queue=...} only exists on the per-object endpoint.
    assert rabbitmq["metrics_path"] == "/metrics/per-object"
    # The scrape targets are services of the compose stack.
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for endpoints in targets.values():
        for target in endpoints:
            host = target.split(":")[0]
            assert host == "localhost" or host in services, target


def test_every_alert_is_labelled_and_annotated(rules: list[dict[str, Any]]) -> None:
    alerts = [rule for rule in rules if "alert" in rule]
    assert alerts
    for rule in alerts:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["runbook_section"], rule["alert"]


def test_key_metrics_have_warning_and_critical_rules(rules: list[dict[str, Any]]) -> None:
    severities: dict[str, set[str]] = {}
    for rule in rules:
        severities.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    for alert in KEY_METRIC_ALERTS:
        assert severities.get(alert) == {"warning", "critical"}, alert
    assert set(severities) >= NAMED_ALERTS
    seen = set()
    for rule in rules:
        key = (rule["alert"], rule["labels"]["severity"])
        if key in THRESHOLDS:
            expr = " ".join(rule["expr"].split())
            # "> 1" must not match "> 1.5" or "> 1000"
            assert re.search(re.escape(THRESHOLDS[key]) + r"(?![\d.])", expr), (key, expr)
            seen.add(key)
    assert seen == set(THRESHOLDS)


def test_named_alerts_match_the_runbook(rules: list[dict[str, Any]]) -> None:
    by_name = {rule["alert"]: rule for rule in rules}
    assert 'queue_depth{queue="birthday_messages"}' in by_name["HighQueueDepth"]["expr"]
    assert "circuit_breaker_state" in by_name["CircuitBreakerOpen"]["expr"]
    assert by_name["CircuitBreakerOpen"]["for"] == "1m"
    assert by_name["WorkerCrashRecovery"]["expr"].startswith(
        'changes(process_start_time_seconds{job="worker"}[15m])'
    )
    assert by_name["ServiceDown"]["expr"] == "up == 0"
    assert by_name["ServiceDown"]["for"] == "1m"
    assert "scheduler_last_tick_timestamp_seconds" in by_name["SchedulerStalled"]["expr"]
    assert by_name["SchedulerStalled"]["expr"].endswith("> 120")


def test_rules_use_only_metrics_that_exist(rules: list[dict[str, Any]]) -> None:
    known = exported_metric_names() | EXTERNAL_METRICS
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used, rule["expr"]
        assert used <= known, f"{rule['alert']}: unknown {sorted(used - known)}"


def test_unit_tests_cover_every_alert_firing_and_not_firing(
    rules: list[dict[str, Any]], unit_tests: dict[str, Any]
) -> None:
    assert unit_tests["rule_files"] == ["alerts.yml"]
    firing: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for case in unit_tests["tests"]:
        for check in case["alert_rule_test"]:
            if not check["exp_alerts"]:
                quiet.add(check["alertname"])
            for alert in check["exp_alerts"]:
                firing.add((check["alertname"], alert["exp_labels"]["severity"]))
    defined = {(rule["alert"], rule["labels"]["severity"]) for rule in rules}
    assert defined <= firing, f"never shown firing: {sorted(defined - firing)}"
    assert len(quiet) >= 2
