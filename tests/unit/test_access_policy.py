"""The authorization policy covers every method of every cxrmesh.v1 service, and nothing else."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2  # noqa: F401  (registers grpc.health.v1 in the pool)
from grpc_reflection.v1alpha import reflection_pb2  # noqa: F401  (registers reflection in the pool)

import cxrmesh.v1
from cxrmesh.contracts.access import ROLES, PolicyError, load_policy, parse_policy


def _mesh_methods() -> set[tuple[str, str]]:
    out = set()
    for info in pkgutil.iter_modules(cxrmesh.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"cxrmesh.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                out |= {(service.full_name, m.name) for m in service.methods}
    return out


def test_every_method_of_every_service_has_an_entry() -> None:
    mesh = _mesh_methods()
    assert len(mesh) >= 11, "the cxrmesh.v1 services were not found"
    policy = load_policy()
    missing = sorted(f"{s}/{m}" for s, m in mesh if policy.roles_for(s, m) is None)
    assert not missing, f"methods without an entry in access_policy.toml: {missing}"


def test_every_entry_names_a_method_that_exists() -> None:
    pool = descriptor_pool.Default()
    policy = load_policy()
    for service, method in policy.methods:
        try:
            found = pool.FindServiceByName(service)
        except KeyError:
            pytest.fail(f"access_policy.toml names a service that does not exist: {service}")
        assert method in found.methods_by_name, f"access_policy.toml names {service}/{method}: no such method"
    for service in policy.open_services:
        assert pool.FindServiceByName(service)


def test_health_is_open_reflection_is_ops_and_audit_covers_the_mesh() -> None:
    policy = load_policy()
    assert policy.is_open("grpc.health.v1.Health")
    assert policy.roles_for("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo") == {"ops"}
    assert policy.roles_for("cxrmesh.v1.IngestionService", "Ingest") == {"ingest"}
    assert all(policy.audited(s) for s, _ in _mesh_methods())
    assert not policy.audited("grpc.health.v1.Health")
    assert all(set(roles) <= set(ROLES) for roles in policy.methods.values())


@pytest.mark.parametrize("roles", [[], ["root"]])
def test_unknown_or_missing_roles_are_refused(roles: list[str]) -> None:
    with pytest.raises(PolicyError):
        parse_policy({"methods": {"cxrmesh.v1.SearchService": {"FindSimilar": roles}}})
