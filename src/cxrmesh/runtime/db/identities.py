"""Each study's original identifiers, sealed in the mesh database (table ``study_identities``).

Ingestion writes a study's ``OriginalIdentity`` (``cxrmesh.dicom.reidentify.capture``) in the same
transaction as its study and outbox rows (``Outbox.add_study``); only the PACS sender reads it back,
to file its results under the original study. Everyone else with the database, its backups or its
logs sees ciphertext: the rows are Fernet tokens (AES-128-CBC + HMAC-SHA256, authenticated) under a
key derived with HKDF-SHA256 from the de-identification secret, with its own ``info`` so the key is
independent of the pseudonym HMACs made with the same secret. A token opened with another key is
refused (``IdentityUnreadable``), never misread.
"""

from __future__ import annotations

import base64
import time
from typing import Final

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, select

from cxrmesh.contracts.identity import OriginalIdentity
from cxrmesh.runtime.db import Database, upsert
from cxrmesh.runtime.db.schema import study_identities

KEY_INFO: Final[bytes] = b"cxrmesh re-identification v1"


class IdentityUnreadable(ValueError):
    """A sealed identity cannot be opened: another key, or not a token of this vault."""


class IdentityVault:
    """Seals and opens original identities under a key derived from ``secret`` (the deid secret)."""

    def __init__(self, secret: bytes):
        if not secret:
            raise ValueError("the re-identification vault needs a secret")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(secret)
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, identity: OriginalIdentity) -> bytes:
        return self._fernet.encrypt(identity.to_json())

    def open(self, sealed: bytes) -> OriginalIdentity:
        try:
            return OriginalIdentity.from_json(self._fernet.decrypt(sealed))
        except (InvalidToken, ValueError) as exc:
            raise IdentityUnreadable("the sealed identity cannot be opened with this key") from exc

    def __repr__(self) -> str:
        return "IdentityVault(<key>)"


def add_identity(conn: Connection, study_key: str, sealed: bytes) -> None:
    """Store a study's sealed identity inside the caller's transaction; a second write keeps the first."""
    row = {"study_key": study_key, "sealed": sealed, "created_at": time.time()}
    upsert(conn, study_identities, row, key=("study_key",), update=[])


class IdentityStore:
    """Reads the sealed identities (the PACS sender's side)."""

    def __init__(self, db: Database, vault: IdentityVault):
        self.db, self.vault = db, vault

    def get(self, study_key: str) -> OriginalIdentity | None:
        """The study's original identity; None when none was kept (ingested before migration 0005)."""
        with self.db.read() as conn:
            sealed = conn.execute(
                select(study_identities.c.sealed).where(study_identities.c.study_key == study_key)
            ).scalar_one_or_none()
        return None if sealed is None else self.vault.open(sealed)
