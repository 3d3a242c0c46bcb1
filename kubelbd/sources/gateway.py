"""The Gateway source: a tenant Gateway of a GatewayClass of kubelbd's (`kubelb`, or the
tenant's own naming kubelbd's controller) becomes a LoadBalancer spec.

A Gateway gets an address of its own, as a LoadBalancer Service does; what Envoy serves there
is its `listeners` (HTTP, HTTPS, TLS, TCP, UDP), each on its real port, for the routes the
tenant side attached to it (sources/routes.py). Each served listener says the route kinds it
takes, a TLS one its mode, the copies of the Secrets one that terminates TLS may be served
with, and the first reference that does not resolve. A listener kubelbd does not serve
(another protocol, a hostname the tenant may not have, a port and hostname taken by an
earlier listener, a port another protocol has) is left out of the record and reported as a
problem whose message starts `listener <name>: `;
the data plane reports every listener's conditions from the two. The whole `status`
(addresses, conditions, listeners) is the data plane's document.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..objects import Obj, Resource
from ..records.names import LOADBALANCER, copy_name
from ..records.problems import Problem, Translation, capped
from ..records.status import SourceStatus
from ..records.types import GatewayListener, LoadBalancerSpec
from . import gatewayapi, shapes
from .base import References, StatusPatch, TenantView
from .gatewayapi import GATEWAY_CLASSES, GATEWAYS, REFERENCE_GRANTS


def translate(gateway: Obj, view: TenantView) -> Translation[LoadBalancerSpec]:
    malformed = shapes.problem(shapes.Gateway, gateway)
    if malformed is not None:
        refused: LoadBalancerSpec = {
            "source": shapes.source_ref("Gateway", gateway), "ports": [], "listeners": [],
            "sessionAffinity": "None", "proxyProtocol": "", "problems": [malformed.spec()],
        }  # fmt: skip
        return Translation(refused, [malformed])
    spec = gateway["spec"]
    found = gatewayapi.listeners(gateway, view)
    problems: list[Problem] = list(found.problems)
    served: list[GatewayListener] = []
    for listener in found.served:
        entry: GatewayListener = {
            "name": listener["name"],
            "port": listener["port"],
            "protocol": listener["protocol"],
        }
        if listener.get("hostname"):
            entry["hostname"] = listener["hostname"]
        resolved = found.resolved[listener["name"]]
        entry["kinds"] = resolved.kinds
        if listener["protocol"] == "TLS":
            entry["tlsMode"] = "Terminate" if gatewayapi.terminates(listener) else "Passthrough"
        if gatewayapi.terminates(listener):
            entry["certificates"] = [copy_name(ns, name) for ns, name in resolved.certificates]
        if resolved.unresolved is not None:
            entry["unresolved"] = resolved.unresolved.spec()
            problems.append(resolved.unresolved)
        served.append(entry)
    out: LoadBalancerSpec = {
        "source": shapes.source_ref("Gateway", gateway),
        "ports": [],
        "sessionAffinity": "None",
        "proxyProtocol": "",
        "listeners": served,
    }
    address = _requested_address(spec.get("addresses") or [], problems)
    if address:
        out["requestedAddress"] = address
    if not served and not problems:
        problems.append(Problem("NoListeners", "the Gateway has no listeners"))
    problems = capped(problems)
    if problems:
        out["problems"] = [p.spec() for p in problems]
    return Translation(out, problems)


def _requested_address(addresses: list[Any], problems: list[Problem]) -> str:
    """`spec.addresses`: one IP address may be asked for (the first); what else is asked
    for cannot be given."""
    wanted = ""
    for i, a in enumerate(addresses):
        kind = a.get("type") or "IPAddress"
        value = a.get("value") or ""
        if kind != "IPAddress":
            problems.append(
                Problem("UnsupportedAddress", f"address type {kind[:64]!r} is not supported")
            )
        elif i > 0 or wanted:
            problems.append(
                Problem("UnsupportedAddress", f"{value[:64]!r}: one address per Gateway")
            )
        else:
            try:
                wanted = str(ipaddress.ip_address(value))
            except ValueError:
                problems.append(
                    Problem("UnsupportedAddress", f"{value[:64]!r} is not an IP address")
                )
    return wanted


def status_patch(gateway: Obj, status: SourceStatus, now: str) -> StatusPatch | None:
    """The Gateway's whole status is the data plane's document: a merge patch that makes it
    so (a key it leaves out is removed), unless the object holds it already; conditions keep
    the lastTransitionTime they have while their status holds, else get `now`."""
    if not status.document:
        return None  # nothing decided (a Gateway that stops being ours is its new owner's)
    want = gatewayapi.document(status.document)
    have = gatewayapi.current_status(gateway)
    if gatewayapi.without_times(have) == want:
        return None
    body: dict[str, Any] = {k: None for k in have if k not in want}
    body.update(gatewayapi.stamped(want, have, now))
    return StatusPatch({"status": body})


class GatewaySource:
    """gateway.networking.k8s.io/v1 Gateway (class `kubelb`) → LoadBalancer."""

    kind = "Gateway"
    api_version = gatewayapi.API_VERSION
    resource = GATEWAYS
    #: the GatewayClass: applied again (and its status) when anyone changes it, but for its
    #: status alone (our own writes come back so; a status someone else wrote is put right
    #: at the next change or resync)
    depends_on: tuple[Resource, ...] = (GATEWAY_CLASSES,)
    referenced: tuple[Resource, ...] = (REFERENCE_GRANTS,)
    record = LOADBALANCER

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        return gatewayapi.is_our_gateway(obj, view)

    def record_name(self, namespace: str, name: str) -> str:
        return gatewayapi.gateway_record(namespace, name)

    def references(self, obj: Obj, view: TenantView) -> References:
        """The Secrets its listeners that terminate TLS may be served with (copied to the management
        cluster), and the grants of the namespaces they are in (its routes reference it, not
        it them)."""
        if not shapes.fits(shapes.Gateway, obj):
            return References()
        ns = (obj.get("metadata") or {}).get("namespace", "")
        found = gatewayapi.listeners(obj, view)
        secrets = {ref for r in found.resolved.values() for ref in r.certificates}
        others: set[tuple[Resource, tuple[str, str]]] = set()
        for listener in (obj.get("spec") or {}).get("listeners") or []:
            for ref in (listener.get("tls") or {}).get("certificateRefs") or []:
                if (ref.get("namespace") or ns) != ns:
                    # Every grant in that namespace, also one made later (References).
                    others.add((REFERENCE_GRANTS, (ref["namespace"], "")))
        return References(tls_secrets=frozenset(secrets), others=frozenset(others))

    def translate(self, obj: Obj, view: TenantView) -> Translation[LoadBalancerSpec]:
        return translate(obj, view)

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        return status_patch(obj, status, gatewayapi.now())

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        return [(GATEWAY_CLASSES, gatewayapi.gateway_class())]

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        return [(GATEWAY_CLASSES, c) for c in gatewayapi.tenants_classes(view)]
