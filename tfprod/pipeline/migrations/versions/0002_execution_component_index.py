"""An index on executions.component (lineage and reports look executions up by component).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_index("ix_executions_component", "executions", ["component"])


def downgrade() -> None:
    op.drop_index("ix_executions_component", "executions")
