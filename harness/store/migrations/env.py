"""Alembic environment: harness passes an open connection in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from harness.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via harness.db.upgrade
    raise RuntimeError("run migrations through `harness db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
