"""Anniversaries, a send time per user, opt-out per kind and the message texts, through the API
and the real scheduler and worker. On PostgreSQL and on SQLite, with a FakeClock.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.messages.models import MessageLog
from birthday_scheduler.messages.scheduler import Scheduler
from birthday_scheduler.settings import Settings, load_settings
from support import FakeClock, drain_queue, user_body

EVE = datetime(2026, 6, 30, 12, tzinfo=UTC)
SEND = datetime(2026, 7, 1, 9, tzinfo=UTC)


class Service:
    def __init__(self) -> None:
        self.accepted: list[tuple[str, str]] = []  # (idempotency key, text)

    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult:
        self.accepted.append((idempotency_key, message))
        return SendResult(Outcome.SENT, 200, "sent")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        rate_limit_per_minute=0,
        message_template_anniversary="Congratulations, {firstName}: another year together",
    )


@pytest.fixture
def scheduler(resources: runtime.Resources) -> Scheduler:
    return runtime.build_scheduler(resources, "test-occasions")


async def create(client: httpx.AsyncClient, **fields: object) -> dict[str, object]:
    response = await client.post(
        "/users", json=user_body(**{"dateOfBirth": "1990-07-01", **fields})
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def patch(client: httpx.AsyncClient, user_id: object, **fields: object) -> dict[str, object]:
    response = await client.patch(f"/users/{user_id}", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def ledger(resources: runtime.Resources, user_id: object) -> list[tuple[str, date, str]]:
    async with resources.sessions() as session:
        rows = await session.execute(
            select(MessageLog.kind, MessageLog.occasion_date, MessageLog.status)
            .where(MessageLog.user_id == uuid.UUID(str(user_id)))
            .order_by(MessageLog.occasion_date, MessageLog.kind)
        )
        return [tuple(row) for row in rows.all()]  # type: ignore[misc]


async def test_birthday_and_anniversary_on_one_day_are_two_messages_with_their_own_texts(
    client: httpx.AsyncClient, resources: runtime.Resources, scheduler: Scheduler, clock: FakeClock
) -> None:
    clock.set(EVE)
    user = await create(client, anniversaryDate="2015-07-01")
    assert user["anniversaryDate"] == "2015-07-01"
    assert user["notifications"] == {"birthday": True, "anniversary": True}
    assert user["nextMessages"] == [
        {"kind": "anniversary", "at": "2026-07-01T09:00:00Z"},
        {"kind": "birthday", "at": "2026-07-01T09:00:00Z"},
    ]
    assert user["nextMessageAt"] == "2026-07-01T09:00:00Z"

    assert (await scheduler.tick(SEND)).planned == 2
    service = Service()
    worker = runtime.build_worker(resources, service, runtime.build_breaker(resources))
    clock.set(SEND)
    for message_id in await drain_queue(resources.require_broker()):
        await worker.handle(message_id)

    keys = [key for key, _ in service.accepted]
    assert len(set(keys)) == 2
    assert sorted(text for _, text in service.accepted) == [
        "Congratulations, Ada: another year together",  # MESSAGE_TEMPLATE_ANNIVERSARY
        "Hey, Ada Lovelace it's your birthday",  # the default text
    ]


async def test_no_anniversary_message_in_the_anniversarys_own_year(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.set(EVE)
    user = await create(client, anniversaryDate="2026-06-30")  # married today
    assert {"kind": "anniversary", "at": "2027-06-30T09:00:00Z"} in user["nextMessages"]  # type: ignore[operator]


async def test_a_29_february_anniversary_falls_on_28_february_in_common_years(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.set(datetime(2027, 1, 10, tzinfo=UTC))
    user = await create(client, anniversaryDate="2008-02-29", dateOfBirth="1990-07-01")
    assert user["nextMessages"][0] == {"kind": "anniversary", "at": "2027-02-28T09:00:00Z"}  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"anniversaryDate": "2999-01-01"}, "anniversaryDate", "future"),
        ({"anniversaryDate": "1899-12-31"}, "anniversaryDate", "1900"),
        ({"anniversaryDate": 0}, "anniversaryDate", "string"),
        ({"sendLocalTime": "7:30"}, "sendLocalTime", "HH:MM"),
        ({"sendLocalTime": "24:00"}, "sendLocalTime", "HH:MM"),
        ({"sendLocalTime": 930}, "sendLocalTime", "HH:MM"),
        ({"notifications": {"wedding": True}}, "notifications", "unknown message kind"),
        ({"notifications": {"birthday": "no"}}, "notifications", "boolean"),
    ],
)
async def test_bad_preferences_are_a_400_naming_the_field(
    client: httpx.AsyncClient, fields: dict[str, object], field: str, reason: str
) -> None:
    response = await client.post("/users", json=user_body(**fields))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problems = response.json()["errors"]
    assert any(p["field"].startswith(field) and reason in p["reason"] for p in problems), problems


async def test_a_users_send_time_moves_every_kind_and_null_restores_the_default(
    client: httpx.AsyncClient, resources: runtime.Resources, clock: FakeClock
) -> None:
    clock.set(EVE)
    user = await create(client, timezone="Europe/Paris", sendLocalTime="07:30", timezoneOffset=...)
    assert user["sendLocalTime"] == "07:30"
    assert user["nextMessageAt"] == "2026-07-01T05:30:00Z"  # 07:30 at +02:00
    back = await patch(client, user["id"], sendLocalTime=None)
    assert back["sendLocalTime"] is None
    assert back["nextMessageAt"] == "2026-07-01T07:00:00Z"  # 09:00 at +02:00


async def test_turning_a_kind_off_cancels_it_and_on_again_never_sends_a_year_twice(
    client: httpx.AsyncClient, resources: runtime.Resources, scheduler: Scheduler, clock: FakeClock
) -> None:
    clock.set(EVE)
    user = await create(client, anniversaryDate="2015-07-01")
    await scheduler.tick(SEND)
    await drain_queue(resources.require_broker())
    assert await ledger(resources, user["id"]) == [
        ("anniversary", date(2026, 7, 1), "queued"),
        ("birthday", date(2026, 7, 1), "queued"),
    ]

    clock.set(SEND + timedelta(seconds=5))
    off = await patch(client, user["id"], notifications={"anniversary": False})

    assert off["notifications"] == {"birthday": True, "anniversary": False}
    assert [m["kind"] for m in off["nextMessages"]] == ["birthday"]  # type: ignore[union-attr]
    # Only the anniversary's unstarted message is cancelled; the birthday's is untouched.
    assert await ledger(resources, user["id"]) == [
        ("anniversary", date(2026, 7, 1), "cancelled"),
        ("birthday", date(2026, 7, 1), "queued"),
    ]

    # On again later the same morning: planned from now, so this year's 09:00 is past.
    clock.set(SEND + timedelta(hours=1))
    on = await patch(client, user["id"], notifications={"anniversary": True})
    assert {"kind": "anniversary", "at": "2027-07-01T09:00:00Z"} in on["nextMessages"]  # type: ignore[operator]
    assert (await scheduler.tick(SEND + timedelta(hours=2))).planned == 0


async def test_changing_the_anniversary_leaves_the_birthday_plan_alone(
    client: httpx.AsyncClient, resources: runtime.Resources, scheduler: Scheduler, clock: FakeClock
) -> None:
    clock.set(EVE)
    user = await create(client, anniversaryDate="2015-09-12")
    await scheduler.tick(SEND)
    await drain_queue(resources.require_broker())

    clock.set(SEND + timedelta(minutes=1))
    moved = await patch(client, user["id"], anniversaryDate="2015-10-01")

    assert {"kind": "anniversary", "at": "2026-10-01T09:00:00Z"} in moved["nextMessages"]  # type: ignore[operator]
    assert await ledger(resources, user["id"]) == [("birthday", date(2026, 7, 1), "queued")]
    cleared = await patch(client, user["id"], anniversaryDate=None)
    assert cleared["anniversaryDate"] is None
    assert [m["kind"] for m in cleared["nextMessages"]] == ["birthday"]  # type: ignore[union-attr]


async def test_put_replaces_the_preferences_whole(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.set(EVE)
    user = await create(client, anniversaryDate="2015-09-12", notifications={"birthday": False})
    assert [m["kind"] for m in user["nextMessages"]] == ["anniversary"]  # type: ignore[union-attr]
    body = user_body(dateOfBirth="1990-07-01")
    response = await client.put(f"/users/{user['id']}", json=body)
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["anniversaryDate"] is None
    assert replaced["notifications"] == {"birthday": True, "anniversary": True}
    assert [m["kind"] for m in replaced["nextMessages"]] == ["birthday"]


def test_a_template_with_an_unknown_placeholder_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(
        ConfigurationError, match="MESSAGE_TEMPLATE_ANNIVERSARY: unknown placeholder"
    ):
        load_settings({"MESSAGE_TEMPLATE_ANNIVERSARY": "Dear {first_name}"})
