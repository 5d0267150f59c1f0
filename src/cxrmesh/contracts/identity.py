"""A study's original identifiers, as ingestion keeps them (sealed) for the way back to the PACS.

Stated here, below both of its users, because the DICOM side (``cxrmesh.dicom.reidentify``: captures
it and writes it back into an output) and the store (``cxrmesh.runtime.db.identities``: seals it into
the database) are siblings of one layer and must not import each other. Pure data and its JSON form;
it is PHI, so it is never logged and its ``repr`` shows no value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

IDENTITY_FORMAT: Final[int] = 1  # version of the JSON form, checked when read back


@dataclass(frozen=True)
class OriginalIdentity:
    """What the de-identification replaced, by the de-identified value or by keyword.

    ``uids``: de-identified UID -> original UID (Study, Series, SOP Instance and Frame of Reference
    UIDs, where the original had them). ``attributes``: the original Patient/Study module values by
    keyword (only those the original had).
    """

    uids: dict[str, str] = field(repr=False)
    attributes: dict[str, str] = field(repr=False)

    def to_json(self) -> bytes:
        doc = {"format": IDENTITY_FORMAT, "uids": self.uids, "attributes": self.attributes}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> OriginalIdentity:
        """Raises ValueError for anything but this module's own JSON form (no value in the message)."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError("not an original identity (malformed JSON)") from exc
        if not isinstance(doc, dict) or doc.get("format") != IDENTITY_FORMAT:
            raise ValueError(f"not an original identity of format {IDENTITY_FORMAT}")
        uids, attributes = doc.get("uids"), doc.get("attributes")
        if not (_str_map(uids) and _str_map(attributes)):
            raise ValueError("an original identity maps strings to strings")
        return cls(uids=dict(uids), attributes=dict(attributes))


def _str_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )
