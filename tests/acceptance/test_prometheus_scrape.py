"""Acceptance: a real Prometheus scrapes the real processes and the runbook's queries answer.

`api`, `scheduler` and `worker` run as three processes (each with its own port) on a fresh
PostgreSQL database and RabbitMQ vhost; Debian's Prometheus server scrapes all three every
second; the test makes some traffic and polls Prometheus's HTTP API until every query in the
runbook's PromQL block returns data. Queries on series from other exporters
(RabbitMQ's own, postgres_exporter) are listed in EXTERNAL with the reason.
"""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rabbit_vhost import create_vhost, delete_vhost, vhost_url
from support import child_env, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
PROMETHEUS = "/usr/bin/prometheus"
DEADLINE_S = 50.0  # the whole test, start-up and shutdown included, stays under a minute
EXTERNAL = {
    "rabbitmq_queue_messages": "exported by RabbitMQ's rabbitmq_prometheus plugin, which "
    "this machine's broker does not run; our own queue_depth query covers the same",
    "pg_stat_database_numbackends": "exported by postgres_exporter (deploy/, Compose), not by us",
}
# The queries the runbook must keep (by the series they read), all answered by our processes.
REQUIRED_SERIES = (
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "queue_depth",
    "db_pool_size",
    "db_pool_checked_out",
    "process_resident_memory_bytes",
    "circuit_breaker_state",
    "messages_processed_total",
    "scheduler_last_tick_timestamp_seconds",
)

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def runbook_queries() -> list[str]:
    text = RUNBOOK.read_text()
    block = re.search(r"```promql\n(.*?)```", text, re.DOTALL)
    assert block, "docs/RUNBOOK.md has no ```promql block"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class Deadline:
    at: float

    def left(self) -> float:
        return self.at - time.monotonic()

    def wait_for(self, check: Callable[[], bool], what: str) -> None:
        wait_for(check, what, within=max(self.left(), 0.0), interval=0.2)


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture
def vhost() -> Iterator[str]:
    name = create_vhost("prometheus")
    try:
        yield name
    finally:
        delete_vhost(name)


class Processes:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with (self.directory / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                args, cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.running.append((name, process))

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited {process.returncode}:\n{self.log(name)}")

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_all(self) -> None:
        for _, process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def prometheus_config(api: int, scheduler: int, worker: int) -> str:
    jobs = {"api": api, "scheduler": scheduler, "worker": worker}
    scrape = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']"
        for job, port in jobs.items()
    )
    return (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n{scrape}\n"
    )


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    body = response.json()
    assert body.get("status") == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def make_traffic(api: str) -> None:
    created = httpx.post(
        f"{api}/users",
        json={
            "firstName": "Prom",
            "lastName": "Scrape",
            "email": f"prom-{uuid.uuid4().hex[:10]}@example.com",
            "dateOfBirth": "1990-05-17",
            "timezone": "Europe/Paris",
        },
        timeout=5,
    )
    assert created.status_code == 201, created.text
    bad = httpx.post(f"{api}/users", json={"firstName": "No zone"}, timeout=5)
    assert bad.status_code == 400, bad.text
    assert httpx.get(f"{api}/users/{created.json()['id']}", timeout=5).status_code == 200
    assert httpx.get(f"{api}/users?limit=5", timeout=5).status_code == 200


def test_runbook_keeps_the_queries_operators_need() -> None:
    queries = runbook_queries()
    for series in REQUIRED_SERIES + tuple(EXTERNAL):
        assert any(series in q for q in queries), f"no runbook query reads {series}"
    assert 'queue_depth{queue="birthday_messages"}' in queries
    assert 'rabbitmq_queue_messages{queue="birthday_messages"}' in queries


