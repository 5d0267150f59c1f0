"""How a handed-off instance is answered and counted, the same for DIMSE and STOW-RS.

Status codes are the Storage Service's (PS3.4 B.2.3), which STOW-RS reuses as FailureReason (PS3.18):
0xA700 "out of resources" makes a sender keep the instance and retry later; 0xA900 "data set does not
match SOP class" and 0xC000 "cannot understand" tell it not to resend the instance as is. The comment
carries ingestion's stable code first, so a PACS log shows what to fix without the mesh's logs.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from prometheus_client import Counter

from cxrmesh.runtime import metrics
from cxrmesh.services.gateway.handoff import Accepted, Outcome, Refused, Unavailable

log = logging.getLogger(__name__)

SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700
NOT_MATCHING_SOP_CLASS: Final = 0xA900
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122  # STOW-RS only: DIMSE refuses the presentation context instead
CANNOT_UNDERSTAND: Final = 0xC000

PROTOCOLS: Final = ("dimse", "stow")
OUTCOMES: Final = ("accepted", "duplicate", "refused", "unavailable")
# refusals that say the object is not what its SOP class or its request claims: ingestion's (a CT in a
# CR object) and STOW-RS's (an instance of another study than the URL's)
SOP_CLASS_MISMATCH: Final = frozenset({"unsupported_modality", "study_mismatch"})
SOP_CLASS_REFUSED: Final = "sop_class_not_accepted"  # STOW-RS: a class the gateway does not take
MAX_COMMENT: Final = 64  # Error Comment is LO: 64 characters, no backslash or control characters


def instances() -> Counter:
    return metrics.metric(
        Counter,
        "cxrmesh_gateway_instances_total",
        "DICOM instances received by the gateway, by protocol and what ingestion answered.",
        ("protocol", "outcome"),
    )


def start_counting() -> None:
    """Export every (protocol, outcome) at 0 from the start, so rates and alerts see the first one."""
    for protocol in PROTOCOLS:
        for outcome in OUTCOMES:
            instances().labels(protocol, outcome)


def label(outcome: Outcome) -> str:
    if isinstance(outcome, Accepted):
        return "duplicate" if outcome.duplicate else "accepted"
    return "refused" if isinstance(outcome, Refused) else "unavailable"


def status(outcome: Outcome) -> int:
    """The C-STORE status (and STOW-RS FailureReason) of an outcome."""
    if isinstance(outcome, Accepted):
        return SUCCESS
    if isinstance(outcome, Unavailable):
        return OUT_OF_RESOURCES
    if outcome.code == SOP_CLASS_REFUSED:
        return SOP_CLASS_NOT_SUPPORTED
    return NOT_MATCHING_SOP_CLASS if outcome.code in SOP_CLASS_MISMATCH else CANNOT_UNDERSTAND


def comment(outcome: Refused | Unavailable) -> str:
    """``<code>: <reason>`` fitted to an LO value (the reasons name no patient or UID)."""
    text = f"{outcome.code}: {outcome.reason}" if isinstance(outcome, Refused) else outcome.reason
    text = re.sub(r"[\x00-\x1f\x7f\\]+", " ", text)
    return text[:MAX_COMMENT].rstrip()


def record(protocol: str, sender: str, outcome: Outcome) -> None:
    """Count the outcome and log it with who sent it; no UID, key or patient data."""
    instances().labels(protocol, label(outcome)).inc()
    fields = {
        "protocol": protocol,
        "sender": sender,
        "outcome": label(outcome),
        "status": f"0x{status(outcome):04X}",
    }
    if isinstance(outcome, Refused):
        fields["code"] = outcome.code
    level = logging.WARNING if isinstance(outcome, Unavailable) else logging.INFO
    log.log(level, "instance answered", extra=fields)
