"""A crafted `cursor` is bad input (400 naming `cursor`), never a 500, on both backends."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from support import user_body


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "instant",
    [
        "0001-01-01T00:00:00+14:00",  # UTC falls before year 1
        "9999-12-31T23:59:59-14:00",  # UTC falls after year 9999
        "0001-01-01T00:00:00+00:00",  # the smallest instant there is
        "9999-12-31T23:59:59.999999+00:00",  # the largest
    ],
)
async def test_cursor_with_an_extreme_timestamp_is_400_naming_cursor(
    client: httpx.AsyncClient, instant: str
) -> None:
    assert (await client.post("/users", json=user_body())).status_code == 201
    response = await client.get("/users", params={"cursor": _cursor(f"{instant}|{uuid.uuid4()}")})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in response.json()["errors"]] == ["cursor"]


@pytest.mark.parametrize(
    "raw",
    [
        "2026-06-15T12:00:00|not-a-uuid",
        "2026-06-15T12:00:00|" + str(uuid.UUID(int=0)),  # naive: no offset
        "2026-06-15T12:00:00+00:00",
        "2026-06-15T12:00:00+00:00|a|b",
        "\udcff",
    ],
)
async def test_malformed_cursor_is_400(client: httpx.AsyncClient, raw: str) -> None:
    cursor = _cursor(raw) if raw.isprintable() else "_w"  # "_w" decodes to bytes, not UTF-8
    response = await client.get("/users", params={"cursor": cursor})
    assert response.status_code == 400, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["cursor"]
