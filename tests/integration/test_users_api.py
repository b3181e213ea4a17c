"""The users API, end to end through the ASGI app, on real PostgreSQL and on SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from support import FakeClock, user_body

RUNBOOK_BODY = {
    "firstName": "Test",
    "lastName": "User",
    "email": "test@example.com",
    "dateOfBirth": "1990-01-01T00:00:00Z",
    "timezoneOffset": 0,
}


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert "Traceback" not in response.text
    assert "SELECT" not in response.text
    if field is not None:
        fields = [error["field"] for error in body.get("errors", [])]
        assert field in fields, body
    return body


async def test_runbook_post_example_gives_201_and_get_returns_it(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 6, 15, 12, 0, tzinfo=UTC))
    created = await client.post("/users", json=RUNBOOK_BODY)
    assert created.status_code == 201, created.text
    user = created.json()
    uuid.UUID(user["id"])
    assert user["firstName"] == "Test"
    assert user["dateOfBirth"] == "1990-01-01"
    assert user["timezoneOffset"] == 0
    assert user["timezone"] is None
    assert user["nextMessageAt"] == "2027-01-01T09:00:00Z"
    assert user["createdAt"] == user["updatedAt"]

    fetched = await client.get(f"/users/{user['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == user


async def test_iana_zone_and_offset_string(client: httpx.AsyncClient, clock: FakeClock) -> None:
    clock.set(datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
    ny = await client.post(
        "/users",
        json=user_body(timezoneOffset=..., timezone="America/New_York", dateOfBirth="1980-07-04"),
    )
    assert ny.status_code == 201, ny.text
    assert ny.json()["nextMessageAt"] == "2026-07-04T13:00:00Z"  # 09:00 EDT
    india = await client.post("/users", json=user_body(timezoneOffset="+05:30"))
    assert india.status_code == 201
    assert india.json()["timezoneOffset"] == 330
    assert india.json()["nextMessageAt"] == "2026-07-01T03:30:00Z"


async def test_created_after_todays_send_instant_gets_next_year(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 7, 1, 9, 0, 1, tzinfo=UTC))
    late = await client.post("/users", json=user_body(dateOfBirth="1990-07-01"))
    assert late.json()["nextMessageAt"] == "2027-07-01T09:00:00Z"
    clock.set(datetime(2026, 7, 1, 8, 59, 59, tzinfo=UTC))
    early = await client.post("/users", json=user_body(dateOfBirth="1990-07-01"))
    assert early.json()["nextMessageAt"] == "2026-07-01T09:00:00Z"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"firstName": ...}, "firstName"),
        ({"lastName": ...}, "lastName"),
        ({"email": ...}, "email"),
        ({"dateOfBirth": ...}, "dateOfBirth"),
        ({"firstName": 42}, "firstName"),
        ({"firstName": "   "}, "firstName"),
        ({"firstName": "x" * 101}, "firstName"),
        ({"firstName": "Bad\nName"}, "firstName"),
        ({"email": "not-an-email"}, "email"),
        ({"email": 7}, "email"),
        ({"dateOfBirth": 0}, "dateOfBirth"),
        ({"dateOfBirth": "1990-02-30"}, "dateOfBirth"),
        ({"dateOfBirth": "01/02/1990"}, "dateOfBirth"),
        ({"dateOfBirth": "1899-12-31"}, "dateOfBirth"),
        ({"dateOfBirth": "2999-01-01"}, "dateOfBirth"),
        ({"timezoneOffset": 841}, "timezoneOffset"),
        ({"timezoneOffset": -721}, "timezoneOffset"),
        ({"timezoneOffset": True}, "timezoneOffset"),
        ({"timezoneOffset": 1.5}, "timezoneOffset"),
        ({"timezoneOffset": "+5:30"}, "timezoneOffset"),
        ({"timezoneOffset": ..., "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezoneOffset": ..., "timezone": 5}, "timezone"),
        ({"isAdmin": True}, "isAdmin"),
        ({"id": str(uuid.uuid4())}, "id"),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    client: httpx.AsyncClient, change: dict, field: str
) -> None:
    response = await client.post("/users", json=user_body(**change))
    assert_problem(response, 400, field)


async def test_both_or_neither_zone_fields_is_400(client: httpx.AsyncClient) -> None:
    both = await client.post("/users", json=user_body(timezone="Europe/Paris"))
    assert "exactly one" in assert_problem(both, 400)["errors"][0]["reason"]
    neither = await client.post("/users", json=user_body(timezoneOffset=...))
    assert_problem(neither, 400)


async def test_duplicate_email_in_another_case_is_409(client: httpx.AsyncClient) -> None:
    first = await client.post("/users", json=user_body(email="Dup.User@Example.com"))
    assert first.status_code == 201
    second = await client.post("/users", json=user_body(email="dup.user@example.COM"))
    body = assert_problem(second, 409, "email")
    assert "dup.user" not in second.text.lower().replace(body["instance"], "")


async def test_deleted_user_frees_the_email(client: httpx.AsyncClient) -> None:
    first = (await client.post("/users", json=user_body(email="again@example.com"))).json()
    assert (await client.delete(f"/users/{first['id']}")).status_code == 204
    again = await client.post("/users", json=user_body(email="again@example.com"))
    assert again.status_code == 201


async def test_concurrent_creates_with_one_email_one_wins(client: httpx.AsyncClient) -> None:
    body = user_body(email="race@example.com")
    responses = await asyncio.gather(*(client.post("/users", json=body) for _ in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1
    assert statuses.count(409) == 7


async def test_malformed_json_wrong_type_and_oversized(client: httpx.AsyncClient) -> None:
    malformed = await client.post(
        "/users", content=b'{"firstName": ', headers={"content-type": "application/json"}
    )
    assert_problem(malformed, 400)
    not_object = await client.post("/users", json=[1, 2])
    assert_problem(not_object, 400)
    text = await client.post(
        "/users", content=b"firstName=x", headers={"content-type": "text/plain"}
    )
    assert_problem(text, 415)
    missing_type = await client.post("/users", content=b"{}")
    assert_problem(missing_type, 415)
    huge = await client.post("/users", json=user_body(firstName="x" * 20_000))
    assert_problem(huge, 413)


async def test_a_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    """No Content-Length to refuse up front: the body is counted as it arrives."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * 10_000

    response = await client.post(
        "/users", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/users/{uuid.uuid4()}"), 404)
    assert_problem(await client.get("/users/not-a-uuid"), 400, "user_id")
    assert_problem(await client.delete(f"/users/{uuid.uuid4()}"), 404)
    assert_problem(await client.patch(f"/users/{uuid.uuid4()}", json={"firstName": "X"}), 404)
    assert_problem(await client.get("/nowhere"), 404)


async def test_put_replaces_and_patch_changes_part(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 1, 10, tzinfo=UTC))
    user = (await client.post("/users", json=user_body(dateOfBirth="1990-03-01"))).json()
    clock.advance(hours=1)
    replaced = await client.put(
        f"/users/{user['id']}",
        json=user_body(firstName="Grace", timezoneOffset=..., timezone="Asia/Kathmandu"),
    )
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["firstName"] == "Grace"
    assert body["timezone"] == "Asia/Kathmandu"
    assert body["timezoneOffset"] is None
    assert body["createdAt"] == user["createdAt"]
    assert body["updatedAt"] != user["updatedAt"]
    assert body["nextMessageAt"] == "2026-07-01T03:15:00Z"  # 09:00 at +05:45

    patched = await client.patch(f"/users/{user['id']}", json={"timezoneOffset": -300})
    assert patched.status_code == 200
    assert patched.json()["timezone"] is None
    assert patched.json()["timezoneOffset"] == -300
    assert patched.json()["firstName"] == "Grace"
    assert patched.json()["nextMessageAt"] == "2026-07-01T14:00:00Z"

    put_partial = await client.put(f"/users/{user['id']}", json={"firstName": "Only"})
    assert_problem(put_partial, 400, "lastName")
    assert_problem(await client.patch(f"/users/{user['id']}", json={}), 400)
    assert_problem(await client.patch(f"/users/{user['id']}", json={"email": None}), 400)
    assert_problem(
        await client.patch(f"/users/{user['id']}", json={"timezone": "UTC", "timezoneOffset": 0}),
        400,
    )
    assert_problem(await client.patch(f"/users/{user['id']}", json={"role": "admin"}), 400, "role")


