"""The API benchmarks' ceiling: a bare ASGI app doing the same work with raw asyncpg.

No framework, no ORM, no validation library, no metrics: bearer-token check, JSON in and out,
and the same work the service does, in as few round trips: a user and its schedule inserted by
one statement (a CTE), a user and its next message read by one. Each statement is its own
transaction, so the pool does not reset a connection on release (asyncpg's default reset is one
more round trip a request, which the service does not pay either). Served by uvicorn with the
service's defaults (uvloop, httptools), one process, a pool of DATABASE_POOL_MAX (10)
connections:

    DATABASE_URL=... API_TOKENS=t python -m uvicorn bench.bare_app:app --port 8001
"""

from __future__ import annotations

import hmac
import json
import os
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INSERT_USER_AND_SCHEDULE = """
WITH new_user AS (
    INSERT INTO users (id, first_name, last_name, email, date_of_birth, timezone,
                       timezone_offset_minutes, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $7)
    RETURNING id
)
INSERT INTO message_schedules (user_id, kind, next_fire_at, occasion_date)
SELECT id, 'birthday', $8, $9 FROM new_user
"""
SELECT_USER = """
SELECT u.id, u.first_name, u.last_name, u.email, u.date_of_birth, u.timezone,
       u.timezone_offset_minutes, u.created_at, s.next_fire_at
FROM users u LEFT JOIN message_schedules s ON s.user_id = u.id AND s.kind = 'birthday'
WHERE u.id = $1 AND u.deleted_at IS NULL
"""


def next_birthday(born: date, offset_minutes: int, now: datetime) -> tuple[datetime, date]:
    """The next 09:00 local on the birthday (29 February: 1 March in common years)."""
    zone_delta = timedelta(minutes=offset_minutes)
    for year in (now.year - 1, now.year, now.year + 1):
        try:
            day = born.replace(year=year)
        except ValueError:
            day = date(year, 3, 1)
        instant = datetime.combine(day, time(9), tzinfo=UTC) - zone_delta
        if instant > now:
            return instant, day
    raise AssertionError("unreachable: a birthday comes every year")


async def _keep(_connection: asyncpg.Connection) -> None:
    """The pool's reset: nothing to undo after a statement that was its own transaction."""


class BareApp:
    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        tokens = os.environ.get("API_TOKENS", "")
        self.tokens = [t.strip().encode() for t in tokens.split(",") if t.strip()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        if path == "/alive":
            await self._reply(send, 200, {"status": "ok"})
            return
        if not path.startswith("/users"):
            await self._reply(send, 404, {"title": "Not Found"})
            return
        if not self._authorised(scope):
            await self._reply(send, 401, {"title": "Unauthorized"})
            return
        if scope["method"] == "POST" and path == "/users":
            await self._create(receive, send)
        elif scope["method"] == "GET" and path.startswith("/users/"):
            await self._read(path.removeprefix("/users/"), send)
        else:
            await self._reply(send, 405, {"title": "Method Not Allowed"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool = await asyncpg.create_pool(
                    os.environ["DATABASE_URL"], min_size=1, max_size=10, reset=_keep
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization" and value.startswith(b"Bearer "):
                given = value[7:]
                return any(hmac.compare_digest(given, token) for token in self.tokens)
        return not self.tokens

    async def _create(self, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = json.loads(body)
        now = datetime.now(UTC)
        born = date.fromisoformat(data["dateOfBirth"][:10])
        offset = int(data.get("timezoneOffset") or 0)
        fire_at, occasion = next_birthday(born, offset, now)
        user_id = uuid.uuid4()
        assert self.pool is not None
        await self.pool.execute(
            INSERT_USER_AND_SCHEDULE, user_id, data["firstName"], data["lastName"], data["email"],
            born, offset, now, fire_at, occasion,
        )  # fmt: skip
        await self._reply(
            send,
            201,
            {
                "id": str(user_id),
                "firstName": data["firstName"],
                "lastName": data["lastName"],
                "email": data["email"],
                "dateOfBirth": born.isoformat(),
                "timezoneOffset": offset,
                "nextMessageAt": fire_at.isoformat(),
            },
        )

    async def _read(self, raw_id: str, send: Send) -> None:
        try:
            user_id = uuid.UUID(raw_id)
        except ValueError:
            await self._reply(send, 404, {"title": "Not Found"})
            return
        assert self.pool is not None
        row = await self.pool.fetchrow(SELECT_USER, user_id)
        if row is None:
            await self._reply(send, 404, {"title": "Not Found"})
            return
        await self._reply(
            send,
            200,
            {
                "id": str(row["id"]),
                "firstName": row["first_name"],
                "lastName": row["last_name"],
                "email": row["email"],
                "dateOfBirth": row["date_of_birth"].isoformat(),
                "timezone": row["timezone"],
                "timezoneOffset": row["timezone_offset_minutes"],
                "createdAt": row["created_at"].isoformat(),
                "nextMessageAt": row["next_fire_at"] and row["next_fire_at"].isoformat(),
            },
        )

    @staticmethod
    async def _reply(send: Send, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


app = BareApp()
