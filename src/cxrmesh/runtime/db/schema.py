"""Every table of the mesh's database, stated once (the migrations in ``migrations/versions`` create them).

One database for the mesh; each table has one owning service (named in its comment). Keys are study
pseudonyms, never identifiers a person could read. Times are UNIX seconds (float), like the events.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()
KEY = String(128)  # a study pseudonym (64 hex today), with room
# a 64-bit id that still auto-increments on SQLite (which does so only for INTEGER PRIMARY KEY)
ID = BigInteger().with_variant(Integer(), "sqlite")

# ingestion: one row per accepted study (dedup), with its reconciler's bookkeeping: re-drives so far,
# when it may next be re-driven (NULL: settled, no longer watched) and when the reconciler gave up ...
studies = Table(
    "studies",
    metadata,
    Column("study_key", KEY, primary_key=True),
    Column("patient_key", KEY, nullable=False),
    Column("ingested_at", Float, nullable=False),
    Column("event", LargeBinary, nullable=False),
    Column("redrives", Integer, nullable=False, server_default="0"),
    Column("redrive_after", Float, server_default="0"),
    Column("stuck_since", Float),
)
Index(
    "studies_redrive_due",
    studies.c.redrive_after,
    sqlite_where=studies.c.redrive_after.is_not(None),
    postgresql_where=studies.c.redrive_after.is_not(None),
)
Index(
    "studies_stuck",
    studies.c.stuck_since,
    sqlite_where=studies.c.stuck_since.is_not(None),
    postgresql_where=studies.c.stuck_since.is_not(None),
)

# ... and the transactional outbox its relays publish (claimed under a lease: one relay per row), with
# the W3C trace context of the call that stored the row, so its record continues that call's trace
outbox = Table(
    "outbox",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("topic", String(255), nullable=False),
    Column("key", KEY, nullable=False),
    Column("type_name", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claimed_by", String(128)),
    Column("lease_until", Float),
    Column("traceparent", String(128)),
    Column("tracestate", Text),
)
Index(
    "outbox_pending",
    outbox.c.id,
    sqlite_where=outbox.c.sent_at.is_(None),
    postgresql_where=outbox.c.sent_at.is_(None),
)

# ingestion: each accepted study's original identifiers, encrypted (``cxrmesh.runtime.db.identities``),
# written with its studies row; read only by the PACS sender, to file results under the original study
study_identities = Table(
    "study_identities",
    metadata,
    Column("study_key", KEY, primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

# embedding, segmentation, quantification, prognosis: the latest result per study (their Get RPCs)
stage_results = Table(
    "stage_results",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("study_key", KEY, primary_key=True),
    Column("message", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("deliveries", Integer, nullable=False, server_default="1"),  # writes: >1 = handled again
)

# prognosis: the three inputs of the head, met per study whatever replica each arrived at
prognosis_joins = Table(
    "prognosis_joins",
    metadata,
    Column("study_key", KEY, primary_key=True),
    Column("embedded", LargeBinary),
    Column("quantified", LargeBinary),
    Column("clinical", LargeBinary),
)

# studyview: each stage's state and latest message per study
view_stages = Table(
    "view_stages",
    metadata,
    Column("study_key", KEY, primary_key=True),
    Column("stage", String(32), primary_key=True),
    Column("state", Integer, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("updated_at", Float, nullable=False),
)
view_payloads = Table(
    "view_payloads",
    metadata,
    Column("study_key", KEY, primary_key=True),
    Column("stage", String(32), primary_key=True),
    Column("message", LargeBinary, nullable=False),
)
