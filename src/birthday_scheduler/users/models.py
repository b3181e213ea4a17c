"""The users table."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time

from sqlalchemy import JSON, CheckConstraint, Date, Index, Integer, String, Time, Uuid, func, text
from sqlalchemy.orm import Mapped, mapped_column

from birthday_scheduler.infra.orm import Base, UTCDateTime

NAME_MAX = 100
EMAIL_MAX = 254
TIMEZONE_MAX = 64


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    first_name: Mapped[str] = mapped_column(String(NAME_MAX))
    last_name: Mapped[str] = mapped_column(String(NAME_MAX))
    email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    date_of_birth: Mapped[date] = mapped_column(Date)
    timezone: Mapped[str | None] = mapped_column(String(TIMEZONE_MAX))
    timezone_offset_minutes: Mapped[int | None] = mapped_column(Integer)
    anniversary_date: Mapped[date | None] = mapped_column(Date)
    # The user's own local send time; NULL means SEND_LOCAL_TIME.
    send_local_time: Mapped[time | None] = mapped_column(Time)
    # Kinds the user turned off or on explicitly, e.g. {"anniversary": false}; a kind not
    # named here is on.
    notifications: Mapped[dict[str, bool]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("(timezone IS NULL) <> (timezone_offset_minutes IS NULL)", name="one_zone"),
        CheckConstraint(
            "timezone_offset_minutes IS NULL OR timezone_offset_minutes BETWEEN -720 AND 840",
            name="offset_range",
        ),
        # Unique among live users, case-insensitively; a deleted user frees the address.
        Index(
            "ux_users_email_live",
            func.lower(text("email")),
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        # Keyset pagination over live users in creation order.
        Index(
            "ix_users_live_created",
            "created_at",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
    )
