"""What the sweep does with a row whose holder is presumed lost. Pure: the scheduler feeds it
the rows it locked, the time, and whether the main queue still holds a backlog.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from birthday_scheduler.messages.models import MessageStatus


class StaleRow(NamedTuple):
    id: uuid.UUID
    status: str
    scheduled_at: datetime


@dataclass(frozen=True)
class SweepPlan:
    republish: list[uuid.UUID] = field(default_factory=list)
    # `queued` and `sending` rows whose lease ran out while the queue still holds a backlog:
    # the broker most likely holds their copy (published, or redelivered after a worker died),
    # so they are handed back as `queued` with a renewed lease instead of a second copy.
    keep_waiting: list[uuid.UUID] = field(default_factory=list)
    late: list[uuid.UUID] = field(default_factory=list)


def plan_sweep(
    rows: list[StaleRow], now: datetime, catch_up_window: timedelta, queue_has_backlog: bool
) -> SweepPlan:
    """Decide each stale row's fate.

    - Past the catch-up window: skipped, never sent days late. A `sending` row is handed back
      instead (its worker may still answer); the worker's claim then skips it.
    - `queued` or `sending`, while the queue is not empty: kept waiting. A confirmed publish to
      a durable queue is not lost while the queue holds messages, a killed worker's unacked
      message is redelivered by the broker, and re-publishing at every lease would grow the
      queue without bound while the workers are down. Once the queue is empty, such a row past
      its lease has no copy left (a purged queue, a redelivery dropped while the row was still
      leased) and is published again.
    - Everything else (unpublished `pending`, a `failed` row whose retry is due) is published
      again.
    """
    plan = SweepPlan()
    on_time_since = now - catch_up_window
    for row in rows:
        if row.scheduled_at < on_time_since and row.status != MessageStatus.SENDING:
            plan.late.append(row.id)
        elif row.status in (MessageStatus.QUEUED, MessageStatus.SENDING) and queue_has_backlog:
            plan.keep_waiting.append(row.id)
        else:
            plan.republish.append(row.id)
    return plan


def late_reason(window: timedelta) -> str:
    """The reason a row past the window is skipped: stored in last_error, shown by the API."""
    return f"past the catch-up window ({window.total_seconds() / 3600:g} h): not sent late"
