"""The BackendTLSPolicy source: every policy of a tenant reported on (how policies apply to
backends is backendtls.py). Pure.

A policy's status has an ancestor per Gateway of ours whose routes (HTTPRoute, GRPCRoute)
send to a Service it targets, with `Accepted` (False: `Conflicted` when an older policy
targets the same, `NoValidCACertificate`, `Invalid`) and `ResolvedRefs` (False:
`InvalidKind`, `InvalidCACertificateRef`). Policies make no record of their own: their Source
only reports, and is resynced (every status computed again, written when it changed) when a
policy, a ConfigMap or a route changes.
"""

from __future__ import annotations

from typing import Any

from ..objects import CONFIGMAPS, Obj, Resource
from ..records.names import ROUTE
from ..records.problems import Translation
from ..records.status import SourceStatus
from . import gatewayapi, routes, shapes
from .backendtls import (
    BACKEND_TLS_POLICIES,
    State,
    index,
    read,
    targets,
)
from .base import References, StatusPatch, TenantView
from .gatewayapi import API_VERSION, CONTROLLER, GATEWAYS, GROUP, GRPCROUTES, HTTPROUTES

#: ancestors written per policy, as the CRD allows
MAX_ANCESTORS = 16


def _gateways_by_service(view: TenantView) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(namespace, Service) -> the Gateways of ours that routes of ours send to it from."""
    out: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for kind, resource, shape in (
        ("HTTPRoute", HTTPROUTES, shapes.HTTPRoute),
        ("GRPCRoute", GRPCROUTES, shapes.GRPCRoute),
    ):
        for route in view.all(resource):
            if not routes.is_ours(route, view) or not shapes.fits(shape, route):
                continue
            ns = route["metadata"].get("namespace", "")
            gateways = {
                (ref.get("namespace") or ns, ref["name"])
                for ref in routes.parent_refs(route.get("spec") or {})
                if routes.names_a_gateway(ref)
                and (g := view.get(GATEWAYS, ref.get("namespace") or ns, ref["name"])) is not None
                and gatewayapi.is_our_gateway(g, view)
            }
            for rule in (route.get("spec") or {}).get("rules") or []:
                for ref in rule.get("backendRefs") or []:
                    target = routes.backend_target(kind, ref, ns, view)
                    if isinstance(target, tuple):
                        out.setdefault(target, set()).update(gateways)
    return out


def _condition(type_: str, state: State, generation: int) -> Obj:
    ok, reason, message = state
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message, "observedGeneration": generation}  # fmt: skip


def _ancestors(policy: Obj) -> tuple[list[Obj], bool]:
    """The entries of the policy's status.ancestors other controllers wrote (kept as they
    are: the list is replaced whole), and whether kubelbd has one there."""
    status = policy.get("status")
    found = status.get("ancestors") if isinstance(status, dict) else None
    entries = [e for e in (found if isinstance(found, list) else []) if isinstance(e, dict)]
    others = [e for e in entries if e.get("controllerName") != CONTROLLER]
    return others, len(others) != len(entries)


def statuses(view: TenantView) -> list[tuple[Resource, Obj]]:
    """The policies whose status kubelbd writes, with the status it wants: an ancestor per
    Gateway of ours that routes to a Service the policy targets, beside other controllers'
    entries. A policy kubelbd has nothing to say about (and said nothing about) is left
    alone."""
    policies = list(view.all(BACKEND_TLS_POLICIES))
    if not policies:
        return []
    used = _gateways_by_service(view)
    winners = index(view)
    out: list[tuple[Resource, Obj]] = []
    for policy in policies:
        meta = policy.get("metadata") or {}
        ns, name, generation = meta.get("namespace"), meta.get("name"), meta.get("generation")
        if not isinstance(ns, str) or not isinstance(name, str):
            continue
        targeted = targets(policy)
        gateways = sorted(set().union(*(used.get((ns, s), set()) for s, _ in targeted)))
        others, had_ours = _ancestors(policy)
        if not gateways and not had_ours:
            continue
        verdict = read(policy, view)
        accepted = verdict.accepted
        if targeted and all(winners.by_target.get((ns, *t)) is not policy for t in targeted):
            accepted = (False, "Conflicted", "an older policy targets the same Services")
        observed = generation if isinstance(generation, int) else 0
        ours = [
            {
                "ancestorRef": {"group": GROUP, "kind": "Gateway", "namespace": gns,
                                "name": gname},
                "controllerName": CONTROLLER,
                "conditions": [
                    _condition("Accepted", accepted, observed),
                    _condition("ResolvedRefs", verdict.resolved, observed),
                ],
            }
            for gns, gname in gateways
        ]  # fmt: skip
        reported = {
            "apiVersion": API_VERSION,
            "kind": "BackendTLSPolicy",
            "metadata": {"name": name, "namespace": ns},
            "status": {"ancestors": [*others, *ours][:MAX_ANCESTORS]},
        }
        out.append((BACKEND_TLS_POLICIES, reported))
    return out


class BackendTLSPolicySource:
    """gateway.networking.k8s.io/v1 BackendTLSPolicy: nothing of its own is served (no
    record; routes' backends read the policies), every policy reported on."""

    kind = "BackendTLSPolicy"
    api_version = API_VERSION
    resource = BACKEND_TLS_POLICIES
    #: its statuses are computed again when a policy, a CA ConfigMap or a route changes
    depends_on: tuple[Resource, ...] = (BACKEND_TLS_POLICIES, CONFIGMAPS, HTTPROUTES, GRPCROUTES)
    referenced: tuple[Resource, ...] = ()
    record = ROUTE  # never made: no policy is ours

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        return False

    def record_name(self, namespace: str, name: str) -> str:
        return f"backendtlspolicy.{namespace}.{name}"

    def references(self, obj: Obj, view: TenantView) -> References:
        return References()

    def translate(self, obj: Obj, view: TenantView) -> Translation[Any]:
        raise NotImplementedError("a BackendTLSPolicy makes no record")

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        return None

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        return []

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        return statuses(view)
