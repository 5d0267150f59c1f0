"""The trace context of each outbox row: the study's trace goes on from the call that stored it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12

``traceparent`` and ``tracestate`` are the W3C headers of the span current when the row was stored
(the ``Ingest`` call, a reconciler re-drive); the relay publishes the record with them, so the stages'
spans join that trace (``cxrmesh.runtime.tracing``). Nullable and additive: rows stored before, or by a
replica still on 0003, have none, and their records start a trace at the first consumer instead.
``tracestate`` is text: W3C allows 32 entries of up to 512 characters each.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("traceparent", sa.String(128)))
    op.add_column("outbox", sa.Column("tracestate", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("tracestate")
        batch.drop_column("traceparent")
