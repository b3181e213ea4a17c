"""occasions and preferences: anniversary date, per-user send time, notifications per kind

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Plain ADD/DROP COLUMN, not batch mode: on SQLite batch mode rebuilds the table and loses the
# expression index that keeps live emails unique (lower(email)), which it cannot reflect.
_COLUMNS = ("notifications", "send_local_time", "anniversary_date")


def upgrade() -> None:
    op.add_column("users", sa.Column("anniversary_date", sa.Date(), nullable=True))
    op.add_column("users", sa.Column("send_local_time", sa.Time(), nullable=True))
    op.add_column(
        "users",
        sa.Column("notifications", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )


def downgrade() -> None:
    # Anniversary schedules and their ledger rows go too: without the date they cannot be
    # planned, and the birthday-only schema has no kind for them.
    op.execute("DELETE FROM message_schedules WHERE kind <> 'birthday'")
    op.execute("DELETE FROM message_logs WHERE kind <> 'birthday'")
    for column in _COLUMNS:
        # SQLite (3.35+) and PostgreSQL both take ALTER TABLE ... DROP COLUMN as it is.
        op.execute(f"ALTER TABLE users DROP COLUMN {column}")
