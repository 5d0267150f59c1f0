"""Every service's settings class, by service name: where tools (k8s checks, docs) find them.

Each class lives in its service's folder (``services/<name>/settings.py``) and derives from the common
``cxrmesh.runtime.settings.ServiceSettings``.
"""

from __future__ import annotations

from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.services.embedding.settings import EmbeddingSettings
from cxrmesh.services.gateway.settings import GatewaySettings
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.services.pacs_sender.settings import PacsSenderSettings
from cxrmesh.services.prognosis.settings import PrognosisSettings
from cxrmesh.services.quantification.settings import QuantificationSettings
from cxrmesh.services.search.settings import SearchSettings
from cxrmesh.services.segmentation.settings import SegmentationSettings
from cxrmesh.services.studyview.settings import StudyViewSettings

SETTINGS: dict[str, type[ServiceSettings]] = {
    cls.model_fields["service"].default: cls
    for cls in (
        IngestionSettings,
        EmbeddingSettings,
        SearchSettings,
        SegmentationSettings,
        QuantificationSettings,
        PrognosisSettings,
        StudyViewSettings,
        GatewaySettings,
        PacsSenderSettings,
    )
}
