"""Test helpers shared by every layer: a settable clock, factories, database plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


class FakeClock:
    """A clock tests move by hand; monotonic time moves with it."""

    def __init__(self, now: datetime | None = None) -> None:
        self._now = now or datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
        self._mono = 1_000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def set(self, now: datetime) -> None:
        self._mono += (now - self._now).total_seconds()
        self._now = now

    def advance(self, **delta: float) -> datetime:
        self.set(self._now + timedelta(**delta))
        return self._now


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The test runner's environment minus anything that would configure the service."""
    owned = ("DATABASE_", "RABBITMQ_", "MESSAGE_SERVICE_", "SIMULATOR_", "API_TOKENS")
    owned_exact = {"HOST", "PORT", "METRICS_PORT", "LOG_LEVEL", "LOG_FORMAT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(owned) and k not in owned_exact}
    env.update(extra)
    return env


def user_body(**overrides: Any) -> dict[str, Any]:
    """A valid POST /users body with a unique email; override any field."""
    body: dict[str, Any] = {
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": f"user-{uuid.uuid4().hex[:12]}@example.com",
        "dateOfBirth": "1990-07-01",
        "timezoneOffset": 0,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


@contextlib.asynccontextmanager
async def api_client(settings: Any) -> AsyncIterator[Any]:
    """An httpx client on the app in process, over its own resources (an in-process queue and
    a FakeClock): the API as the tests drive it."""
    import httpx

    from birthday_scheduler.api.app import create_app
    from birthday_scheduler.entrypoints import runtime
    from birthday_scheduler.infra.broker.memory import MemoryBroker

    async with runtime.open_resources(settings, broker=MemoryBroker(), clock=FakeClock()) as res:
        transport = httpx.ASGITransport(app=create_app(runtime.api_context(res)))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def create_user_id(client: Any, **overrides: Any) -> str:
    """POST /users (user_body with overrides) through an httpx client; the new user's id."""
    response = await client.post("/users", json=user_body(**overrides))
    assert response.status_code == 201, response.text
    user_id: str = response.json()["id"]
    return user_id


async def patch_user(client: Any, user_id: object, **fields: Any) -> dict[str, Any]:
    """PATCH /users/{id}, which must succeed; the user as the API returns it."""
    response = await client.patch(f"/users/{user_id}", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def pg_url(database: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


async def pg_admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float = 20.0, interval: float = 0.05
) -> None:
    """Poll `check` (sync or async) until it is true or the deadline passes.

    The one place tests wait for work: no fixed sleeps, always a deadline.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def holds(check: Callable[[], bool], during: float = 0.2, interval: float = 0.01) -> None:
    """Poll `check` until the deadline and fail the first time it is false: for "and nothing
    else happens" (a task stays blocked, a count stays put), where a test would otherwise
    yield to the loop a fixed number of times and hope that was enough."""
    deadline = time.monotonic() + during
    while True:
        if not check():
            raise AssertionError(f"condition stopped holding within {during}s")
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(interval)


def wait_for(
    check: Callable[[], bool], what: str, within: float = 30.0, interval: float = 0.1
) -> None:
    """`eventually` for synchronous tests that drive subprocesses."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f}s")
        time.sleep(interval)


async def drain_queue(broker: Any) -> list[uuid.UUID]:
    """Every id the broker's main queue holds now, consumed off it (duplicates included)."""
    from birthday_scheduler.infra.broker.base import MAIN_QUEUE

    expected = await broker.queue_depth(MAIN_QUEUE)
    seen: list[uuid.UUID] = []
    if expected == 0:
        return seen

    async def collect(message_id: uuid.UUID) -> None:
        seen.append(message_id)

    async def all_seen() -> bool:
        return len(seen) >= expected

    await broker.consume(collect, prefetch=200)
    try:
        await eventually(all_seen)
    finally:
        await broker.stop_consuming()
    return seen
