"""Conversions between the domain types and the cxrmesh.v1 messages, and request validation.

Kept in one place so every service maps labels, metadata and clinical data the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from cxrmesh.contracts.errors import InvalidArgument
from cxrmesh.contracts.tensors import CLINICAL_FEATURES
from cxrmesh.v1 import common_pb2, events_pb2

DIAGNOSIS_NAMES = {
    common_pb2.DIAGNOSIS_NORMAL: "normal",
    common_pb2.DIAGNOSIS_COVID19: "covid19",
    common_pb2.DIAGNOSIS_OTHER_PNEUMONIA: "other_pneumonia",
}
DIAGNOSIS_ENUMS = {name: value for value, name in DIAGNOSIS_NAMES.items()}
OUTCOME_VALUES = {common_pb2.OUTCOME_NOT_INTUBATED: 0, common_pb2.OUTCOME_INTUBATED_72H: 1}
OUTCOME_ENUMS = {value: enum for enum, value in OUTCOME_VALUES.items()}
# the quality gate's verdicts (cxrmesh.analysis.quality) as the events carry them; UNSPECIFIED
# (events from before the gate) has no name
VERDICT_NAMES = {
    events_pb2.QualityGate.VERDICT_PASS: "pass",
    events_pb2.QualityGate.VERDICT_FLAGGED: "flagged",
    events_pb2.QualityGate.VERDICT_REFUSED: "refused",
}
VERDICT_ENUMS = {name: value for value, name in VERDICT_NAMES.items()}

# plausible physiological ranges: values outside are typos or unit mix-ups, refused with a reason
CLINICAL_RANGES: Mapping[str, tuple[float, float]] = {
    "age": (0, 120),
    "spo2_pct": (30, 100),
    "resp_rate_per_min": (0, 80),
    "heart_rate_bpm": (10, 300),
    "temperature_c": (25, 45),
    "crp_mg_l": (0, 1000),
    "lymphocytes_1e9_l": (0, 100),
    "d_dimer_mg_l_feu": (0, 100),
    "ldh_u_l": (0, 10000),
    "comorbidity_count": (0, 50),
    "days_since_onset": (0, 365),
}


def diagnosis_name(value: int) -> str:
    return DIAGNOSIS_NAMES.get(value, "")


def diagnosis_enum(name: str) -> int:
    return DIAGNOSIS_ENUMS.get(name, common_pb2.DIAGNOSIS_UNSPECIFIED)


def outcome_value(value: int) -> int:
    """-1 unknown, 0 not intubated, 1 intubated within 72 h."""
    return OUTCOME_VALUES.get(value, -1)


def outcome_enum(value: int) -> int:
    return OUTCOME_ENUMS.get(value, common_pb2.OUTCOME_UNSPECIFIED)


def metadata_proto(meta: Any) -> common_pb2.StudyMetadata:
    """``cxrmesh.dicom.deid.StudyMetadata`` -> message (fields share names)."""
    fields = {f.name for f in common_pb2.StudyMetadata.DESCRIPTOR.fields}
    values = {k: v for k, v in vars(meta).items() if k in fields and v is not None}
    return common_pb2.StudyMetadata(**values)


def validate_clinical(clinical: common_pb2.ClinicalData) -> None:
    """Refuse non-finite or implausible values with a reason naming the field and the range."""
    for field, value in clinical.ListFields():
        if field.name == "sex_male":
            continue
        if not math.isfinite(float(value)):
            raise InvalidArgument(
                "clinical_not_finite", f"clinical.{field.name} is {value}; send a finite number"
            )
        lo, hi = CLINICAL_RANGES.get(field.name, (-math.inf, math.inf))
        if not lo <= float(value) <= hi:
            raise InvalidArgument(
                "clinical_out_of_range",
                f"clinical.{field.name} = {value} is outside the plausible range [{lo}, {hi}]; check units",
            )


def validate_labels(labels: common_pb2.KnownLabels) -> None:
    if labels.diagnosis not in (common_pb2.DIAGNOSIS_UNSPECIFIED, *DIAGNOSIS_NAMES):
        raise InvalidArgument(
            "bad_label", f"labels.diagnosis {labels.diagnosis} is not a known Diagnosis value"
        )
    if labels.outcome not in (common_pb2.OUTCOME_UNSPECIFIED, *OUTCOME_VALUES):
        raise InvalidArgument("bad_label", f"labels.outcome {labels.outcome} is not a known Outcome value")


def clinical_vector(clinical: common_pb2.ClinicalData) -> np.ndarray | None:
    """The prognosis head's clinical input (``spec.CLINICAL_FEATURES`` order), None if incomplete."""
    values = []
    for name in CLINICAL_FEATURES:
        if not clinical.HasField(name):
            return None
        values.append(float(getattr(clinical, name)))
    return np.asarray(values, dtype=np.float32)


def merge_clinical(old: common_pb2.ClinicalData, new: common_pb2.ClinicalData) -> common_pb2.ClinicalData:
    """Later submissions add to or correct earlier ones, field by field."""
    merged = common_pb2.ClinicalData()
    merged.CopyFrom(old)
    merged.MergeFrom(new)
    return merged
