"""The first schema: ingestion studies and outbox, stage results, prognosis joins, study views.

Revision ID: 0001
Revises:
Create Date: 2026-12-04

Written out in full (not taken from ``schema.metadata``): a migration records what the schema WAS,
so later changes to ``schema.py`` come as new revisions. ``tests/unit/test_database.py`` checks that
head matches ``schema.py``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

KEY = sa.String(128)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("study_key", KEY, primary_key=True),
        sa.Column("patient_key", KEY, nullable=False),
        sa.Column("ingested_at", sa.Float, nullable=False),
        sa.Column("event", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("key", KEY, nullable=False),
        sa.Column("type_name", sa.String(255), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("lease_until", sa.Float),
    )
    pending = sa.column("sent_at").is_(None)
    op.create_index("outbox_pending", "outbox", ["id"], sqlite_where=pending, postgresql_where=pending)
    op.create_table(
        "stage_results",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("study_key", KEY, primary_key=True),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "prognosis_joins",
        sa.Column("study_key", KEY, primary_key=True),
        sa.Column("embedded", sa.LargeBinary),
        sa.Column("quantified", sa.LargeBinary),
        sa.Column("clinical", sa.LargeBinary),
    )
    op.create_table(
        "view_stages",
        sa.Column("study_key", KEY, primary_key=True),
        sa.Column("stage", sa.String(32), primary_key=True),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "view_payloads",
        sa.Column("study_key", KEY, primary_key=True),
        sa.Column("stage", sa.String(32), primary_key=True),
        sa.Column("message", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for table in ("view_payloads", "view_stages", "prognosis_joins", "stage_results", "outbox", "studies"):
        op.drop_table(table)
