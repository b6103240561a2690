"""Alembic migrations of the metadata store's schema, for SQLite and PostgreSQL alike.

`MetadataStore` upgrades a store to the newest revision when it opens it; a maintainer adds a
revision under versions/ (`alembic revision` with script_location pointing here, or by hand) when
store.py's tables change."""
