"""The planning table (next fire instant per user and kind) and the message ledger."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from birthday_scheduler.infra.orm import Base, UTCDateTime


class MessageStatus(StrEnum):
    PENDING = "pending"  # committed, publish not confirmed: it failed, or a replay's is pending
    QUEUED = "queued"  # published; planned rows are written so, published right after the commit
    SENDING = "sending"  # claimed by a worker; the attempt is counted
    SENT = "sent"
    FAILED = "failed"  # retryable failure, waiting for not_before
    DEAD = "dead"  # permanent failure or attempts spent; a copy is in the DLQ
    SKIPPED = "skipped"  # found later than the catch-up window
    CANCELLED = "cancelled"  # user deleted, or re-planned before any attempt was made


# Rows still moving through the pipeline; the sweeper watches their leases.
ACTIVE_STATUSES = (
    MessageStatus.PENDING,
    MessageStatus.QUEUED,
    MessageStatus.SENDING,
    MessageStatus.FAILED,
)
FINISHED_STATUSES = (
    MessageStatus.SENT,
    MessageStatus.DEAD,
    MessageStatus.SKIPPED,
    MessageStatus.CANCELLED,
)
_ACTIVE_SQL = ", ".join(f"'{status.value}'" for status in ACTIVE_STATUSES)
_ALL_SQL = ", ".join(f"'{status.value}'" for status in MessageStatus)


class MessageSchedule(Base):
    """The next instant each user's message of each kind fires; the scheduler's only scan."""

    __tablename__ = "message_schedules"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_fire_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    occasion_date: Mapped[date] = mapped_column(Date)


class MessageLog(Base):
    """The ledger: one row per (user, kind, local occasion date); the source of truth."""

    __tablename__ = "message_logs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    occasion_date: Mapped[date] = mapped_column(Date)
    # The row id as text: unique through the primary key, so it carries no index of its own.
    idempotency_key: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Earliest instant a worker may attempt it (scheduled_at, then the retry time).
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    # When whoever holds the row (publisher, queue, worker) is presumed lost and the sweeper
    # publishes it again. NULL once finished.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("user_id", "kind", "occasion_date", name="uq_message_logs_occasion"),
        CheckConstraint(f"status IN ({_ALL_SQL})", name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index(
            "ix_message_logs_active_lease",
            "lease_until",
            postgresql_where=text(f"status IN ({_ACTIVE_SQL})"),
            sqlite_where=text(f"status IN ({_ACTIVE_SQL})"),
        ),
        Index(
            "ix_message_logs_finished_updated",
            "updated_at",
            postgresql_where=text("status IN ('sent', 'dead', 'skipped', 'cancelled')"),
            sqlite_where=text("status IN ('sent', 'dead', 'skipped', 'cancelled')"),
        ),
    )


class StartedOccasion(Base):
    """A (user, kind, year) whose occasion had an attempt made, kept when the retention purge
    deletes its ledger row: that year is never planned again, whatever the edits."""

    __tablename__ = "started_occasions"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class SchedulerHeartbeat(Base):
    """The last finished tick of each scheduler replica."""

    __tablename__ = "scheduler_heartbeats"

    replica: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_tick_at: Mapped[datetime] = mapped_column(UTCDateTime)
