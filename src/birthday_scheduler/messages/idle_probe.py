"""Whether a tick has anything to do: one read, outside any transaction.

Nearly every tick of the year finds nothing due and nothing stale, and its cost is round trips:
a unit of work is BEGIN, the claim, the sweep's lock and COMMIT. On PostgreSQL this probe asks
both questions in one statement on the driver's own connection (no transaction, so the pool's
reset is free); only when it answers yes does the tick open its unit of work. A row that comes
due just after the probe is the next tick's, as it would be had it come due after the claim.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from birthday_scheduler.infra.db import driver_connection
from birthday_scheduler.messages.models import ACTIVE_STATUSES

# The earliest instant of each, not EXISTS(... <= $1): min() reads one end of the index whatever
# the parameter, while a generic plan for EXISTS may pick a scan that expects an early match and
# reads the whole table when nothing is due (10 ms on 100,000 users). Literal statuses (model
# constants) so the planner always matches the sweep's partial index (status IN the active ones).
_ACTIVE = ", ".join(f"'{status.value}'" for status in ACTIVE_STATUSES)
_ANYTHING_TO_DO = (
    "SELECT (SELECT min(next_fire_at) FROM message_schedules) <= $1"  # noqa: S608
    f" OR (SELECT min(lease_until) FROM message_logs WHERE status IN ({_ACTIVE})) <= $1"
)


def supported(engine: AsyncEngine) -> bool:
    """PostgreSQL only: elsewhere the tick reads as before (SQLite's reads are local calls)."""
    return engine.dialect.name == "postgresql"


async def anything_to_do(engine: AsyncEngine, now: datetime) -> bool:
    """True when a schedule is due or a row's lease has run out at `now` (locked or not)."""
    async with driver_connection(engine) as conn:
        return bool(await conn.fetchval(_ANYTHING_TO_DO, now))
