"""GET /users/{id}/messages: a user's ledger rows filtered by kind and status, newest scheduled
first, paged by opaque cursor like GET /users. On PostgreSQL and on SQLite."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.kinds import KINDS
from birthday_scheduler.messages.models import MessageLog, MessageStatus
from support import FakeClock, drain_queue, user_body

NOON = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
FIELDS = {
    "id",
    "kind",
    "occasionDate",
    "status",
    "attempts",
    "lastError",
    "scheduledAt",
    "sentAt",
    "idempotencyKey",
    "createdAt",
    "updatedAt",
}


async def create_user(client: httpx.AsyncClient, **overrides: Any) -> str:
    response = await client.post("/users", json=user_body(**overrides))
    assert response.status_code == 201, response.text
    user_id: str = response.json()["id"]
    return user_id


async def add_rows(resources: runtime.Resources, rows: list[dict[str, Any]]) -> None:
    """Ledger rows as the pipeline leaves them, written straight into the real database."""
    async with unit_of_work(resources.sessions) as session:
        await session.execute(insert(MessageLog), rows)


def row(
    user_id: str,
    occasion: date,
    *,
    kind: str = "birthday",
    status: MessageStatus = MessageStatus.SENT,
    hour: int = 9,
    attempts: int = 1,
) -> dict[str, Any]:
    row_id = uuid.uuid4()
    scheduled = datetime(occasion.year, occasion.month, occasion.day, hour, tzinfo=UTC)
    return {
        "id": row_id,
        "user_id": uuid.UUID(user_id),
        "kind": kind,
        "occasion_date": occasion,
        "idempotency_key": str(row_id),
        "status": status.value,
        "attempts": attempts,
        "last_error": "HTTP 500" if status == MessageStatus.DEAD else None,
        "scheduled_at": scheduled,
        "not_before": scheduled,
        "lease_until": None,
        "sent_at": scheduled + timedelta(seconds=1) if status == MessageStatus.SENT else None,
        "created_at": scheduled - timedelta(days=1),
        "updated_at": scheduled + timedelta(seconds=1),
    }


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(rows, key=lambda r: (r["scheduled_at"], r["id"]), reverse=True)
    return [str(r["id"]) for r in ordered]


def flat(pages: list[list[str]]) -> list[str]:
    return [row_id for page in pages for row_id in page]


async def all_pages(client: httpx.AsyncClient, path: str, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        response = await client.get(path, params=params | ({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([message["id"] for message in body["data"]])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor does not advance"


def assert_400_naming(response: httpx.Response, *fields: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert sorted(error["field"] for error in response.json()["errors"]) == sorted(fields)


class AcceptThenTimeOut:
    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult:
        return SendResult(Outcome.RETRYABLE, None, "timed out after 10000 ms")


async def test_a_row_shows_its_attempts_last_error_and_times(
    client: httpx.AsyncClient, resources: runtime.Resources, clock: FakeClock
) -> None:
    clock.set(NOON)
    user_id = await create_user(client, dateOfBirth="1990-07-01", timezoneOffset=0)
    send = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    clock.set(send)
    await runtime.build_scheduler(resources, "test-history").tick(send)
    [message_id] = await drain_queue(resources.require_broker())
    worker = runtime.build_worker(resources, AcceptThenTimeOut(), runtime.build_breaker(resources))
    await worker.handle(message_id)

    response = await client.get(f"/users/{user_id}/messages")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["nextCursor"] is None
    [message] = body["data"]
    assert set(message) == FIELDS
    assert message["id"] == message["idempotencyKey"] == str(message_id)
    assert (message["kind"], message["occasionDate"]) == ("birthday", "2026-07-01")
    assert (message["status"], message["attempts"]) == ("failed", 1)
    assert message["lastError"] == "timed out after 10000 ms"
    assert message["scheduledAt"] == "2026-07-01T09:00:00Z"
    assert message["sentAt"] is None
    assert message["createdAt"] == "2026-07-01T09:00:00Z"
    assert message["updatedAt"] == "2026-07-01T09:00:00Z"


async def test_filters_by_kind_and_status(
    client: httpx.AsyncClient, resources: runtime.Resources
) -> None:
    user_id = await create_user(client)
    other = await create_user(client)
    rows = [
        row(user_id, date(2023, 7, 1), status=MessageStatus.SENT),
        row(user_id, date(2024, 7, 1), status=MessageStatus.DEAD),
        row(user_id, date(2025, 7, 1), status=MessageStatus.SENT),
        row(user_id, date(2025, 7, 1), kind="anniversary", status=MessageStatus.SENT),
        row(user_id, date(2026, 7, 1), kind="anniversary", status=MessageStatus.QUEUED, attempts=0),
        row(other, date(2025, 7, 1), status=MessageStatus.SENT),
    ]
    await add_rows(resources, rows)
    mine = rows[:5]
    path = f"/users/{user_id}/messages"

    def expect(**match: Any) -> list[list[str]]:
        chosen = [r for r in mine if all(r[key] == value for key, value in match.items())]
        return [newest_first(chosen)]

    assert await all_pages(client, path) == expect()
    assert await all_pages(client, path, kind="birthday") == expect(kind="birthday")
    assert await all_pages(client, path, status="sent") == expect(status="sent")
    assert await all_pages(client, path, status="queued") == expect(status="queued")
    assert await all_pages(client, path, kind="birthday", status="dead") == expect(
        kind="birthday", status="dead"
    )
    assert await all_pages(client, path, status="cancelled") == [[]]
    dead = (await client.get(path, params={"status": "dead"})).json()["data"]
    assert [(m["lastError"], m["sentAt"]) for m in dead] == [("HTTP 500", None)]


async def test_kinds_are_those_registered_when_asked(
    client: httpx.AsyncClient, resources: runtime.Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id = await create_user(client)
    await add_rows(resources, [row(user_id, date(2025, 3, 1), kind="name-day")])
    path = f"/users/{user_id}/messages"
    assert_400_naming(await client.get(path, params={"kind": "name-day"}), "kind")
    with monkeypatch.context() as patch:
        patch.setitem(KINDS, "name-day", dataclasses.replace(KINDS["birthday"], name="name-day"))
        registered = await client.get(path, params={"kind": "name-day"})
        assert registered.status_code == 200, registered.text
        assert [m["kind"] for m in registered.json()["data"]] == ["name-day"]
    assert_400_naming(await client.get(path, params={"kind": "name-day"}), "kind")


async def test_pages_lose_and_repeat_nothing(
    client: httpx.AsyncClient, resources: runtime.Resources
) -> None:
    user_id = await create_user(client)
    # Ties on scheduled_at (two kinds on one day) are broken by id, so a page boundary between
    # them neither drops nor repeats one.
    rows = [row(user_id, date(2000 + n, 7, 1)) for n in range(7)]
    rows += [row(user_id, date(2000 + n, 7, 1), kind="anniversary") for n in range(0, 7, 2)]
    rows += [row(user_id, date(2010, 1, 1), status=MessageStatus.CANCELLED, attempts=0)]
    await add_rows(resources, rows)
    path = f"/users/{user_id}/messages"

    for limit in (1, 2, 3, 11, 12, 100):
        pages = await all_pages(client, path, limit=limit)
        assert flat(pages) == newest_first(rows), limit
        assert all(len(page) == limit for page in pages[:-1]), limit
        assert 1 <= len(pages[-1]) <= limit
    sent = [r for r in rows if r["status"] == "sent"]
    pages = await all_pages(client, path, limit=2, status="sent", kind="birthday")
    assert flat(pages) == newest_first([r for r in sent if r["kind"] == "birthday"])

    # Rows written between two requests: one newer than the cursor is not shown on later
    # pages (it is on a fresh first page), one older is; none shown before comes again.
    first = (await client.get(path, params={"limit": 4})).json()
    newer = row(user_id, date(2030, 7, 1))
    older = row(user_id, date(1999, 7, 1))
    await add_rows(resources, [newer, older])
    rest = await all_pages(client, path, limit=4, cursor=first["nextCursor"])
    shown = [m["id"] for m in first["data"]] + flat(rest)
    assert shown == newest_first([*rows, older])
    assert (await all_pages(client, path, limit=4))[0][0] == str(newer["id"])


async def test_default_page_is_twenty(
    client: httpx.AsyncClient, resources: runtime.Resources
) -> None:
    user_id = await create_user(client)
    await add_rows(resources, [row(user_id, date(2000 + n, 7, 1)) for n in range(21)])
    first = (await client.get(f"/users/{user_id}/messages")).json()
    assert len(first["data"]) == 20
    assert first["nextCursor"] is not None


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"kind": "christmas"}, ["kind"]),
        ({"kind": ""}, ["kind"]),
        ({"kind": "b" * 33}, ["kind"]),
        ({"status": "delivered"}, ["status"]),
        ({"status": "SENT"}, ["status"]),
        ({"limit": 0}, ["limit"]),
        ({"limit": 101}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"cursor": "garbage!"}, ["cursor"]),
        ({"cursor": _cursor(f"9999-12-31T23:59:59-14:00|{uuid.uuid4()}")}, ["cursor"]),
        ({"cursor": _cursor(f"2026-06-15T12:00:00|{uuid.uuid4()}")}, ["cursor"]),  # naive
        ({"cursor": _cursor("2026-06-15T12:00:00+00:00|not-a-uuid")}, ["cursor"]),
        ({"cursor": "_w"}, ["cursor"]),  # decodes to bytes that are not UTF-8
        ({"kind": "christmas", "cursor": "garbage!"}, ["cursor", "kind"]),
    ],
)
async def test_bad_parameters_are_400_naming_them(
    client: httpx.AsyncClient, params: dict[str, Any], fields: list[str]
) -> None:
    user_id = await create_user(client)
    assert_400_naming(await client.get(f"/users/{user_id}/messages", params=params), *fields)


async def test_unknown_or_deleted_user_is_404(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"/users/{uuid.uuid4()}/messages", params={"status": "sent"})
    assert missing.status_code == 404, missing.text
    assert missing.headers["content-type"].startswith("application/problem+json")
    user_id = await create_user(client)
    assert (await client.delete(f"/users/{user_id}")).status_code == 204
    assert (await client.get(f"/users/{user_id}/messages")).status_code == 404
