"""What every ledger module shares: the table, the status alias, and updates by id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, update
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.messages.models import MessageLog, MessageStatus

S = MessageStatus
ledger_table = cast(Table, MessageLog.__table__)
# Each id is its own bind parameter outside PostgreSQL's arrays, and parameters are bounded.
MAX_IDS_PER_STATEMENT = 10_000


async def update_ids(session: AsyncSession, ids: Sequence[uuid.UUID], **values: Any) -> None:
    """Set `values` on the rows with these ids, in slices of MAX_IDS_PER_STATEMENT."""
    for start in range(0, len(ids), MAX_IDS_PER_STATEMENT):
        chunk = ids[start : start + MAX_IDS_PER_STATEMENT]
        await session.execute(
            update(ledger_table).where(ledger_table.c.id.in_(chunk)).values(**values)
        )
