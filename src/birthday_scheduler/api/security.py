"""Bearer-token auth and a per-client rate limit for the /users endpoints."""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import Request

from birthday_scheduler.errors import ProblemError


@dataclass(frozen=True)
class TokenAuth:
    tokens: tuple[str, ...]

    # async, as every dependency here: FastAPI runs a plain def in its thread pool.
    async def __call__(self, request: Request) -> None:
        self.check(request.headers.get("authorization", ""))

    def check(self, header: str) -> None:
        """Raises 401 unless `header` (the Authorization value) carries one of the tokens."""
        if not self.tokens:
            return
        scheme, _, supplied = header.partition(" ")
        # Compare against every token so the time taken does not reveal which one matched.
        valid = scheme.lower() == "bearer" and any(
            [hmac.compare_digest(supplied.encode(), token.encode()) for token in self.tokens]
        )
        if not valid:
            raise ProblemError(
                401,
                "Unauthorized",
                "Send a valid token as `Authorization: Bearer <token>`.",
                headers={"WWW-Authenticate": "Bearer"},
            )


@dataclass(eq=False)  # FastAPI caches dependencies by hash: identity is what we want
class RateLimiter:
    """A token bucket per client address: `per_minute` requests, refilled continuously."""

    per_minute: int
    max_clients: int = 10_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    async def __call__(self, request: Request) -> None:
        self.take(request.client.host if request.client else "unknown")

    def take(self, client: str) -> None:
        """Takes one request from `client`'s bucket, or raises 429 (taking nothing)."""
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            retry = max(1, round((1 - tokens) * 60 / self.per_minute))
            raise ProblemError(
                429,
                "Too Many Requests",
                "Slow down and retry later.",
                headers={"Retry-After": str(retry)},
            )
        self._buckets[client] = (tokens - 1, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


@dataclass(eq=False)
class Guard:
    """The rate limit, then the token check, as one dependency: each dependency costs FastAPI
    a resolution per request. The limit comes first, so failed authentications count too:
    guessing tokens ends in 429."""

    limit: RateLimiter
    auth: TokenAuth

    async def __call__(self, request: Request) -> None:
        client = request.client.host if request.client else "unknown"
        self.check(client, request.headers.get("authorization", ""))

    def check(self, client: str, authorization: str) -> None:
        self.limit.take(client)
        self.auth.check(authorization)
