"""Alembic environment: always run with a connection handed in by hub.storage.migrate."""

from alembic import context

from hub.storage.models import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
