"""The services' declarations agree with each other: dataflow, settings registry, documented ports."""

from __future__ import annotations

from pathlib import Path

from cxrmesh.contracts import topics
from cxrmesh.contracts.ports import SERVICE_PORTS, loopback
from cxrmesh.local import mesh
from cxrmesh.services.flow import FLOW
from cxrmesh.services.prognosis.settings import PrognosisSettings
from cxrmesh.services.settings import SETTINGS
from cxrmesh.services.studyview.settings import StudyViewSettings
from cxrmesh.services.studyview.store import FAILED_BY, STAGES

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"


def test_every_service_folder_is_declared_once_everywhere() -> None:
    folders = {p.parent.name for p in SERVICES_DIR.glob("*/__main__.py")}
    assert folders == set(FLOW) == set(SETTINGS) == set(SERVICE_PORTS) == set(mesh.SERVICES)


def test_every_consumed_topic_has_a_producer_and_every_message_a_type() -> None:
    produced = {t for stage in FLOW.values() for t in stage.produces} | {topics.DEAD_LETTER}
    for stage in FLOW.values():
        assert set(stage.consumes) <= produced, f"{stage.service} consumes what nobody produces"
        assert set(stage.message_types()) == set(stage.consumes)
        assert stage.dead_letter_topic not in stage.consumes, f"{stage.service} would dead-letter into itself"


def test_the_study_view_follows_the_declared_steps() -> None:
    steps = {stage.step: stage for stage in FLOW.values() if stage.step}
    assert {step: steps[step].produces[0] for step in STAGES} == STAGES
    assert set(FLOW["studyview"].consumes) == {*STAGES.values(), topics.DEAD_LETTER}
    assert all(FLOW[service].step == step for service, step in FAILED_BY.items())


def test_settings_defaults_are_the_documented_ports() -> None:
    for name, cls in SETTINGS.items():
        s = cls.model_construct()  # defaults only (the pseudonym key is required, not needed here)
        assert (s.service, s.grpc_port, s.metrics_port) == (name, *SERVICE_PORTS[name])
    search = loopback(SERVICE_PORTS["search"].grpc)
    for cls in (PrognosisSettings, StudyViewSettings):
        assert cls.model_construct().search_url == search
