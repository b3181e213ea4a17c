"""lighter ledger indexes

Every ledger row is written twice on its way to the queue (planned, then queued), and each write
maintains every index. Two were redundant: the idempotency key is the primary key as text, and
the per-user history is served by the (user_id, kind, occasion_date) unique index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_message_logs_user", table_name="message_logs")
    with op.batch_alter_table("message_logs") as batch:
        batch.drop_constraint("uq_message_logs_idempotency_key", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("message_logs") as batch:
        batch.create_unique_constraint("uq_message_logs_idempotency_key", ["idempotency_key"])
    op.create_index("ix_message_logs_user", "message_logs", ["user_id", "scheduled_at"])
