"""Each study's original identifiers, sealed, so the PACS sender can file results under the original study.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-19

``study_identities`` holds one encrypted row per accepted study (``cxrmesh.runtime.db.identities``),
written in the transaction that stores the study and its outbox event. Additive: replicas still on
0004 keep ingesting (their studies have no row, and the PACS sender cannot send those back), and no
existing row changes. No foreign key, like the rest of the schema: the key is the study pseudonym.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_identities",
        sa.Column("study_key", sa.String(128), primary_key=True),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("study_identities")
