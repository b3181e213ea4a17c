"""Parts of the ledger model test (tests/integration/test_ledger_model.py) that are not rules.

A scripted message service, the queue as the model sees it, the few internal entry points
the test cannot reach through the HTTP API (the retention purge): each has one adapter here, so
an internal refactor is fixed in one place. And the model's view of a user's planning facts
(`Facts`) and of a ledger row (`Row`); the invariants are in ledger_model_checks.py.
"""

from __future__ import annotations

import asyncio
import enum
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.clock import Clock
from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.infra.broker.base import Broker
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages import timemath
from birthday_scheduler.messages.ledger import occasions
from support import drop_database, pg_admin, pg_url

SEND_TIME = time(9, 0)
WINDOW = timedelta(hours=72)  # the model's CATCH_UP_WINDOW_HOURS
PURGE_BATCH = 10_000


class Behaviour(enum.Enum):
    """What the message service does with one send (and whether it accepted the message)."""

    OK = "200"
    REJECT_500 = "500 before accepting"
    ACCEPT_THEN_500 = "500 after accepting"
    TIMEOUT_AFTER_ACCEPT = "time-out after accepting"
    PERMANENT_400 = "400"
    KILL_AFTER_ACCEPT = "worker killed after the service accepted"
    KILL_BEFORE_SEND = "worker killed between claim and send"

    @property
    def accepts(self) -> bool:
        return self in (
            Behaviour.OK,
            Behaviour.ACCEPT_THEN_500,
            Behaviour.TIMEOUT_AFTER_ACCEPT,
            Behaviour.KILL_AFTER_ACCEPT,
        )


class WorkerKilled(BaseException):
    """Raised out of the sender: the worker process died between its claim and its outcome."""


@dataclass(frozen=True)
class Accepted:
    email: str
    key: str
    at: datetime


@dataclass
class ScriptedSender:
    """A `Sender` whose next answer the model chooses; records what the service accepted."""

    clock: Clock
    behaviour: Behaviour = Behaviour.OK
    accepted: list[Accepted] = field(default_factory=list)
    calls: int = 0

    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult:
        self.calls += 1
        behaviour = self.behaviour
        if behaviour.accepts:
            self.accepted.append(Accepted(email, idempotency_key, self.clock.now()))
        if behaviour in (Behaviour.KILL_AFTER_ACCEPT, Behaviour.KILL_BEFORE_SEND):
            raise WorkerKilled
        if behaviour is Behaviour.OK:
            return SendResult(Outcome.SENT, 200, "sent")
        if behaviour is Behaviour.PERMANENT_400:
            return SendResult(Outcome.PERMANENT, 400, "HTTP 400")
        if behaviour is Behaviour.TIMEOUT_AFTER_ACCEPT:
            return SendResult(Outcome.RETRYABLE, None, "timed out")
        return SendResult(Outcome.RETRYABLE, 500, "HTTP 500")


def story_order(ids: list[UUID], rows_by_user: list[dict[str, Row]]) -> list[UUID]:
    """The queued messages in the order of their users' creation, occasion and kind, not the
    queue's: that follows ids the server draws at random, and a story must replay the same."""
    rank = {
        UUID(row.id): (n, row.occasion, row.kind)
        for n, rows in enumerate(rows_by_user)
        for row in rows.values()
    }
    unknown = (len(rows_by_user), date.min, "")
    return sorted(set(ids), key=lambda message_id: (*rank.get(message_id, unknown), message_id))


