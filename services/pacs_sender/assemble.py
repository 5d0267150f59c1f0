"""A finished study's results as the PACS must file them: SEG, measurement SR, findings SR, re-identified.

Quantification made the SEG and the measurement SR from the de-identified source; the findings SR
is made here from the same source and the study view. All three carry the de-identified study's
UIDs and pseudonyms until ``reidentify`` puts back the originals kept sealed at ingestion, so that
they file under the patient's original study. Only this service opens that identity, in memory;
nothing of it is logged or leaves the process except in the C-STORE itself.
"""

from __future__ import annotations

import io

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from cxrmesh import __version__
from cxrmesh.dicom.outputs.findings import make_findings_report
from cxrmesh.dicom.reidentify import IdentityMismatch, OriginalIdentity, reidentify
from cxrmesh.runtime.blobs import BlobStore
from cxrmesh.runtime.db.identities import IdentityStore, IdentityUnreadable
from cxrmesh.runtime.kafka import PermanentError
from cxrmesh.services.pacs_sender.compose import NotComposable, findings_of
from cxrmesh.v1 import common_pb2, studyview_pb2


class NoIdentity(PermanentError):
    """Ingestion kept no original identity for the study: it cannot be filed under the original."""


def read_dicom(blobs: BlobStore, ref: common_pb2.BlobRef, what: str) -> Dataset:
    """A DICOM blob as a dataset; an unreadable one is the content's fault (``PermanentError``)."""
    try:
        return pydicom.dcmread(io.BytesIO(blobs.get(ref)))
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise PermanentError(f"the {what} of this study is not readable DICOM: {type(exc).__name__}") from exc


def original_identity(identities: IdentityStore, study_key: str) -> OriginalIdentity:
    try:
        identity = identities.get(study_key)
    except IdentityUnreadable as exc:  # sealed under another key: no retry opens it
        raise PermanentError(str(exc)) from exc
    if identity is None:
        raise NoIdentity("no original identity kept for this study")
    return identity


def de_identified_outputs(view: studyview_pb2.StudyView, blobs: BlobStore) -> list[Dataset]:
    """SEG, measurement SR (when quantification measured the image) and the findings SR, as made."""
    if not view.segmentation.HasField("deidentified_dicom"):
        raise PermanentError("the study view has no de-identified source for this study")
    source = read_dicom(blobs, view.segmentation.deidentified_dicom, "de-identified source")
    try:
        findings = findings_of(view)
    except NotComposable as exc:
        raise PermanentError(str(exc)) from exc
    q = view.quantification
    refs = ((q.dicom_seg, "SEG"), (q.dicom_sr, "measurement SR"))
    made = [read_dicom(blobs, ref, what) for ref, what in refs if ref.sha256 or ref.uri]
    try:
        made.append(make_findings_report(source, findings, software_version=__version__))
    except (ValueError, AttributeError) as exc:
        raise PermanentError(f"cannot write the findings SR for this study: {type(exc).__name__}") from exc
    return made


def study_results(
    view: studyview_pb2.StudyView, blobs: BlobStore, identities: IdentityStore
) -> list[Dataset]:
    """The study's results re-identified: what every destination receives."""
    identity = original_identity(identities, view.study_key)  # first: no identity, no work
    try:
        return [reidentify(ds, identity) for ds in de_identified_outputs(view, blobs)]
    except IdentityMismatch as exc:  # sending would file these results in another patient's record
        raise PermanentError(str(exc)) from exc
