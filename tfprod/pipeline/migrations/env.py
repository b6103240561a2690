"""Alembic's environment: the connection comes from MetadataStore (config.attributes["connection"])."""

from alembic import context

from tfprod.pipeline.store import _Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=_Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
