"""Records as Milvus rows and back, every field checked before anything is sent.

Messages name the batch index and the field, never the key (they end up in logs and gRPC details).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.search.errors import InvalidQuery
from cxrmesh.search.filters import (
    AGE_BAND_RE,
    MODEL_RE,
    OUTCOMES,
    SEXES,
    SITE_RE,
    check_date,
    check_key,
    check_str,
    study_day,
)
from cxrmesh.search.records import CaseRecord
from cxrmesh.search.schema import CLINICAL_MAX, REF_MAX, VECTOR


def checked_vector(vector: object, dim: int, what: str) -> np.ndarray:
    """``vector`` as float32 of shape (dim,), finite and not all zeros (cosine needs a direction)."""
    try:
        v = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidQuery(f"{what} must be an array of {dim} floats") from None
    if v.shape != (dim,):
        raise InvalidQuery(f"{what} has shape {v.shape}, the store holds {dim}-d embeddings")
    if not np.isfinite(v).all():
        raise InvalidQuery(f"{what} has NaN or infinite values")
    if float(np.linalg.norm(v)) < 1e-6:
        raise InvalidQuery(f"{what} is all zeros; cosine similarity is undefined")
    return v


def check_clinical(clinical: object, what: str) -> str:
    text = check_str(clinical, what)
    if len(text) > CLINICAL_MAX or not text.isprintable():
        raise InvalidQuery(f"{what} must be printable and at most {CLINICAL_MAX} characters")
    return text


def to_row(rec: CaseRecord, i: int, dim: int) -> dict[str, Any]:
    """Validated Milvus row for a record; messages name the batch index, not the key."""
    if not isinstance(rec, CaseRecord):
        raise InvalidQuery(f"records[{i}] is a {type(rec).__name__}, not a CaseRecord")
    w = f"records[{i}]"
    if rec.site:
        check_str(rec.site, f"{w}.site", pattern=SITE_RE)
    if rec.diagnosis:
        check_str(rec.diagnosis, f"{w}.diagnosis", allowed=DIAGNOSES)
    if isinstance(rec.outcome, bool) or rec.outcome not in OUTCOMES:
        raise InvalidQuery(f"{w}.outcome must be -1 (unknown), 0 or 1")
    if rec.age_band:
        check_str(rec.age_band, f"{w}.age_band", pattern=AGE_BAND_RE)
    if rec.sex:
        check_str(rec.sex, f"{w}.sex", allowed=SEXES)
    if rec.study_date:
        check_date(rec.study_date, f"{w}.study_date")
    ref = check_str(rec.attention_ref, f"{w}.attention_ref")
    if len(ref) > REF_MAX or not ref.isprintable():
        raise InvalidQuery(f"{w}.attention_ref must be printable and at most {REF_MAX} characters")
    clinical = check_clinical(rec.clinical, f"{w}.clinical")
    return {
        "study_key": check_key(rec.study_key, f"{w}.study_key"),
        "patient_key": check_key(rec.patient_key, f"{w}.patient_key"),
        VECTOR: checked_vector(rec.embedding, dim, f"{w}.embedding"),
        "model_version": check_str(rec.model_version, f"{w}.model_version", pattern=MODEL_RE),
        "site": rec.site,
        "diagnosis": rec.diagnosis,
        "outcome": int(rec.outcome),
        "age_band": rec.age_band,
        "sex": rec.sex,
        "study_date": rec.study_date,
        "study_day": study_day(rec.study_date),
        "attention_ref": ref,
        "clinical": clinical,
    }


def to_record(entity: Mapping[str, Any]) -> CaseRecord:
    """A stored entity (all output fields) as a :class:`CaseRecord`."""
    return CaseRecord(
        study_key=str(entity["study_key"]),
        patient_key=str(entity["patient_key"]),
        embedding=np.asarray(entity[VECTOR], dtype=np.float32),
        model_version=str(entity["model_version"]),
        site=str(entity["site"]),
        diagnosis=str(entity["diagnosis"]),
        outcome=int(entity["outcome"]),
        age_band=str(entity["age_band"]),
        sex=str(entity["sex"]),
        study_date=str(entity["study_date"]),
        attention_ref=str(entity["attention_ref"]),
        clinical=str(entity["clinical"]),
    )
