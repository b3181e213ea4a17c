"""Parts of the ledger model test (tests/integration/test_ledger_model.py) that are not rules.

A scripted message service, the queue as the model sees it, and the few internal entry points
the test cannot reach through the HTTP API (the retention purge): each has one adapter here, so
an internal refactor is fixed in one place.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.clock import Clock
from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.infra.broker.base import Broker
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages import timemath
from birthday_scheduler.messages.ledger import occasions

SEND_TIME = time(9, 0)
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


@dataclass(frozen=True)
class Facts:
    """A user's birthday and zone as the API was last told them."""

    birthday: date
    zone_name: str | None
    offset: int | None

    def zone(self) -> tzinfo:
        return timemath.zone_for(self.zone_name, self.offset)

    def body(self) -> dict[str, Any]:
        zone: dict[str, Any] = (
            {"timezone": self.zone_name}
            if self.zone_name is not None
            else {"timezoneOffset": self.offset}
        )
        return {"dateOfBirth": self.birthday.isoformat(), **zone}

    def occurrence(self, year: int) -> timemath.Occurrence:
        return timemath.occurrence_in_year(self.birthday, self.zone(), SEND_TIME, year)

    def instant_of(self, occasion: date) -> datetime | None:
        """The 09:00-local instant of `occasion` if it is this birthday's occasion that year."""
        occurrence = self.occurrence(occasion.year)
        return occurrence.instant if occurrence.local_date == occasion else None


async def read_ledger(sessions: async_sessionmaker[AsyncSession]) -> list[Row]:
    """Every ledger row, deleted users' included: one read per step is what keeps a step (and
    so the shrinking of a failure) fast; the end of a run reads the API's view instead."""
    from sqlalchemy import select

    from birthday_scheduler.messages.models import MessageLog as L

    columns = (L.id, L.idempotency_key, L.user_id, L.occasion_date, L.status, L.attempts)
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
