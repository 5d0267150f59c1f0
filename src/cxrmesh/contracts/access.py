"""The per-method authorization policy (``access_policy.toml``), loaded and checked once.

The policy is data that the interceptor (``cxrmesh.runtime.authz``), the certificates (the roles that
``cxrmesh.local.pki`` and cert-manager put in subject OUs) and the tests must agree on, so it lives here
in one file; this module only parses it (``tomllib``) and answers "which roles may call this method".
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

ROLES = ("ingest", "clinical-read", "ops", "mesh")
# every call of these services reads or writes a study, so each leaves one audit record
AUDITED_PREFIX = "cxrmesh.v1."
POLICY_FILE = "access_policy.toml"


class PolicyError(ValueError):
    """The policy file is malformed (a role nobody defined, a method without roles)."""


@dataclass(frozen=True)
class AccessPolicy:
    """Open services (any transport-authenticated caller) and, per (service, method), the allowed roles."""

    open_services: frozenset[str]
    methods: dict[tuple[str, str], frozenset[str]]

    def is_open(self, service: str) -> bool:
        return service in self.open_services

    def roles_for(self, service: str, method: str) -> frozenset[str] | None:
        """The roles that may call ``service/method``; None when the policy has no entry (refuse)."""
        return self.methods.get((service, method))

    @staticmethod
    def audited(service: str) -> bool:
        """Whether calls of ``service`` read or write a study (every cxrmesh.v1 service does)."""
        return service.startswith(AUDITED_PREFIX)


def parse_policy(data: dict[str, Any]) -> AccessPolicy:
    """Build the policy from the TOML document's tables; refuses unknown roles and empty entries."""
    methods: dict[tuple[str, str], frozenset[str]] = {}
    for service, entries in data.get("methods", {}).items():
        for method, roles in entries.items():
            unknown = set(roles) - set(ROLES)
            if not roles or unknown:
                raise PolicyError(
                    f"{service}/{method}: roles must be a non-empty subset of {ROLES}, got {roles}"
                )
            methods[(service, method)] = frozenset(roles)
    return AccessPolicy(frozenset(data.get("open", {}).get("services", ())), methods)


@cache
def load_policy() -> AccessPolicy:
    """The mesh's policy, shipped with the package (``cxrmesh/contracts/access_policy.toml``)."""
    text = resources.files(__package__).joinpath(POLICY_FILE).read_text(encoding="utf-8")
    return parse_policy(tomllib.loads(text))
