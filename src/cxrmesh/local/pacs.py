"""The local mesh's DICOM side: the gateway's settings, the PACS sender's, and the stand-in PACS.

``cxrmesh up`` starts the gateway (Storage SCP and STOW-RS on loopback) with the senders named by
``--dicom-sender``; ``cxrmesh up --pacs`` also starts Debian's Orthanc (``cxrmesh.local.orthanc``) as
the hospital's PACS in both roles: it forwards every radiograph it receives to the gateway (and so
is an allowed sender), and it is the PACS sender's destination. That closes the loop a hospital
has: modality -> PACS -> cxrmesh -> results filed next to the original in the PACS.

Kept apart from ``mesh.py`` because it is one job: what the DICOM peers need to know of each other.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrmesh.local.secret_files import keep_secret

if TYPE_CHECKING:
    from cxrmesh.local.orthanc import OrthancAPI

GATEWAY_AE = "CXRMESH"  # the gateway's AE title, and the PACS sender's calling AE title
ORTHANC_AE = "ORTHANC"
ORTHANC = "orthanc"  # the stand-in PACS: its process name, and its name as a PACS-sender destination
STOW_TOKEN = "stow.token"


def stow_token_file(home: Path) -> Path:
    """The STOW-RS bearer token of the mesh in ``home``: made once, kept 0600 (callers read it)."""
    path = Path(home) / STOW_TOKEN
    keep_secret(path, lambda: secrets.token_urlsafe(32))
    return path


@dataclass(frozen=True)
class DicomPorts:
    """Where the gateway listens (DICOM and STOW-RS) and, with ``--pacs``, the stand-in PACS."""

    dicom: int
    stow: int
    orthanc_dicom: int = 0  # 0: no stand-in PACS
    orthanc_http: int = 0


def gateway_env(home: Path, ports: DicomPorts, senders: list[str], ingestion: str) -> dict[str, str]:
    """The gateway's settings: its ports, who may send (the stand-in PACS too), where Ingest is."""
    allowed = [*senders, *([ORTHANC_AE] if ports.orthanc_dicom else [])]
    return {
        "CXRMESH_AE_TITLE": GATEWAY_AE,
        "CXRMESH_DICOM_PORT": str(ports.dicom),
        "CXRMESH_STOW_PORT": str(ports.stow),
        "CXRMESH_STOW_TOKEN": stow_token_file(home).read_text().strip(),
        "CXRMESH_ALLOWED_SENDERS": json.dumps(sorted(set(allowed))),
        "CXRMESH_INGESTION_URL": ingestion,
    }


def pacs_sender_env(ports: DicomPorts, studyview: str) -> dict[str, str]:
    """The PACS sender's settings: the study view to read, the stand-in PACS as its destination."""
    destinations = []
    if ports.orthanc_dicom:
        destinations.append(
            {"name": ORTHANC, "ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": ports.orthanc_dicom}
        )
    return {
        "CXRMESH_AE_TITLE": GATEWAY_AE,
        "CXRMESH_STUDYVIEW_URL": studyview,
        "CXRMESH_DESTINATIONS": json.dumps(destinations),
    }


def orthanc_modalities(ports: DicomPorts) -> dict[str, tuple[str, str, int]]:
    """The peers the stand-in PACS knows: cxrmesh, which it forwards to and accepts results from."""
    return {"cxrmesh": (GATEWAY_AE, "127.0.0.1", ports.dicom)}


def orthanc_sign_in(home: Path) -> str:
    """How a person signs in to the stand-in PACS's web UI and REST API (no secret in the text)."""
    from cxrmesh.local.orthanc import USER

    return f"user {USER}, password in {Path(home) / ORTHANC / 'orthanc.password'}"


def pacs_api(home: Path, url: str) -> OrthancAPI:
    """The REST API of the stand-in PACS of the mesh in ``home``, signed in."""
    from cxrmesh.local.orthanc import USER, OrthancAPI

    password = (Path(home) / ORTHANC / "orthanc.password").read_text().strip()
    return OrthancAPI(url, USER, password)


def results_in_pacs(api: OrthancAPI, study_instance_uid: str) -> dict[str, int]:
    """Instances per modality (CR, SEG, SR, ...) the PACS files under the original study."""
    study = api.find_study(study_instance_uid)
    counts: dict[str, int] = {}
    for instance in api.study_instances(study) if study else []:
        modality = str(api.instance_tags(instance["ID"]).get("Modality", "?"))
        counts[modality] = counts.get(modality, 0) + 1
    return counts
