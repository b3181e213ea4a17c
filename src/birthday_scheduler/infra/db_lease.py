"""A lease of pooled connections for one-statement hot paths (infra/db.driver_connection).

SQLAlchemy's async pool runs every checkout and every check-in in a greenlet of its own:
about 9 µs each before any pool work, 33 µs a request in all, and more when requests queue for
a connection (an asyncio.timeout and a greenlet switch per wait). Measured under wrk on
GET /users/{id} that was a sixth of the API's CPU. The lease checks connections out of that
pool once and hands them from request to request itself: a list pop and push, and a plain
future per waiting request.

It never holds more than `limit` connections (the API leaves two of DATABASE_POOL_MAX to its
other routes, its probes and console), and gives back to the pool any connection unused for
`idle_s`, so a quiet API holds none. A leased connection the server has closed (a restart, a
terminated backend) is invalidated at its next hand-out, as the pool's own checkout would, and
a connection a failure left in an unknown state is invalidated, never handed on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from birthday_scheduler.infra.db_faults import is_unavailable
from birthday_scheduler.infra.logging import get_logger

log = get_logger(__name__)

_LEASES: weakref.WeakKeyDictionary[AsyncEngine, ConnectionLease] = weakref.WeakKeyDictionary()


def lease_of(engine: AsyncEngine) -> ConnectionLease | None:
    return _LEASES.get(engine)


class ConnectionLease:
    def __init__(self, engine: AsyncEngine, limit: int, idle_s: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("a lease needs at least one connection")
        self.engine = engine
        self.limit = limit
        self.idle_s = idle_s
        self.held = 0  # connections checked out of the pool: in use or idle here
        self._idle: list[tuple[PoolProxiedConnection, float]] = []  # last parked last
        self._waiters: collections.deque[asyncio.Future[PoolProxiedConnection | None]] = (
            collections.deque()
        )
        self._trim: asyncio.TimerHandle | None = None
        self._returning: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def open(cls, engine: AsyncEngine, limit: int, idle_s: float = 1.0) -> ConnectionLease:
        """A lease that driver_connection uses for `engine` until it is closed."""
        lease = cls(engine, limit, idle_s)
        _LEASES[engine] = lease
        return lease

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiters)

    async def acquire(self) -> PoolProxiedConnection:
        while True:
            while self._idle:
                pooled, _ = self._idle.pop()
                if pooled.driver_connection.is_closed():  # type: ignore[union-attr]
                    await self._discard(pooled, None)
                    continue
                return pooled
            if self.held < self.limit:
                self.held += 1
                try:
                    return await self.engine.raw_connection()
                except BaseException:
                    self.held -= 1
                    self._wake_for_slot()
                    raise
            waiter: asyncio.Future[PoolProxiedConnection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                # Cancelled (a deadline): a connection handed over meanwhile goes on.
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.release(waiter.result())  # type: ignore[arg-type]
                elif waiter.done() and not waiter.cancelled():
                    self._wake_for_slot()
                raise
            if handed is not None:
                return handed
            # None: a connection was dropped, so a slot is free: open one.

    def release(self, pooled: PoolProxiedConnection) -> None:
        """A connection back from a statement that ended cleanly (or with an error the server
        reported, which leaves it usable): to the longest waiter, else parked."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(pooled)
                return
        if self._closed:
            self.held -= 1
            self._give_back([pooled])
            return
        self._idle.append((pooled, asyncio.get_running_loop().time()))
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(self.idle_s, self._trim_idle)

    async def drop(self, pooled: PoolProxiedConnection, exc: BaseException) -> None:
        """A connection a failure interrupted: invalidated (closed, its pool slot freed)."""
        await self._discard(pooled, exc)

    async def close(self) -> None:
        """Every idle connection back to the pool; ones in use go back when released."""
        self._closed = True
        _LEASES.pop(self.engine, None)
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        parked, self._idle = [pooled for pooled, _ in self._idle], []
        self.held -= len(parked)
        self._give_back(parked)
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)

    async def _discard(self, pooled: PoolProxiedConnection, exc: BaseException | None) -> None:
        self.held -= 1
        try:
            if exc is not None and is_unavailable(exc):
                # What SQLAlchemy does on a disconnect: the connections from before a restart
                # are replaced at their next checkout (a private method, its own).
                pool: Any = self.engine.sync_engine.pool
                pool._invalidate(pooled, exc, _checkin=False)
            await greenlet_spawn(pooled.invalidate, exc)
        finally:
            self._wake_for_slot()

    def _wake_for_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _trim_idle(self) -> None:
        self._trim = None
        cutoff = asyncio.get_running_loop().time() - self.idle_s
        stale = [pooled for pooled, parked in self._idle if parked <= cutoff]
        self._idle = [(pooled, parked) for pooled, parked in self._idle if parked > cutoff]
        self.held -= len(stale)
        self._give_back(stale)
        if self._idle:
            self._trim = asyncio.get_running_loop().call_later(self.idle_s, self._trim_idle)

    def _give_back(self, connections: list[PoolProxiedConnection]) -> None:
        if not connections:
            return

        async def give_back() -> None:
            for pooled in connections:
                try:
                    await greenlet_spawn(pooled.close)
                except Exception as exc:  # a connection that died while parked
                    log.info("db.lease_give_back_failed", error=type(exc).__name__)
                    with contextlib.suppress(Exception):
                        await greenlet_spawn(pooled.invalidate, exc)

        task = asyncio.get_running_loop().create_task(give_back())
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)