@pytest.mark.timeout(60)
def test_prometheus_scrapes_every_process_and_the_runbook_queries_answer(
    pg_database_url: str, vhost: str, tmp_path: Path
) -> None:
    deadline = Deadline(time.monotonic() + DEADLINE_S)
    if not Path(PROMETHEUS).exists() and shutil.which("prometheus") is None:
        pytest.fail(
            f"{PROMETHEUS} is missing: install Debian's Prometheus server with "
            "`apt-get install prometheus` to run this test"
        )
    binary = PROMETHEUS if Path(PROMETHEUS).exists() else str(shutil.which("prometheus"))

    api_port, scheduler_port, worker_port, prom_port = (free_port() for _ in range(4))
    common = {
        "DATABASE_URL": pg_database_url,
        "RABBITMQ_URL": vhost_url(vhost),
        "SHUTDOWN_GRACE_S": "5",
        "RATE_LIMIT_PER_MINUTE": "0",
    }
    processes = Processes(tmp_path)
    try:
        processes.start("api", [SCRIPT, "api"], child_env(PORT=str(api_port), **common))
        processes.start(
            "scheduler",
            [SCRIPT, "scheduler"],
            child_env(METRICS_PORT=str(scheduler_port), **common),
        )
        # No message is due in a fresh database, so the worker never calls this address.
        processes.start(
            "worker",
            [SCRIPT, "worker"],
            child_env(
                METRICS_PORT=str(worker_port),
                MESSAGE_SERVICE_URL=f"http://127.0.0.1:{free_port()}/send",
                **common,
            ),
        )
        config = tmp_path / "prometheus.yml"
        config.write_text(prometheus_config(api_port, scheduler_port, worker_port))
        processes.start(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            child_env(),
        )
        api = f"http://127.0.0.1:{api_port}"
        prometheus = f"http://127.0.0.1:{prom_port}"

        def everything_ready() -> bool:
            processes.check_alive()
            return all(
                http_status(url) == 200
                for url in (
                    f"{api}/ready",
                    f"http://127.0.0.1:{scheduler_port}/ready",
                    f"http://127.0.0.1:{worker_port}/ready",
                    f"{prometheus}/-/ready",
                )
            )

        deadline.wait_for(everything_ready, "api, scheduler, worker and Prometheus ready")

        def all_targets_up() -> bool:
            make_traffic(api)
            up = {r["metric"]["job"]: r["value"][1] for r in query(prometheus, "up")}
            return up == {"api": "1", "scheduler": "1", "worker": "1"}

        deadline.wait_for(all_targets_up, "Prometheus scraping api, scheduler and worker")

        answers: dict[str, list[dict[str, Any]]] = {}
        for expr in runbook_queries():
            if any(name in expr for name in EXTERNAL):
                continue
            # The runbook's 5-minute windows, shortened to what a test can fill.
            short = expr.replace("[5m]", "[10s]")

            def answered(short: str = short, expr: str = expr) -> bool:
                make_traffic(api)
                answers[expr] = query(prometheus, short)
                return bool(answers[expr])

            deadline.wait_for(answered, f"data for `{short}`")

        by_query = {expr: answers[expr] for expr in answers}
        # The error ratio answers 0 (no 5xx happened), not "no data", thanks to `or vector(0)`;
        # the 400s the traffic produced are in the same counter, under their own status.
        ratio_query = next(k for k in by_query if 'status=~"5.."' in k).replace("[5m]", "[10s]")
        ratio: list[float] = []

        def ratio_is_a_number() -> bool:
            # 0/0 is NaN while the window holds no increase yet; wait for a real ratio.
            make_traffic(api)
            ratio[:] = [float(r["value"][1]) for r in query(prometheus, ratio_query)]
            return bool(ratio) and not math.isnan(ratio[0])

        deadline.wait_for(ratio_is_a_number, "a numeric error ratio")
        assert ratio == [0.0]
        client_errors = query(prometheus, 'http_requests_total{job="api",status=~"4.."}')
        assert {r["metric"]["status"] for r in client_errors} == {"400"}
        assert {r["metric"]["route"] for r in client_errors} == {"/users"}
        routes = {r["metric"]["route"] for r in query(prometheus, "http_requests_total")}
        assert "/users/{user_id}" in routes
        assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", route) for route in routes)

        # Each series comes from the process that owns it.
        breaker = query(prometheus, "circuit_breaker_state")
        assert {(r["metric"]["job"], r["metric"]["name"]) for r in breaker} == {
            ("worker", "message_service")
        }
        assert float(breaker[0]["value"][1]) == 0.0  # closed
        stale = next(v for k, v in by_query.items() if "scheduler_last_tick" in k)
        assert float(stale[0]["value"][1]) < 30, "the scheduler is not ticking"
        depth_jobs = {
            r["metric"]["job"] for r in query(prometheus, 'queue_depth{queue="birthday_messages"}')
        }
        assert depth_jobs >= {"api", "worker"}
        pool = query(prometheus, "db_pool_size")
        assert {r["metric"]["job"] for r in pool} == {"api", "scheduler", "worker"}
        assert all(float(r["value"][1]) > 0 for r in pool)
        outcomes = query(prometheus, 'messages_processed_total{job="worker"}')
        assert {r["metric"]["outcome"] for r in outcomes} >= {"sent", "retried", "dead"}
        memory = next(v for k, v in by_query.items() if "process_resident_memory_bytes" in k)
        assert all(0 < float(r["value"][1]) < 2 for r in memory)  # GiB per process
        assert deadline.left() > 0
    finally:
        processes.stop_all()
    for name, process in processes.running:
        if name != "prometheus":
            assert process.returncode == 0, f"{name} exited {process.returncode}"
