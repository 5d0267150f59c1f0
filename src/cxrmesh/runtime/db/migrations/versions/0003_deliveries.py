"""Count the writes of each stage result: more than one means the study's event was handled again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Additive with a server default, so replicas still on 0002 keep writing rows; the fault suite and
operators read the count as "duplicate deliveries" (at-least-once redeliveries and re-drives).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stage_results", sa.Column("deliveries", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("stage_results") as batch:
        batch.drop_column("deliveries")
