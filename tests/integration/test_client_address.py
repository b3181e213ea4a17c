"""Who the client is, behind a proxy: X-Forwarded-For counts only from FORWARDED_ALLOW_IPS.

The rate limit and the access log use that address; failed authentications count against the
limit, so guessing tokens ends in 429.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.settings import Settings
from support import FakeClock

PROXY = "10.1.2.3"  # the load balancer, as the API's socket sees it
LIMIT = 3

Peer = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
async def peer(sqlite_database_url: str) -> AsyncIterator[Peer]:
    """An app trusting PROXY; `peer(address)` opens a client whose socket comes from it."""
    settings = Settings.model_validate(
        {
            "database_url": sqlite_database_url,
            "rate_limit_per_minute": LIMIT,
            "forwarded_allow_ips": "10.0.0.0/8",
            "api_tokens": "right-token",
        }
    )
    async with runtime.open_resources(settings, broker=MemoryBroker(), clock=FakeClock()) as res:
        app = create_app(runtime.api_context(res))

        @asynccontextmanager
        async def connect(address: str) -> AsyncIterator[httpx.AsyncClient]:
            transport = httpx.ASGITransport(app=app, client=(address, 40_000))
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                yield http

        yield connect


AUTH = {"Authorization": "Bearer right-token"}


async def _statuses(http: httpx.AsyncClient, n: int, **headers: str) -> list[int]:
    return [(await http.get("/users", headers=AUTH | headers)).status_code for _ in range(n)]


async def test_two_clients_behind_a_trusted_proxy_get_separate_buckets(peer: Peer) -> None:
    async with peer(PROXY) as proxy:
        first = await _statuses(proxy, LIMIT + 1, **{"X-Forwarded-For": "203.0.113.1"})
        # A client forging a hop to the left changes nothing: the proxy appended the real one.
        second = await _statuses(
            proxy, LIMIT + 1, **{"X-Forwarded-For": "203.0.113.1, 203.0.113.2"}
        )
    assert first == [200] * LIMIT + [429]
    assert second == [200] * LIMIT + [429]


async def test_the_rightmost_untrusted_hop_is_the_client(peer: Peer) -> None:
    async with peer(PROXY) as proxy:
        # Two trusted proxies in a row (10.9.9.9 forwarded to PROXY): the client is left of them.
        chained = {"X-Forwarded-For": "198.51.100.7, 10.9.9.9"}
        assert await _statuses(proxy, LIMIT + 1, **chained) == [200] * LIMIT + [429]
        assert await _statuses(proxy, 1, **{"X-Forwarded-For": "198.51.100.7"}) == [429]
        assert await _statuses(proxy, 1, **{"X-Forwarded-For": "198.51.100.8"}) == [200]


async def test_an_untrusted_peer_cannot_pick_its_bucket(peer: Peer) -> None:
    async with peer("192.0.2.50") as direct:
        statuses = [
            (
                await direct.get("/users", headers=AUTH | {"X-Forwarded-For": f"203.0.113.{i}"})
            ).status_code
            for i in range(LIMIT + 1)
        ]
    assert statuses == [200] * LIMIT + [429]


async def test_failed_authentications_count_against_the_limit(peer: Peer) -> None:
    async with peer("192.0.2.60") as guesser:
        statuses = [
            (
                await guesser.get("/users", headers={"Authorization": f"Bearer guess-{i}"})
            ).status_code
            for i in range(LIMIT + 2)
        ]
        refused = await guesser.get("/users", headers=AUTH)  # even the right token, now
    assert statuses == [401] * LIMIT + [429, 429]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_the_access_log_names_the_forwarded_client(
    peer: Peer, capsys: pytest.CaptureFixture[str]
) -> None:
    async with peer(PROXY) as proxy:
        await proxy.get("/users", headers=AUTH | {"X-Forwarded-For": "203.0.113.9"})
    lines = [line for line in capsys.readouterr().out.splitlines() if "http.request" in line]
    assert lines
    assert "203.0.113.9" in lines[-1]
    assert PROXY not in lines[-1]
