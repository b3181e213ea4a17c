"""PostgreSQL unreachable: /users* answers 503 + Retry-After within seconds, then recovers.

The app talks to the machine's real PostgreSQL through a TCP proxy the test can cut
(connections refused), black-hole (accepted, nothing forwarded) and restore.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from birthday_scheduler.infra import db_faults
from birthday_scheduler.infra.db import async_url
from birthday_scheduler.settings import Settings
from support import api_client, eventually, pg_admin, user_body
from tcp_proxy import TcpProxy, tcp_proxy

# The API's promise: an answer within seconds, never a hang (the request deadline is 5 s).
ANSWER_WITHIN_S = 8.0


@dataclass
class Outage:
    proxy: TcpProxy
    http: httpx.AsyncClient
    database: str


@pytest.fixture
async def outage(pg_database_url: str) -> AsyncIterator[Outage]:
    url = make_url(pg_database_url)
    async with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
        settings = Settings(database_url=proxied, rate_limit_per_minute=0, database_pool_max=3)
        async with api_client(settings) as http:
            yield Outage(proxy, http, url.database or "")


async def _requests(http: httpx.AsyncClient, user_id: str) -> list[httpx.Response]:
    """One of each kind of /users call, at once, as clients would keep sending them."""
    return list(
        await asyncio.gather(
            http.get("/users"),
            http.post("/users", json=user_body()),
            http.get(f"/users/{user_id}"),
            http.patch(f"/users/{user_id}", json={"firstName": "Grace"}),
            http.get(f"/users/{user_id}/messages"),
            http.delete(f"/users/{uuid.uuid4()}"),
        )
    )


async def _assert_unavailable(outage: Outage, user_id: str) -> None:
    started = time.monotonic()
    responses = await _requests(outage.http, user_id)
    elapsed = time.monotonic() - started
    assert elapsed < ANSWER_WITHIN_S, f"took {elapsed:.1f}s"
    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert int(response.headers["retry-after"]) >= 1
        body = response.json()
        assert body["status"] == 503
        for leak in ("Traceback", "SELECT", "INSERT", "asyncpg", "127.0.0.1", outage.database):
            assert leak not in response.text, leak


async def _assert_serving(outage: Outage, user_id: str) -> None:
    async def created() -> bool:
        return (await outage.http.post("/users", json=user_body())).status_code == 201

    await eventually(created, within=ANSWER_WITHIN_S, interval=0.2)
    responses = await _requests(outage.http, user_id)
    assert [r.status_code for r in responses] == [200, 201, 200, 200, 200, 404]


async def test_refused_connections_give_503_then_the_api_recovers(outage: Outage) -> None:
    user = (await outage.http.post("/users", json=user_body())).json()
    await outage.proxy.refuse()
    await _assert_unavailable(outage, user["id"])
    await _assert_unavailable(outage, user["id"])  # and again: nothing got stuck
    await outage.proxy.restore()
    await _assert_serving(outage, user["id"])


async def test_black_holed_database_gives_503_within_seconds_then_recovers(
    outage: Outage,
) -> None:
    user = (await outage.http.post("/users", json=user_body())).json()
    await outage.proxy.blackhole()
    await _assert_unavailable(outage, user["id"])
    await outage.proxy.restore()
    await _assert_serving(outage, user["id"])


async def test_connections_killed_by_a_restart_never_give_a_500(outage: Outage) -> None:
    """What a PostgreSQL restart does to pooled connections: every backend is terminated."""
    user = (await outage.http.post("/users", json=user_body())).json()
    for _ in range(3):
        await pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{outage.database}' AND pid <> pg_backend_pid()"
        )
        responses = await _requests(outage.http, user["id"])
        assert [r.status_code for r in responses] == [200, 201, 200, 200, 200, 404], [
            r.text for r in responses
        ]


async def test_a_statement_that_times_out_discards_its_connection(pg_database_url: str) -> None:
    """A connection that went silent (command_timeout fired) must not be handed out again to
    hang once more: SQLAlchemy invalidates it, which the engine's backstop relies on."""
    engine = create_async_engine(
        async_url(pg_database_url), pool_size=1, connect_args={"command_timeout": 0.2}
    )
    try:
        async with engine.connect() as conn:
            backend = await conn.scalar(text("SELECT pg_backend_pid()"))
            with pytest.raises(TimeoutError):
                await conn.execute(text("SELECT pg_sleep(5)"))
            assert conn.invalidated
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_backend_pid()")) != backend
    finally:
        await engine.dispose()


def test_only_unreachable_means_unavailable() -> None:
    assert db_faults.is_unavailable(ConnectionRefusedError(111, "refused"))
    assert db_faults.is_unavailable(TimeoutError())
    assert not db_faults.is_unavailable(ValueError("a bug"))
    assert not db_faults.is_unavailable(
        IntegrityError("INSERT", {}, Exception("duplicate key value violates unique constraint"))
    )
