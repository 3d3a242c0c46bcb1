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
    age,
    read,
    targets,
    winner,
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


def _condition(type_: str, state: State) -> Obj:
    ok, reason, message = state
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message}  # fmt: skip


def statuses(view: TenantView) -> list[tuple[Resource, Obj]]:
    """Every policy of the tenant with the status kubelbd wants it to have (none, when
    kubelbd serves no route to a Service it targets)."""
    policies = list(view.all(BACKEND_TLS_POLICIES))
    if not policies:
        return []
    used = _gateways_by_service(view)
    by_namespace: dict[str, list[Obj]] = {}
    for p in policies:
        by_namespace.setdefault((p.get("metadata") or {}).get("namespace", ""), []).append(p)
    out: list[tuple[Resource, Obj]] = []
    for ns, listed in sorted(by_namespace.items()):
        listed.sort(key=age)
        for policy in listed:
            targeted = targets(policy)
            verdict = read(policy, view)
            accepted = verdict.accepted
            if targeted and all(winner(listed, s, sec) is not policy for s, sec in targeted):
                accepted = (False, "Conflicted", "an older policy targets the same Services")
            gateways = sorted(set().union(*(used.get((ns, s), set()) for s, _ in targeted)))
            ancestors = [
                {
                    "ancestorRef": {
                        "group": GROUP,
                        "kind": "Gateway",
                        "namespace": gns,
                        "name": gname,
                    },
                    "controllerName": CONTROLLER,
                    "conditions": [
                        _condition("Accepted", accepted),
                        _condition("ResolvedRefs", verdict.resolved),
                    ],
                }
                for gns, gname in gateways[:MAX_ANCESTORS]
            ]
            meta = policy.get("metadata") or {}
            if not isinstance(meta.get("name"), str):
                continue
            reported = {
                "apiVersion": API_VERSION,
                "kind": "BackendTLSPolicy",
                "metadata": {"name": meta["name"], "namespace": ns},
                "status": {"ancestors": ancestors},
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
