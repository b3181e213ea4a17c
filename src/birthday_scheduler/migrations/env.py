"""Alembic environment. Always driven through birthday_scheduler.infra.migrate, which hands in a
live connection, so migrations run the same way from the CLI, at start-up and in tests."""

from __future__ import annotations

import warnings

from alembic import context

from birthday_scheduler.infra.all_models import Base

# SQLite cannot reflect the users' lower(email) index while a batch migration rebuilds another
# table; the index itself is untouched, so the warning is noise for operators.
warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based")

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `birthday-scheduler db migrate`, not bare alembic")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
