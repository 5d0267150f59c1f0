"""Prognosis: embedding + four-region features + clinical data -> Triton prognosis head.

The join and the head run in the Kafka handler (``worker``); GetPrognosis answers from the stored
results. It also reports how many of the nearest labelled prior cases (from search) were intubated.
Wired on the shared stage base.
"""

from __future__ import annotations

import grpc

from cxrmesh.contracts.errors import InvalidArgument, NotFound
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.tables import ResultTable
from cxrmesh.runtime.tls import open_channel
from cxrmesh.services.flow import FLOW
from cxrmesh.services.prognosis.joins import JoinTable
from cxrmesh.services.prognosis.settings import PrognosisSettings
from cxrmesh.services.prognosis.worker import PrognosisWorker
from cxrmesh.services.stage import GrpcApi, StageService
from cxrmesh.v1 import events_pb2, prognosis_pb2, prognosis_pb2_grpc, search_pb2_grpc


class PrognosisServicer(prognosis_pb2_grpc.PrognosisServiceServicer):
    def __init__(self, results: ResultTable):
        self.results = results

    def GetPrognosis(self, request: prognosis_pb2.GetPrognosisRequest, context: grpc.ServicerContext):
        if not request.study_key:
            raise InvalidArgument("missing_study_key", "study_key is required")
        msg = self.results.get(request.study_key)
        if msg is None:
            raise NotFound(
                "no_prognosis", "no prognosis for this study yet (needs embedding and quantification)"
            )
        return msg


def build(settings: PrognosisSettings) -> ServiceRuntime:
    service = StageService(settings, FLOW["prognosis"])
    db = service.database()
    joins = JoinTable(db)
    results = ResultTable(db, settings.service, events_pb2.PrognosisResult)
    triton = service.triton(settings.prognosis_model)
    channel = service.closing(open_channel(settings.search_url, settings.tls()))
    search = search_pb2_grpc.SearchServiceStub(channel)
    service.api(
        GrpcApi.of(prognosis_pb2, prognosis_pb2_grpc, "PrognosisService"),
        PrognosisServicer(results),
    )
    return service.consume(PrognosisWorker(settings, triton, service.producer, joins, results, search))


def main() -> None:
    build(PrognosisSettings()).run()
