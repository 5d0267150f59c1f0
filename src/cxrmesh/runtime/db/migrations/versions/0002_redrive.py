"""The reconciler's bookkeeping on ``studies``: re-drive count, next deadline, and when it gave up.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10

Additive (old replicas keep inserting studies without naming these columns): ``redrive_after``
defaults to 0, so every study, including those already stored, is looked at once when it is older
than the reconciler's deadline; the study view's verdict then settles it (NULL) or it is re-driven.
Both indexes are partial, so they hold only the few studies the reconciler still watches or gave up
on, not the whole archive.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("redrives", sa.Integer, nullable=False, server_default="0"))
    op.add_column("studies", sa.Column("redrive_after", sa.Float, server_default="0"))
    op.add_column("studies", sa.Column("stuck_since", sa.Float))
    due = sa.column("redrive_after").is_not(None)
    op.create_index(
        "studies_redrive_due", "studies", ["redrive_after"], sqlite_where=due, postgresql_where=due
    )
    stuck = sa.column("stuck_since").is_not(None)
    op.create_index("studies_stuck", "studies", ["stuck_since"], sqlite_where=stuck, postgresql_where=stuck)


def downgrade() -> None:
    op.drop_index("studies_stuck", "studies")
    op.drop_index("studies_redrive_due", "studies")
    with op.batch_alter_table("studies") as batch:
        for column in ("stuck_since", "redrive_after", "redrives"):
            batch.drop_column(column)