class QueueTap:
    """The in-process broker's main queue, read and taken from one message at a time, so each
    delivery is one deterministic step (memory.py keeps its queue in `_ready`, an asyncio.Queue).

    Messages stay in the broker until a worker takes one: the scheduler's sweep sees the real
    backlog. A message whose worker was killed is published again, as the broker's requeue of
    an unacknowledged message does.
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._ready: asyncio.Queue[Any] = broker._ready

    def _envelopes(self) -> list[Any]:
        held = [self._ready.get_nowait() for _ in range(self._ready.qsize())]
        for envelope in held:
            self._ready.put_nowait(envelope)
        return held

    def ids(self) -> list[UUID]:
        return [envelope.message_id for envelope in self._envelopes()]

    def take(self, message_id: UUID) -> None:
        held = [self._ready.get_nowait() for _ in range(self._ready.qsize())]
        chosen = next(i for i, envelope in enumerate(held) if envelope.message_id == message_id)
        for envelope in held[:chosen] + held[chosen + 1 :]:
            self._ready.put_nowait(envelope)

    async def requeue(self, message_id: UUID) -> None:
        await self.broker.publish([message_id])

    def duplicates(self) -> list[UUID]:
        counts = Counter(self.ids())
        return [message_id for message_id, count in counts.items() if count > 1]


async def replay_dead_letters(
    sessions: async_sessionmaker[AsyncSession], broker: Broker, clock: Clock, lease: timedelta
) -> None:
    """What `birthday-scheduler dlq replay` (every dead letter) does."""
    from birthday_scheduler.delivery import dlq

    replay_all = getattr(dlq, "replay_all", None)
    if replay_all is not None:
        await replay_all(sessions, broker, clock, lease, lambda _report: None)
    else:  # before the paged replay (issue 9, item 12)
        await dlq.replay(sessions, broker, None, clock.now(), lease)


async def purge_finished(
    sessions: async_sessionmaker[AsyncSession], now: datetime, age: timedelta
) -> int:
    """What `birthday-scheduler messages purge --older-than AGE` does, at the fake clock's now
    (entrypoints/admin.py reads the system clock)."""
    cutoff = now - age
    total = 0
    while True:
        async with unit_of_work(sessions) as session:
            deleted = await occasions.purge_finished(session, cutoff, PURGE_BATCH)
        total += deleted
        if deleted < PURGE_BATCH:
            return total


BIRTHDAY = "birthday"
ANNIVERSARY = "anniversary"
MODEL_KINDS = (BIRTHDAY, ANNIVERSARY)


@dataclass(frozen=True)
class Facts:
    """What a user's messages are planned from, as the API was last told it: the dates the
    occasions recur on, the zone, and the user's own send time (None: 09:00)."""

    birthday: date
    zone_name: str | None
    offset: int | None
    anniversary: date | None = None
    send_time: time | None = None

    def zone(self) -> tzinfo:
        return timemath.zone_for(self.zone_name, self.offset)

    def anchor(self, kind: str) -> date | None:
        """The date `kind`'s occasion recurs on, or None when the user has none."""
        return {BIRTHDAY: self.birthday, ANNIVERSARY: self.anniversary}[kind]

    def body(self, notifications: dict[str, bool] | None = None) -> dict[str, Any]:
        """The fields of a POST or PUT; an absent anniversary, send time or notifications is
        left out."""
        zone: dict[str, Any] = (
            {"timezone": self.zone_name}
            if self.zone_name is not None
            else {"timezoneOffset": self.offset}
        )
        body = {"dateOfBirth": self.birthday.isoformat(), **zone}
        if self.anniversary is not None:
            body["anniversaryDate"] = self.anniversary.isoformat()
        if self.send_time is not None:
            body["sendLocalTime"] = self.send_time.strftime("%H:%M")
        if notifications is not None:
            body["notifications"] = notifications
        return body

    def occurrence(self, kind: str, year: int) -> timemath.Occurrence | None:
        """`kind`'s occasion in `year` at the user's send time, or None: no such date, or the
        date's own year or before (no message in the year of the birth or the anniversary)."""
        anchor = self.anchor(kind)
        if anchor is None or year <= anchor.year:
            return None
        return timemath.occurrence_in_year(anchor, self.zone(), self.send_time or SEND_TIME, year)

    def instant_of(self, kind: str, occasion: date) -> datetime | None:
        """The instant of `occasion` if it is this `kind`'s occasion that year."""
        occurrence = self.occurrence(kind, occasion.year)
        return occurrence.instant if occurrence and occurrence.local_date == occasion else None


