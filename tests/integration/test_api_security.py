"""Bearer tokens on /users* (401) and the per-client rate limit (429); ops endpoints stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from birthday_scheduler.settings import Settings
from support import api_client, user_body


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as http:
        yield http


@pytest.fixture
async def guarded(sqlite_database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.model_validate(
        {
            "database_url": sqlite_database_url,
            "api_tokens": "first,second",
            "rate_limit_per_minute": 0,
        }
    )
    async for http in _client(settings):
        yield http


@pytest.fixture
async def limited(sqlite_database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=sqlite_database_url, rate_limit_per_minute=3)
    async for http in _client(settings):
        yield http


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic first"},
        {"Authorization": "first"},
    ],
)
async def test_users_need_a_valid_bearer_token(
    guarded: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await guarded.post("/users", json=user_body(), headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "first" not in response.text
    assert (await guarded.get("/users", headers=headers)).status_code == 401


async def test_every_configured_token_is_accepted(guarded: httpx.AsyncClient) -> None:
    for token in ("first", "second"):
        response = await guarded.post(
            "/users", json=user_body(), headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 201, response.text


async def test_operations_endpoints_are_never_behind_auth(guarded: httpx.AsyncClient) -> None:
    for path in ("/health", "/alive", "/ready", "/metrics", "/health/db", "/docs"):
        assert (await guarded.get(path)).status_code == 200, path


async def test_over_the_rate_limit_is_429_with_retry_after(limited: httpx.AsyncClient) -> None:
    statuses = [(await limited.get("/users")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = await limited.get("/users")
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) >= 1
    assert (await limited.get("/health")).status_code == 200
