"""Search: keeps the Milvus case index and answers similar-case and diagnosis-vote queries.

Consumes StudyEmbedded and ClinicalUpdated into the index (``worker``); answers queries by study key,
raw embedding or an uploaded DICOM (``servicer``). Wired on the shared stage base.
"""

from __future__ import annotations

from cxrmesh.contracts.tensors import EMBED_DIM
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.search.store import CaseStore
from cxrmesh.services.flow import FLOW
from cxrmesh.services.search.servicer import SearchServicer
from cxrmesh.services.search.settings import SearchSettings
from cxrmesh.services.search.worker import SearchWorker
from cxrmesh.services.stage import GrpcApi, StageService
from cxrmesh.v1 import search_pb2, search_pb2_grpc


def open_store(settings: SearchSettings) -> CaseStore:
    """The case index: a Milvus server, or Milvus Lite under the data directory."""
    if not settings.milvus_uri:
        (settings.data_dir / "milvus").mkdir(parents=True, exist_ok=True)
    store = CaseStore(
        settings.milvus_location,
        token=settings.milvus_token.get_secret_value(),
        collection=settings.milvus_collection,
        dim=EMBED_DIM,
        index=settings.milvus_index,
        build_params=settings.milvus_index_params,
        search_params=settings.milvus_search_params,
        consistency=settings.milvus_consistency,
        tls=settings.milvus_tls(),
    )
    store.ensure_collection()
    return store


def build(settings: SearchSettings) -> ServiceRuntime:
    service = StageService(settings, FLOW["search"])
    store = service.closing(open_store(settings))
    service.depends_on("milvus", store.ping)
    triton = service.triton(settings.embed_model)
    service.api(
        GrpcApi.of(search_pb2, search_pb2_grpc, "SearchService"),
        SearchServicer(settings, store, triton),
    )
    return service.consume(SearchWorker(store))


def main() -> None:
    build(SearchSettings()).run()
