"""The mesh's durable state in one database: SQLite on one machine, PostgreSQL for replicas.

Every store (the ingestion outbox, each stage's results, the prognosis joins, the study views) goes
through :class:`Database`, with the tables declared once in ``schema`` and created by the Alembic
migrations in ``migrations/`` (run by each process at start, serialised across replicas).
"""

from cxrmesh.runtime.db.engine import Database, DatabaseError, open_database
from cxrmesh.runtime.db.upsert import upsert

__all__ = ["Database", "DatabaseError", "open_database", "upsert"]
