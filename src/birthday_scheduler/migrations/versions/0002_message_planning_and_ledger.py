"""message planning and ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('pending', 'queued', 'sending', 'failed')")
FINISHED = sa.text("status IN ('sent', 'dead', 'skipped', 'cancelled')")
STATUSES = "'pending', 'queued', 'sending', 'sent', 'failed', 'dead', 'skipped', 'cancelled'"


def upgrade() -> None:
    op.create_table(
        "message_schedules",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("occasion_date", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_message_schedules_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "kind", name=op.f("pk_message_schedules")),
    )
    op.create_index(
        op.f("ix_message_schedules_next_fire_at"), "message_schedules", ["next_fire_at"]
    )
    op.create_table(
        "message_logs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("occasion_date", sa.Date(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=80), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_message_logs_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_message_logs_attempts")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_message_logs_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_logs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_message_logs_idempotency_key")),
        sa.UniqueConstraint("user_id", "kind", "occasion_date", name="uq_message_logs_occasion"),
    )
    op.create_index(
        "ix_message_logs_active_lease",
        "message_logs",
        ["lease_until"],
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.create_index(
        "ix_message_logs_finished_updated",
        "message_logs",
        ["updated_at"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )
    op.create_index("ix_message_logs_user", "message_logs", ["user_id", "scheduled_at"])


def downgrade() -> None:
    op.drop_index("ix_message_logs_user", table_name="message_logs")
    op.drop_index("ix_message_logs_finished_updated", table_name="message_logs")
    op.drop_index("ix_message_logs_active_lease", table_name="message_logs")
    op.drop_table("message_logs")
    op.drop_index(op.f("ix_message_schedules_next_fire_at"), table_name="message_schedules")
    op.drop_table("message_schedules")
