"""The store's first schema: ML Metadata's artifacts, executions, contexts, events, attributions
and associations.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table("artifacts", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("type", sa.String(100), nullable=False),
                    sa.Column("uri", sa.Text, nullable=False), sa.Column("properties", sa.Text, nullable=False),
                    sa.Column("created_at", tz, nullable=False))
    op.create_table("executions", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("type", sa.String(100), nullable=False),
                    sa.Column("component", sa.String(200), nullable=False),
                    sa.Column("state", sa.String(20), nullable=False),
                    sa.Column("cache_key", sa.String(64), nullable=False),
                    sa.Column("properties", sa.Text, nullable=False), sa.Column("started_at", tz, nullable=False),
                    sa.Column("ended_at", tz, nullable=True))
    op.create_table("contexts", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("type", sa.String(100), nullable=False),
                    sa.Column("name", sa.String(300), nullable=False),
                    sa.Column("properties", sa.Text, nullable=False), sa.Column("created_at", tz, nullable=False),
                    sa.UniqueConstraint("type", "name"))
    op.create_table("events", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
                    sa.Column("execution_id", sa.Integer, sa.ForeignKey("executions.id"), nullable=False),
                    sa.Column("kind", sa.String(10), nullable=False), sa.Column("role", sa.String(100), nullable=False),
                    sa.Column("at", tz, nullable=False))
    op.create_table("attributions",
                    sa.Column("context_id", sa.Integer, sa.ForeignKey("contexts.id"), primary_key=True),
                    sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), primary_key=True))
    op.create_table("associations",
                    sa.Column("context_id", sa.Integer, sa.ForeignKey("contexts.id"), primary_key=True),
                    sa.Column("execution_id", sa.Integer, sa.ForeignKey("executions.id"), primary_key=True))
    for table, column in (("artifacts", "type"), ("executions", "type"), ("executions", "cache_key"),
                          ("events", "artifact_id"), ("events", "execution_id")):
        op.create_index(f"ix_{table}_{column}", table, [column])


def downgrade() -> None:
    for table in ("associations", "attributions", "events", "contexts", "executions", "artifacts"):
        op.drop_table(table)
