"""Database failures that mean "unreachable, retry later" rather than a defect.

The adapter boundary: callers bound a piece of database work with `database_deadline`, and
whatever the driver or the pool raises because the server is down, restarting, out of
connections or silent comes out as one `DatabaseUnavailableError` (503 + Retry-After on the
API). Anything else (a bug, a constraint we did not expect) still propagates as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import exc as sa_exc

from birthday_scheduler.errors import DatabaseUnavailableError
from birthday_scheduler.infra.logging import get_logger

log = get_logger(__name__)

# SQLSTATEs of a server that cannot serve now: connection exceptions (class 08), too many
# connections, shutting down or starting up.
_UNAVAILABLE_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03")
_CHAIN_DEPTH = 8


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
    # asyncpg's own word for a connection that went away under an operation.
    return type(error).__name__ == "InterfaceError" and "connection is closed" in str(error)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the database cannot be reached or did not answer in time."""
    return any(_unavailable(error) for error in _chain(exc))


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