async def test_patch_email_to_taken_one_is_409(client: httpx.AsyncClient) -> None:
    await client.post("/users", json=user_body(email="taken@example.com"))
    other = (await client.post("/users", json=user_body())).json()
    clash = await client.patch(f"/users/{other['id']}", json={"email": "TAKEN@example.com"})
    assert_problem(clash, 409, "email")


async def test_names_are_trimmed(client: httpx.AsyncClient) -> None:
    created = await client.post("/users", json=user_body(firstName="  Ada  ", lastName=" L "))
    assert created.json()["firstName"] == "Ada"
    assert created.json()["lastName"] == "L"


async def test_delete_then_gone(client: httpx.AsyncClient) -> None:
    user = (await client.post("/users", json=user_body())).json()
    deleted = await client.delete(f"/users/{user['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(await client.get(f"/users/{user['id']}"), 404)
    assert_problem(await client.delete(f"/users/{user['id']}"), 404)


async def test_list_is_cursor_paginated_in_creation_order(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    ids = []
    for _ in range(5):
        clock.advance(seconds=1)
        ids.append((await client.post("/users", json=user_body())).json()["id"])
    await client.delete(f"/users/{ids[2]}")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/users", params=params)).json()
        seen += [u["id"] for u in page["data"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [ids[0], ids[1], ids[3], ids[4]]
    assert pages == 2
    assert_problem(await client.get("/users", params={"limit": 0}), 400, "limit")
    assert_problem(await client.get("/users", params={"limit": 101}), 400, "limit")
    assert_problem(await client.get("/users", params={"cursor": "garbage!"}), 400, "cursor")


async def test_messages_history_of_a_user(client: httpx.AsyncClient) -> None:
    user = (await client.post("/users", json=user_body())).json()
    history = await client.get(f"/users/{user['id']}/messages")
    assert history.status_code == 200
    assert history.json() == {"data": [], "nextCursor": None}
    assert_problem(await client.get(f"/users/{uuid.uuid4()}/messages"), 404)


async def test_errors_never_echo_personal_data(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users", json=user_body(email="secret.person@example.com", timezoneOffset=9999)
    )
    assert_problem(response, 400, "timezoneOffset")
    assert "secret.person" not in response.text
