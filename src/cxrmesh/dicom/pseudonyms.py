"""Keyed pseudonyms: everything that replaces an identifier is an HMAC-SHA256 under the service secret.

So ingesting the same file twice gives byte-identical output (idempotent ingestion) and a patient's
studies stay linked, while nobody without the secret can recompute a pseudonym from a known MRN or
UID. The per-patient date shift is keyed the same way.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Final

from pydicom.dataset import Dataset

KEY_HEX_CHARS: Final[int] = 32  # 128-bit pseudonyms
# Date shift: whole weeks (keeps the weekday, which matters for workload and admission patterns)
# between 52 and 521 weeks (~1-10 years) into the past, keyed per patient.
SHIFT_MIN_WEEKS: Final[int] = 52
SHIFT_SPAN_WEEKS: Final[int] = 470


def keyed_digest(secret: bytes, domain: str, *parts: str) -> bytes:
    """HMAC-SHA256 over a domain tag and length-prefixed parts (so ("ab","c") != ("a","bc"))."""
    msg = bytearray()
    for part in (domain, *parts):
        b = part.encode("utf-8")
        msg += len(b).to_bytes(8, "big") + b
    return hmac.new(secret, bytes(msg), hashlib.sha256).digest()


def keyed_hex(secret: bytes, domain: str, *parts: str) -> str:
    return keyed_digest(secret, domain, *parts).hex()[:KEY_HEX_CHARS]


def keyed_uid(secret: bytes, uid: str) -> str:
    """A '2.25.' UID from the keyed hash of `uid`, stamped as an RFC 9562 version-8 UUID."""
    raw = bytearray(keyed_digest(secret, "uid", str(uid).strip())[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(raw, 'big')}"


def patient_identity(ds: Dataset) -> tuple[str, str]:
    """(issuer, patient id); without a Patient ID each study counts as its own patient."""
    pid = str(ds.get("PatientID", "") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    if not pid:
        return "no-patient-id", str(ds.get("StudyInstanceUID", "")).strip()
    return issuer, pid


def date_offset(secret: bytes, identity: tuple[str, str]) -> timedelta:
    h = int.from_bytes(keyed_digest(secret, "date-shift", *identity)[:8], "big")
    return -timedelta(weeks=SHIFT_MIN_WEEKS + h % SHIFT_SPAN_WEEKS)
