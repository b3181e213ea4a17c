"""Database failures that mean "unreachable, retry later" rather than a defect.

The adapter boundary: callers bound a piece of database work with `database_deadline`, and
whatever the driver or the pool raises because the server is down, restarting, out of
connections or silent comes out as one `DatabaseUnavailableError` (503 + Retry-After on the
API). Anything else (a bug, a constraint we did not expect) still propagates as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import exc as sa_exc

from birthday_scheduler.errors import DatabaseUnavailableError
from birthday_scheduler.infra.logging import get_logger

log = get_logger(__name__)

# SQLSTATEs of a server that cannot serve now: connection exceptions (class 08), too many
# connections, shutting down or starting up.
_UNAVAILABLE_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03")
_CHAIN_DEPTH = 8
T = TypeVar("T")


def _chain(exc: BaseException) -> list[BaseException]:
    """The error, the driver error SQLAlchemy wraps, and their causes."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < _CHAIN_DEPTH:
        seen.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return seen


def _unavailable(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    # sqlalchemy.exc.TimeoutError: no pooled connection came free within pool_timeout.
    if isinstance(error, TimeoutError | OSError | sa_exc.TimeoutError):
        return True  # refused, reset, unresolvable host; connect or command time-out
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return True
    return _refused_by_driver(error)


def _refused_by_driver(error: BaseException) -> bool:
    """asyncpg refused to send anything on a connection it knows is dead."""
    name = type(error).__name__
    # Closed: the server ended it and the socket closed.
    if name == "InterfaceError" and "connection is closed" in str(error):
        return True
    # Ended while it sat in the pool, before its socket closed: it got the server's FATAL
    # notice and waits for a ReadyForQuery that never comes.
    return name == "InternalClientError" and "another operation" in str(error)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the database cannot be reached or did not answer in time."""
    return any(_unavailable(error) for error in _chain(exc))


async def retry_stale(
    attempt: Callable[[], Awaitable[T]], *, safe: Callable[[BaseException], bool]
) -> T:
    """Run `attempt`; when it fails because its connection was dead (killed by a restart the
    database has since recovered from) and `safe(error)` says running it again cannot write
    twice, run it once more: the failure invalidated the pool, so the second attempt gets a
    fresh connection. A database that is really down fails the second attempt too."""
    try:
        return await attempt()
    except Exception as exc:
        if not (is_unavailable(exc) and safe(exc)):
            raise
        log.info("db.retried_on_fresh_connection", error=type(exc).__name__)
        return await attempt()


def always(_error: BaseException) -> bool:
    """For reads: running one again is always safe."""
    return True


@asynccontextmanager
async def database_deadline(seconds: float) -> AsyncIterator[None]:
    """Bound database work in time; an unreachable or silent database raises
    DatabaseUnavailableError instead of hanging or surfacing a driver error.

    SQLAlchemy invalidates a connection whose statement was cancelled or timed out (it is
    closed, never returned to the pool half-used), so the deadline leaves nothing behind.
    """
    try:
        async with asyncio.timeout(seconds):
            yield
    except DatabaseUnavailableError:
        raise
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("db.unavailable", error=type(exc).__name__)
        raise DatabaseUnavailableError() from exc
