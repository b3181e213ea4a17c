"""Integration: what operators see — /metrics names and labels, JSON logs, request ids, and the
health endpoints — in process, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.infra.logging import configure_logging, get_logger
from birthday_scheduler.messages import heartbeat
from birthday_scheduler.settings import Settings
from support import FakeClock, user_body

# CONTRACT section 6, by the name `# TYPE` declares, with the type Prometheus should see.
CONTRACT_METRICS = {
    "http_requests": "counter",  # exposed as http_requests_total
    "http_request_duration_seconds": "histogram",
    "circuit_breaker_state": "gauge",
    "messages_processed": "counter",  # messages_processed_total
    "queue_depth": "gauge",
    "db_pool_size": "gauge",
    "db_pool_checked_out": "gauge",
    "scheduler_last_tick_timestamp_seconds": "gauge",
    "process_resident_memory_bytes": "gauge",
}
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "aiormq", "aio_pika", "alembic")


def label_values(metrics_text: str) -> dict[str, set[str]]:
    """Every label name in the exposition, with every value it takes."""
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            for name, value in sample.labels.items():
                values.setdefault(name, set()).add(value)
    return values


# --- /metrics ----------------------------------------------------------------------------------


async def test_metrics_expose_the_contract_names(client: httpx.AsyncClient) -> None:
    assert (await client.post("/users", json=user_body())).status_code == 201
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    for name, kind in CONTRACT_METRICS.items():
        assert families.get(name) == kind, (name, families.get(name))
    # Series operators query directly must have samples, not only a declaration.
    samples = {
        sample.name
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "messages_processed_total",
        "db_pool_size",
        "db_pool_checked_out",
        "scheduler_last_tick_timestamp_seconds",
        "process_resident_memory_bytes",
    } <= samples


async def test_route_labels_are_templates_and_no_label_carries_user_data(
    client: httpx.AsyncClient,
) -> None:
    body = user_body()
    email = body["email"]
    created = await client.post("/users", json=body)
    assert created.status_code == 201
    user_id = created.json()["id"]
    assert (await client.get(f"/users/{user_id}")).status_code == 200
    assert (await client.get(f"/users/{user_id}/messages")).status_code == 200
    assert (await client.patch(f"/users/{user_id}", json={"lastName": "B"})).status_code == 200
    assert (await client.get(f"/users/{uuid.uuid4()}")).status_code == 404
    assert (await client.get(f"/lookup/{email}")).status_code == 404  # no such route
    assert (await client.post("/users", json=body)).status_code == 409

    text = (await client.get("/metrics")).text
    labels = label_values(text)
    assert {"/users", "/users/{user_id}", "/users/{user_id}/messages", "unmatched"} <= labels[
        "route"
    ]
    assert {"201", "200", "404", "409"} <= labels["status"]
    assert {"GET", "POST", "PATCH"} <= labels["method"]
    for name, values in labels.items():
        for value in values:
            assert "@" not in value, (name, value)
            assert not UUID_RE.search(value), (name, value)
    assert email not in text
    assert user_id not in text


# --- request ids -------------------------------------------------------------------------------


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    supplied = await client.get("/alive", headers={"X-Request-ID": "trace-4711"})
    assert supplied.headers["x-request-id"] == "trace-4711"
    generated = await client.get("/users", headers={})
    assert uuid.UUID(generated.headers["x-request-id"])
    other = await client.get("/users")
    assert other.headers["x-request-id"] != generated.headers["x-request-id"]
    # Problem responses carry it too, so a client's error report can be traced.
    missing = await client.get(f"/users/{uuid.uuid4()}", headers={"X-Request-ID": "trace-404"})
    assert missing.status_code == 404
    assert missing.headers["x-request-id"] == "trace-404"


# --- logs --------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers and structlog's setup: put them back."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_libs = {
        name: (lib.handlers[:], lib.propagate, lib.disabled, lib.level)
        for name in LIBRARY_LOGGERS
        for lib in [logging.getLogger(name)]
    }
    saved_structlog = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for name, (handlers, propagate, disabled, lib_level) in saved_libs.items():
            lib = logging.getLogger(name)
            lib.handlers[:] = handlers
            lib.propagate = propagate
            lib.disabled = disabled
            lib.setLevel(lib_level)
        structlog.configure(**saved_structlog)


def json_lines(out: str) -> list[dict[str, Any]]:
    lines = [line for line in out.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # each line is one whole JSON object
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


@pytest.mark.usefixtures("restore_logging")
def test_logs_are_one_json_object_per_line_with_runbook_levels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("debug", "json")
    get_logger("birthday_scheduler.test").warning("circuit.opened", failures=5)
    logging.getLogger("some.library").warning("disk %s", "low")
    get_logger("birthday_scheduler.test").critical("process.crashed")
    logging.getLogger("some.library").critical("gave up")
    get_logger("birthday_scheduler.test").info("message.sent", attempt=1)
    logging.getLogger("some.library").error("failed")
    get_logger("birthday_scheduler.test").debug("scheduler.tick")

    entries = json_lines(capsys.readouterr().out)
    assert [(e["level"], e["event"]) for e in entries] == [
        ("warn", "circuit.opened"),
        ("warn", "disk low"),
        ("fatal", "process.crashed"),
        ("fatal", "gave up"),
        ("info", "message.sent"),
        ("error", "failed"),
        ("debug", "scheduler.tick"),
    ]
    for entry in entries:
        assert {"time", "level", "event", "logger"} <= entry.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", entry["time"])
    assert entries[0]["failures"] == 5
    assert entries[1]["logger"] == "some.library"


@pytest.mark.usefixtures("restore_logging")
def test_level_threshold_uses_runbook_names(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warn", "json")
    get_logger("birthday_scheduler.test").info("too.chatty")
    logging.getLogger("some.library").info("also chatty")
    get_logger("birthday_scheduler.test").warning("worth.seeing")
    assert [e["event"] for e in json_lines(capsys.readouterr().out)] == ["worth.seeing"]


@pytest.mark.usefixtures("restore_logging")
def test_email_addresses_are_masked_everywhere_in_a_log_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    log = get_logger("birthday_scheduler.test")
    log.info("user.rejected", detail="ada@example.com is taken")
    logging.getLogger("some.library").info("sending to %s", "bob@example.org")
    logging.getLogger("some.library").info("queued", extra={"recipient": "carol@example.net"})
    try:
        raise ValueError("Key (lower(email))=(dave@example.com) already exists.")
    except ValueError:
        log.exception("user.insert_failed")
        logging.getLogger("some.library").exception("insert failed")

    out = capsys.readouterr().out
    entries = json_lines(out)
    assert len(entries) == 5
    assert "@example." not in out
    assert entries[0]["detail"] == "<redacted-email> is taken"
    assert entries[1]["event"] == "sending to <redacted-email>"
    assert entries[2]["recipient"] == "<redacted-email>"
    assert "ValueError" in entries[3]["exception"]
    assert "ValueError" in entries[4]["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_uvicorn_and_library_loggers_share_the_formatter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # uvicorn attaches its own handlers when it configures itself; ours must win.
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler())
    configure_logging("info", "json")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn").warning("Invalid HTTP request received.")
    logging.getLogger("aio_pika").warning("Connection lost")
    logging.getLogger("uvicorn.access").info("GET /users/123 200")  # replaced by http.request

    entries = json_lines(capsys.readouterr().out)
    assert [(e["logger"], e["level"], e["event"]) for e in entries] == [
        ("uvicorn.error", "info", "Started server process [42]"),
        ("uvicorn", "warn", "Invalid HTTP request received."),
        ("aio_pika", "warn", "Connection lost"),
    ]
    assert logging.getLogger("uvicorn.error").handlers == []


@pytest.mark.usefixtures("restore_logging")
async def test_request_log_line_carries_request_id_and_route_template(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await client.post("/users", json=user_body())
    user_id = created.json()["id"]
    configure_logging("info", "json")
    capsys.readouterr()
    response = await client.get(f"/users/{user_id}", headers={"X-Request-ID": "trace-logs"})
    assert response.status_code == 200

    out = capsys.readouterr().out
    requests = [e for e in json_lines(out) if e["event"] == "http.request"]
    assert len(requests) == 1
    entry = requests[0]
    assert entry["request_id"] == "trace-logs"
    assert entry["route"] == "/users/{user_id}"
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert isinstance(entry["duration_ms"], float | int)
    assert user_id not in json.dumps(entry)  # the template, never the raw path


# --- health ------------------------------------------------------------------------------------


async def test_health_detailed_reports_each_component(client: httpx.AsyncClient) -> None:
    # The plain API: no consumer and no breaker in this process, and no scheduler has ticked.
    response = await client.get("/health/detailed")
    body = response.json()
    components = body["components"]
    assert set(components) >= {"database", "queue", "consumer", "circuitBreaker", "scheduler"}
    for name in ("database", "schema", "queue"):
        assert components[name]["status"] == "up", name
        assert components[name]["latencyMs"] >= 0, name
    assert components["database"]["poolSize"] >= 1
    assert components["queue"]["depth"] == 0
    assert components["consumer"]["status"] == "disabled"
    assert components["circuitBreaker"]["status"] == "disabled"
    assert components["scheduler"] == {"status": "down", "lastTickAt": None}
    assert response.status_code == 503
    assert body["status"] == "degraded"


@pytest.fixture
async def worker_client(resources: runtime.Resources) -> AsyncIterator[httpx.AsyncClient]:
    """An app as a worker process builds it: a live consumer and a circuit breaker."""
    broker = resources.require_broker()

    async def ignore(_message_id: uuid.UUID) -> None:
        return None

    await broker.consume(ignore, prefetch=1)
    breaker = runtime.build_breaker(resources)
    app = create_app(runtime.api_context(resources, runs_consumer=True, breaker=breaker))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as http:
            yield http
    finally:
        await broker.stop_consuming()


async def test_health_detailed_all_up_in_a_worker(
    worker_client: httpx.AsyncClient, resources: runtime.Resources, clock: FakeClock
) -> None:
    async with unit_of_work(resources.sessions) as session:
        await heartbeat.beat(session, "scheduler-a", clock.now())
    clock.advance(seconds=3)

    response = await worker_client.get("/health/detailed")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    components = body["components"]
    assert {name: c["status"] for name, c in components.items()} == {
        "database": "up",
        "schema": "up",
        "queue": "up",
        "consumer": "up",
        "circuitBreaker": "up",
        "scheduler": "up",
    }
    assert components["consumer"]["alive"] is True
    assert components["circuitBreaker"]["state"] == "closed"
    assert components["scheduler"]["ageSeconds"] == pytest.approx(3.0)
    assert "latencyMs" in components["database"]
    queue_health = await worker_client.get("/health/queue")
    assert queue_health.status_code == 200
    assert queue_health.json()["consumer"]["status"] == "up"
    assert (await worker_client.get("/ready")).status_code == 200


async def test_health_detailed_marks_a_stale_scheduler_down(
    worker_client: httpx.AsyncClient, resources: runtime.Resources, clock: FakeClock
) -> None:
    async with unit_of_work(resources.sessions) as session:
        await heartbeat.beat(session, "scheduler-a", clock.now())
    clock.advance(minutes=10)
    response = await worker_client.get("/health/detailed")
    assert response.status_code == 503
    assert response.json()["components"]["scheduler"]["status"] == "down"


async def test_ready_is_503_until_the_schema_is_migrated(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    async with runtime.open_resources(settings, broker=MemoryBroker()) as resources:
        app = create_app(runtime.api_context(resources))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fresh") as http:
            response = await http.get("/ready")
            assert response.status_code == 503
            assert response.json() == {
                "status": "not ready",
                "checks": {
                    "database": "up",
                    "schema": "down",
                    "queue": "up",
                    "consumer": "disabled",
                },
            }
            # /health/detailed still answers (no 500): each component says what it can.
            detailed = await http.get("/health/detailed")
            assert detailed.status_code == 503
            components = detailed.json()["components"]
            assert components["database"]["status"] == "up"
            assert components["schema"]["status"] == "down"
            assert "birthday-scheduler db migrate" in components["schema"]["hint"]
            assert components["scheduler"]["status"] == "down"
            assert (await http.get("/alive")).status_code == 200  # alive, just not ready

            await migrate.upgrade(resources.engine)
            assert (await http.get("/ready")).status_code == 200
