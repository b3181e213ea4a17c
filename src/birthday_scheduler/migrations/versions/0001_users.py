"""users

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("last_name", sa.String(length=100), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("date_of_birth", sa.Date(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("timezone_offset_minutes", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(timezone IS NULL) <> (timezone_offset_minutes IS NULL)",
            name=op.f("ck_users_one_zone"),
        ),
        sa.CheckConstraint(
            "timezone_offset_minutes IS NULL OR timezone_offset_minutes BETWEEN -720 AND 840",
            name=op.f("ck_users_offset_range"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index(
        "ux_users_email_live",
        "users",
        [sa.text("lower(email)")],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index(
        "ix_users_live_created",
        "users",
        ["created_at", "id"],
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_users_live_created", table_name="users")
    op.drop_index("ux_users_email_live", table_name="users")
    op.drop_table("users")
