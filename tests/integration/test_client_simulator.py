"""The message-service client against the real simulator served on a loopback port."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from birthday_scheduler.delivery.client import MessageServiceClient, Outcome, SendResult
from birthday_scheduler.simulator.app import (
    RunningSimulator,
    SimulatorConfig,
    run_simulator,
    start_simulator,
)
from support import eventually

EMAIL = "someone@example.com"
MESSAGE = "Hey, Test User it's your birthday"


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator("127.0.0.1", 0, SimulatorConfig())
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def client(simulator: RunningSimulator) -> AsyncIterator[MessageServiceClient]:
    async with MessageServiceClient(simulator.url, "s3cret-token", timeout_s=2.0) as running:
        yield running


async def control(simulator: RunningSimulator, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, simulator.base_url + path, json=body) as response,
    ):
        assert response.status < 300, await response.text()
        return await response.json() if response.status != 204 else None


async def configure(simulator: RunningSimulator, **changes: Any) -> None:
    await control(simulator, "PUT", "/config", changes)


def key() -> str:
    return f"birthday:{uuid.uuid4()}"


async def test_accepted_send_is_sent_and_recorded_with_the_bearer_seen(
    simulator: RunningSimulator, client: MessageServiceClient
) -> None:
    idempotency_key = key()
    result = await client.send(EMAIL, MESSAGE, idempotency_key)
    assert result == SendResult(Outcome.SENT, 200, "http 200")
    deliveries = await control(simulator, "GET", "/deliveries")
    assert len(deliveries) == 1
    assert deliveries[0]["email"] == EMAIL
    assert deliveries[0]["message"] == MESSAGE
    assert deliveries[0]["idempotencyKey"] == idempotency_key
    assert deliveries[0]["authorized"] is True
    assert deliveries[0]["time"].endswith("Z")
    assert "s3cret-token" not in str(deliveries) + str(await control(simulator, "GET", "/stats"))


async def test_no_authorization_header_without_an_api_key(simulator: RunningSimulator) -> None:
    async with MessageServiceClient(simulator.url, None, timeout_s=2.0) as anonymous:
        assert (await anonymous.send(EMAIL, MESSAGE, key())).outcome is Outcome.SENT
    stats = await control(simulator, "GET", "/stats")
    assert (stats["requests"], stats["authorized"]) == (1, 0)


async def test_root_path_is_accepted_too(simulator: RunningSimulator) -> None:
    async with MessageServiceClient(simulator.base_url + "/", None, timeout_s=2.0) as root:
        assert (await root.send(EMAIL, MESSAGE, key())).outcome is Outcome.SENT


@pytest.mark.parametrize(
    ("field", "status"),
    [("failure_rate_500", 500), ("failure_rate_502", 502), ("failure_rate_429", 429)],
)
async def test_server_errors_and_rate_limits_are_retryable(
    simulator: RunningSimulator, client: MessageServiceClient, field: str, status: int
) -> None:
    await configure(simulator, **{field: 1.0})
    result = await client.send(EMAIL, MESSAGE, key())
    assert (result.outcome, result.status, result.reason) == (
        Outcome.RETRYABLE,
        status,
        f"http {status}",
    )
    assert result.retry_after_s == (1.0 if status == 429 else None)
    assert await control(simulator, "GET", "/deliveries") == []


async def test_outage_window_gives_503_until_it_is_ended(
    simulator: RunningSimulator, client: MessageServiceClient
) -> None:
    await configure(simulator, outages=[[0, 1e9]])
    result = await client.send(EMAIL, MESSAGE, key())
    assert (result.outcome, result.status) == (Outcome.RETRYABLE, 503)
    await configure(simulator, outages=[])
    assert (await client.send(EMAIL, MESSAGE, key())).outcome is Outcome.SENT


async def test_missing_field_is_permanent_and_reason_has_no_personal_data(
    simulator: RunningSimulator, client: MessageServiceClient
) -> None:
    result = await client.send(EMAIL, "", key())
    assert result == SendResult(Outcome.PERMANENT, 400, "http 400: missing field: message")
    stats = await control(simulator, "GET", "/stats")
    assert (stats["invalid"], stats["accepted"]) == (1, 0)


async def test_unknown_path_is_permanent(simulator: RunningSimulator) -> None:
    async with MessageServiceClient(simulator.base_url + "/nope", None, timeout_s=2.0) as wrong:
        result = await wrong.send(EMAIL, MESSAGE, key())
    assert (result.outcome, result.status) == (Outcome.PERMANENT, 404)


async def test_hang_times_out_as_retryable(simulator: RunningSimulator) -> None:
    await configure(simulator, hang_rate=1.0)
    async with MessageServiceClient(simulator.url, None, timeout_s=0.2) as impatient:
        result = await impatient.send(EMAIL, MESSAGE, key())
    assert result == SendResult(Outcome.RETRYABLE, None, "timeout after 0.2s")


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{unused_port}/send"
    async with MessageServiceClient(url, None, timeout_s=2.0) as nowhere:
        result = await nowhere.send(EMAIL, MESSAGE, key())
    assert result.outcome is Outcome.RETRYABLE
    assert result.status is None
    assert result.reason.startswith("connection error: ")


async def test_accept_then_hang_retried_with_the_same_key_delivers_once(
    simulator: RunningSimulator,
) -> None:
    idempotency_key = key()
    await configure(simulator, accept_then_hang_rate=1.0)
    async with MessageServiceClient(simulator.url, None, timeout_s=0.2) as impatient:
        first = await impatient.send(EMAIL, MESSAGE, idempotency_key)
        assert first.outcome is Outcome.RETRYABLE
        assert first.reason.startswith("timeout")
        await configure(simulator, accept_then_hang_rate=0.0)
        second = await impatient.send(EMAIL, MESSAGE, idempotency_key)
    assert second.outcome is Outcome.SENT
    deliveries = await control(simulator, "GET", "/deliveries")
    assert [d["idempotencyKey"] for d in deliveries] == [idempotency_key]
    stats = await control(simulator, "GET", "/stats")
    assert (stats["accepted"], stats["duplicates"], stats["failures"]["acceptThenHang"]) == (
        1,
        1,
        1,
    )


async def test_reset_forgets_deliveries_and_keys(
    simulator: RunningSimulator, client: MessageServiceClient
) -> None:
    idempotency_key = key()
    await client.send(EMAIL, MESSAGE, idempotency_key)
    await control(simulator, "DELETE", "/deliveries")
    assert await control(simulator, "GET", "/deliveries") == []
    await client.send(EMAIL, MESSAGE, idempotency_key)
    assert len(await control(simulator, "GET", "/deliveries")) == 1


async def test_seeded_faults_repeat_exactly(
    simulator: RunningSimulator, client: MessageServiceClient
) -> None:
    rates = {"failure_rate_500": 0.25, "failure_rate_502": 0.25, "failure_rate_429": 0.25}

    async def sequence() -> list[int | None]:
        await configure(simulator, seed=1234, **rates)
        return [(await client.send(EMAIL, MESSAGE, key())).status for _ in range(30)]

    first = await sequence()
    second = await sequence()
    assert first == second
    assert set(first) == {200, 429, 500, 502}


async def test_invalid_runtime_config_is_rejected(simulator: RunningSimulator) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(simulator.base_url + "/config", json={"hang_rate": 2}) as bad_rate,
        session.put(simulator.base_url + "/config", json={"bogus": 1}) as unknown,
    ):
        assert (bad_rate.status, unknown.status) == (400, 400)
        assert "bogus" in (await unknown.json())["error"]
    config = await control(simulator, "GET", "/config")
    assert config["hang_rate"] == 0.0


async def test_permanent_reason_keeps_the_error_field_without_personal_data() -> None:
    async def reject(_request: web.Request) -> web.Response:
        detail = f"recipient {EMAIL} (also other.person@example.org) refused: {MESSAGE}" + "x" * 300
        return web.json_response({"error": detail}, status=422)

    app = web.Application()
    app.router.add_post("/send", reject)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        async with MessageServiceClient(f"http://127.0.0.1:{port}/send", None, 2.0) as strict:
            result = await strict.send(EMAIL, MESSAGE, key())
    finally:
        await runner.cleanup()
    assert result.outcome is Outcome.PERMANENT
    assert result.status == 422
    assert result.reason.startswith("http 422: recipient <redacted> (also <redacted>) refused")
    assert "@" not in result.reason
    assert "Test User" not in result.reason
    assert len(result.reason) <= len("http 422: ") + 200


async def test_send_before_start_is_a_programming_error() -> None:
    idle = MessageServiceClient("http://127.0.0.1:9/send", None, 1.0)
    with pytest.raises(RuntimeError, match="start"):
        await idle.send(EMAIL, MESSAGE, key())


async def test_shutdown_releases_hung_requests_promptly() -> None:
    running = await start_simulator("127.0.0.1", 0, SimulatorConfig(hang_rate=1.0))
    async with MessageServiceClient(running.url, None, timeout_s=30.0) as patient:
        pending = asyncio.create_task(patient.send(EMAIL, MESSAGE, key()))
        await eventually(lambda: running.state.counters["requests"] == 1, within=5, interval=0.01)
        async with asyncio.timeout(10):
            await running.close()
            result = await pending
    assert result.outcome is Outcome.RETRYABLE


async def test_run_simulator_serves_until_stopped() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = asyncio.Event()
    server = asyncio.create_task(run_simulator("127.0.0.1", port, SimulatorConfig(), stop))
    url = f"http://127.0.0.1:{port}/health"
    async with aiohttp.ClientSession() as session:

        async def serving() -> bool:
            try:
                async with session.get(url) as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(serving, within=10, interval=0.02)
    stop.set()
    async with asyncio.timeout(10):
        await server
