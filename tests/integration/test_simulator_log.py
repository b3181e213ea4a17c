"""The simulator keeps only the most recent `max_deliveries` accepted deliveries (emails
included), so `all` mode and a long-running `message-service` hold bounded memory, while a
counter still says how many were accepted in all."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from birthday_scheduler.simulator.app import RunningSimulator, SimulatorConfig, start_simulator
from birthday_scheduler.simulator.config import DEFAULT_MAX_DELIVERIES


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator("127.0.0.1", 0, SimulatorConfig(max_deliveries=3))
    try:
        yield running
    finally:
        await running.close()


async def call(
    simulator: RunningSimulator, method: str, path: str, body: Any = None, **headers: str
) -> tuple[Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, simulator.base_url + path, json=body, headers=headers) as reply,
    ):
        assert reply.status < 300, await reply.text()
        return await reply.json(), dict(reply.headers)


async def send(simulator: RunningSimulator, key: str) -> None:
    body = {"email": f"{key}@example.com", "message": "Hey, Ada Lovelace it's your birthday"}
    await call(simulator, "POST", "/send", body, **{"Idempotency-Key": key})


async def test_deliveries_are_the_most_recent_n_with_a_total_count(
    simulator: RunningSimulator,
) -> None:
    keys = [str(uuid.uuid4()) for _ in range(5)]
    for key in keys:
        await send(simulator, key)

    deliveries, headers = await call(simulator, "GET", "/deliveries")
    assert [d["idempotencyKey"] for d in deliveries] == keys[2:]  # the last three, oldest first
    assert [d["email"] for d in deliveries] == [f"{k}@example.com" for k in keys[2:]]
    assert (headers["X-Total-Accepted"], headers["X-Max-Deliveries"]) == ("5", "3")
    stats, _ = await call(simulator, "GET", "/stats")
    assert (stats["accepted"], stats["deliveries"], stats["maxDeliveries"]) == (5, 3, 3)
    assert len(simulator.state.by_key) == 3  # the key index is bounded with the log


async def test_a_kept_key_is_a_repeat_and_a_dropped_one_is_forgotten(
    simulator: RunningSimulator,
) -> None:
    keys = [str(uuid.uuid4()) for _ in range(4)]
    for key in keys:
        await send(simulator, key)

    await send(simulator, keys[3])  # still kept: a repeat, nothing new delivered
    stats, _ = await call(simulator, "GET", "/stats")
    assert (stats["accepted"], stats["duplicates"]) == (4, 1)

    await send(simulator, keys[0])  # dropped with its delivery: accepted again
    stats, _ = await call(simulator, "GET", "/stats")
    assert (stats["accepted"], stats["duplicates"]) == (5, 1)
    deliveries, _ = await call(simulator, "GET", "/deliveries")
    assert [d["idempotencyKey"] for d in deliveries] == [keys[2], keys[3], keys[0]]


async def test_the_bound_can_change_at_run_time(simulator: RunningSimulator) -> None:
    keys = [str(uuid.uuid4()) for _ in range(3)]
    for key in keys:
        await send(simulator, key)

    config, _ = await call(simulator, "PUT", "/config", {"max_deliveries": 2})
    assert config["max_deliveries"] == 2
    deliveries, _ = await call(simulator, "GET", "/deliveries")
    assert [d["idempotencyKey"] for d in deliveries] == keys[1:]
    assert set(simulator.state.by_key) == set(keys[1:])

    await call(simulator, "PUT", "/config", {"max_deliveries": 10})
    more = str(uuid.uuid4())
    await send(simulator, more)
    deliveries, headers = await call(simulator, "GET", "/deliveries")
    assert [d["idempotencyKey"] for d in deliveries] == [*keys[1:], more]
    assert headers["X-Total-Accepted"] == "4"


async def test_the_default_bound_is_ten_thousand() -> None:
    running = await start_simulator("127.0.0.1", 0, SimulatorConfig.from_env({}))
    try:
        stats, _ = await call(running, "GET", "/stats")
    finally:
        await running.close()
    assert stats["maxDeliveries"] == DEFAULT_MAX_DELIVERIES == 10_000
