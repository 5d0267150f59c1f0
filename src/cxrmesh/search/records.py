"""What the case store holds and answers: a study's record, a filter over records, a scored neighbour.

Plain dataclasses with no Milvus import, so the vote and the services can use them without a store.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class CaseRecord:
    """One study as the store holds it. "" / -1 mean unknown; labels may arrive after the embedding."""

    study_key: str
    patient_key: str
    embedding: np.ndarray  # (dim,) float32, unit length
    model_version: str
    site: str = ""
    diagnosis: str = ""  # "" unknown, else one of DIAGNOSES
    outcome: int = -1  # -1 unknown, 0/1 intubated within 72 h
    age_band: str = ""
    sex: str = ""
    study_date: str = ""  # YYYY-MM-DD
    attention_ref: str = ""  # blob reference of the attention map
    clinical: str = ""  # clinical variables as JSON ("" unknown)

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare arrays with ==, whose truth value is ambiguous.
        if not isinstance(other, CaseRecord):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            if f.name == "embedding"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, holds an array


@dataclass(frozen=True)
class Neighbour:
    """A stored case and its cosine similarity to the query (embeddings are unit length)."""

    record: CaseRecord
    similarity: float


@dataclass(frozen=True)
class CaseFilter:
    """Which stored cases may be returned; empty fields do not restrict.

    ``model_version`` (an addition to the first API) should always be set by the service: embeddings of
    two model versions live in different spaces and their cosine means nothing.
    """

    sites: tuple[str, ...] = ()
    diagnoses: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    age_bands: tuple[str, ...] = ()
    labelled_only: bool = False
    study_date_from: str = ""
    study_date_to: str = ""
    exclude_patient_key: str = ""  # a patient's own other studies must not count as "similar prior cases"
    exclude_study_keys: tuple[str, ...] = ()
    model_version: str = ""
