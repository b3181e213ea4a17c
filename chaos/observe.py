"""What the run reads: the API (as a client would), the ledger (SQL) and the simulator's log.

Every call retries through the outages the run causes itself (PostgreSQL restarting, the API
answering 5xx meanwhile) until its deadline, then raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from chaos.check import Accepted, LedgerRow, Plan

T = TypeVar("T")
ACTIVE = ("pending", "queued", "sending", "failed")


class Gone(Exception):
    """A call that kept failing until its deadline."""


async def retrying(call: Callable[[], Awaitable[T]], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, aiohttp.ClientError,
                TimeoutError, _Retry) as exc:  # fmt: skip
            if time.monotonic() > deadline:
                raise Gone(f"{what}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(0.5)


class _Retry(Exception):
    pass


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self._http = http
        self._base = base

    async def ready(self, base: str | None = None, path: str = "/ready") -> bool:
        try:
            async with self._http.get(f"{base or self._base}{path}") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def create(self, body: dict[str, Any], within: float = 60) -> dict[str, Any] | None:
        """POST /users; the created user, or None when a retry found it created already."""
        tried = False

        async def post() -> dict[str, Any] | None:
            nonlocal tried
            retry, tried = tried, True
            async with self._http.post(f"{self._base}/users", json=body) as response:
                if response.status == 409 and retry:
                    return None  # an earlier try committed and its answer was lost
                if response.status >= 500:
                    raise _Retry(f"POST /users answered {response.status}")
                if response.status != 201:
                    raise RuntimeError(f"POST /users answered {response.status}")
                result: dict[str, Any] = await response.json()
                return result

        return await retrying(post, within, "POST /users")

    async def patch(self, user_id: str, body: dict[str, Any], within: float = 60) -> int:
        """PATCH /users/{id} until it answers below 500; its status."""

        async def send() -> int:
            async with self._http.patch(f"{self._base}/users/{user_id}", json=body) as response:
                if response.status >= 500:
                    raise _Retry(f"PATCH answered {response.status}")
                return response.status

        return await retrying(send, within, "PATCH /users/{id}")

    async def deliveries(self, simulator: str) -> list[Accepted]:
        async def get() -> list[dict[str, Any]]:
            async with self._http.get(f"{simulator}/deliveries") as response:
                response.raise_for_status()
                result: list[dict[str, Any]] = await response.json()
                return result

        return [
            Accepted(d["email"], d["message"], d["idempotencyKey"], _instant(d["time"]))
            for d in await retrying(get, 60, "GET /deliveries")
        ]

    async def simulator_stats(self, simulator: str) -> dict[str, Any]:
        async with self._http.get(f"{simulator}/stats") as response:
            result: dict[str, Any] = await response.json()
            return result


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Ledger:
    """Plain SQL on the service's tables, one short connection per read."""

    def __init__(self, url: str) -> None:
        self._url = url

    async def fetch(self, sql: str, *args: Any, within: float = 90) -> list[Any]:
        async def once() -> list[Any]:
            conn = await asyncpg.connect(self._url, timeout=5)
            try:
                rows: list[Any] = await conn.fetch(sql, *args, timeout=30)
                return rows
            finally:
                await conn.close()

        return await retrying(once, within, "ledger read")

    async def user_ids(self, emails: Sequence[str]) -> dict[str, str]:
        rows = await self.fetch("SELECT email, id FROM users WHERE email = ANY($1)", list(emails))
        return {row["email"]: str(row["id"]) for row in rows}

    async def in_flight(self, emails: Sequence[str]) -> set[str]:
        """Of these users, those whose birthday message is not finished (or not planned yet)."""
        rows = await self.fetch(
            "SELECT u.email, m.status FROM users u LEFT JOIN message_logs m"
            " ON m.user_id = u.id AND m.kind = 'birthday' WHERE u.email = ANY($1)",
            list(emails),
        )
        finished = {row["email"] for row in rows if row["status"] not in (None, *ACTIVE)}
        return {row["email"] for row in rows} - finished

    async def statuses(self) -> dict[str, int]:
        rows = await self.fetch("SELECT status, count(*) AS n FROM message_logs GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    async def unfinished(self, due_by: datetime) -> int:
        """Rows still moving, plus schedules due by `due_by` that no tick has planned yet."""
        rows = await self.fetch(
            "SELECT (SELECT count(*) FROM message_logs WHERE status = ANY($1))"
            " + (SELECT count(*) FROM message_schedules WHERE next_fire_at <= $2) AS n",
            list(ACTIVE),
            due_by,
        )
        return int(rows[0]["n"])

    async def rows(self) -> list[LedgerRow]:
        rows = await self.fetch(
            "SELECT m.idempotency_key, u.email, m.kind, m.occasion_date, m.status, m.attempts,"
            " m.last_error, m.scheduled_at FROM message_logs m JOIN users u ON u.id = m.user_id"
        )
        return [LedgerRow(*row.values()) for row in rows]

    async def plans(self) -> list[Plan]:
        rows = await self.fetch(
            "SELECT u.email, s.kind, s.occasion_date FROM message_schedules s"
            " JOIN users u ON u.id = s.user_id"
        )
        return [Plan(*row.values()) for row in rows]

    async def describe(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """Ledger rows by key, without address or name: for the report on what went wrong."""
        rows = await self.fetch(
            "SELECT idempotency_key AS key, status, attempts, last_error, scheduled_at,"
            " sent_at, updated_at FROM message_logs WHERE idempotency_key = ANY($1)",
            list(keys),
        )
        return [
            {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
            for row in rows
        ]