async def read_history(http: httpx.AsyncClient, user_id: str) -> dict[str, Row]:
    """A user's rows through GET /users/{id}/messages, every page."""
    rows: dict[str, Row] = {}
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = await http.get(f"/users/{user_id}/messages", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        for item in page["data"]:
            rows[item["idempotencyKey"]] = Row.from_api(user_id, item)
        if page["nextCursor"] is None:
            return rows
        params["cursor"] = page["nextCursor"]


async def read_ledger(sessions: async_sessionmaker[AsyncSession]) -> list[Row]:
    """Every ledger row, deleted users' included: one read per step is what keeps a step (and
    so the shrinking of a failure) fast; the end of a run reads the API's view instead."""
    from sqlalchemy import select

    from birthday_scheduler.messages.models import MessageLog as L

    columns = (L.id, L.idempotency_key, L.user_id, L.kind, L.occasion_date, L.status, L.attempts)
    columns += (L.scheduled_at, L.updated_at, L.last_error, L.sent_at)
    async with sessions() as session:
        result = await session.execute(select(*columns))
        return [Row(str(i), key, str(user), *rest) for i, key, user, *rest in result.all()]


@dataclass
class Row:
    """A ledger row as the table or GET /users/{id}/messages last showed it."""

    id: str
    key: str
    user: str
    kind: str
    occasion: date
    status: str
    attempts: int
    scheduled_at: datetime
    updated_at: datetime
    last_error: str | None
    sent_at: datetime | None
    purged: bool = False

    @classmethod
    def from_api(cls, user: str, item: dict[str, Any]) -> Row:
        def instant(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value)

        return cls(
            id=item["id"],
            key=item["idempotencyKey"],
            user=user,
            kind=item["kind"],
            occasion=date.fromisoformat(item["occasionDate"]),
            status=item["status"],
            attempts=item["attempts"],
            scheduled_at=datetime.fromisoformat(item["scheduledAt"]),
            updated_at=datetime.fromisoformat(item["updatedAt"]),
            last_error=item["lastError"],
            sent_at=instant(item["sentAt"]),
        )

    @property
    def blocks_its_year(self) -> bool:
        """The year has its message, or one was started: a re-plan must not plan it again."""
        if self.purged:
            return self.status == "sent"
        return self.status not in ("cancelled", "skipped") or self.attempts > 0

    @property
    def used_its_year(self) -> bool:
        """The occasion was planned for good (a tick moved the schedule past it)."""
        return self.status != "cancelled"

    @property
    def started(self) -> bool:
        """An attempt was made: the occasion finishes under its own key, whatever the edits."""
        return self.attempts > 0 or self.status == "sent"


# --- what the stories draw from --------------------------------------------------------------

MODEL_SETTINGS: dict[str, Any] = {
    "rate_limit_per_minute": 0,
    "catch_up_window_hours": int(WINDOW.total_seconds() // 3600),
    "max_delivery_attempts": 3,
    "retry_base_delay_ms": 1_000,
    "retry_max_delay_ms": 60_000,
    # The breaker waits in real time while open; it is not what this test is about.
    "circuit_breaker_failure_threshold": 10_000,
    "database_pool_min": 0,
    "database_pool_max": 4,
}

# 24 February to 8 March of a leap year (29 February falls on 28 February in 2027), so
# occasions come due inside the run; zones from UTC-12 to UTC+14.
BIRTHDAYS = [date(1992, 2, 24) + timedelta(days=d) for d in range(14)]
# Anniversaries on the same days: of leap and common years before, and of the run's own year
# (no message until 2028; 2 and 5 March are refused as in the future until the clock gets
# there, today somewhere on Earth).
ANNIVERSARIES: list[date | None] = [
    None,
    date(2020, 2, 29),
    date(2026, 2, 28),
    date(2025, 3, 1),
    date(2026, 3, 3),
    date(2027, 2, 26),
    date(2027, 3, 2),
    date(2027, 3, 5),
]
# None: the default 09:00. Midnight and 23:59 move an occasion's instant a day in UTC.
SEND_TIMES: list[time | None] = [None, time(0, 0), time(9, 0), time(17, 45), time(23, 59)]
ZONES: list[tuple[str | None, int | None]] = [
    ("Pacific/Kiritimati", None),
    ("Asia/Tokyo", None),
    ("Europe/Paris", None),
    ("UTC", None),
    ("America/New_York", None),
    ("Pacific/Pago_Pago", None),
    (None, -720),
    (None, -300),
    (None, 0),
    (None, 330),
    (None, 840),
]
# What a POST or PUT says of notifications (None: nothing, every kind on).
NOTIFICATIONS: list[dict[str, bool] | None] = [
    None,
    {"anniversary": False},
    {"birthday": False},
    {"birthday": True, "anniversary": True},
]

FACTS = st.tuples(
    st.sampled_from(BIRTHDAYS),
    st.sampled_from(ZONES),
    st.sampled_from(ANNIVERSARIES),
    st.sampled_from(SEND_TIMES),
).map(lambda drawn: Facts(drawn[0], *drawn[1], drawn[2], drawn[3]))


def enabled_by(notifications: dict[str, bool] | None) -> frozenset[str]:
    """The kinds on after a POST or PUT that says `notifications`: every kind not turned off."""
    return frozenset(k for k in MODEL_KINDS if (notifications or {}).get(k, True))


@dataclass(frozen=True)
class Provision:
    """Makes a fresh database per example: a PostgreSQL clone of the template, or a copy of
    the SQLite template file."""

    backend: str
    template: str

    async def create(self) -> str:
        name = f"bs_model_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        if self.backend == "postgresql":
            await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            return pg_url(name)
        target = Path(self.template).with_name(f"{name}.sqlite3")
        shutil.copy(self.template, target)
        return f"sqlite:///{target}"

    async def drop(self, url: str) -> None:
        if self.backend == "postgresql":
            await drop_database(url.rsplit("/", 1)[1])
        else:
            os.remove(url.removeprefix("sqlite:///"))
