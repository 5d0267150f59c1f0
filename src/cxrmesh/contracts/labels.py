"""The label lists every layer shares, stated once.

Diagnoses are the classes of the retrieval paper's vote (Zhong et al. 2021): their order decides ties in the
neighbour vote and is the class index in training, so it must not change without retraining.
"""

from __future__ import annotations

# Order matters: class index in training (position) and the vote's tie-break (first wins).
DIAGNOSES: tuple[str, ...] = ("normal", "covid19", "other_pneumonia")

# Display names (report, CLI); "" is an unknown diagnosis.
DIAGNOSIS_DISPLAY: dict[str, str] = {
    "": "unknown",
    "normal": "normal",
    "covid19": "covid19",
    "other_pneumonia": "other pneumonia",
}
