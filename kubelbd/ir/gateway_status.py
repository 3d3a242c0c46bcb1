"""Status as data for Gateway API (pure): what a Gateway and an HTTPRoute should say.

The record's own conditions (Accepted, Programmed) are kubelbd's, as for every record. The
tenant object's status follows Gateway API: a Gateway's addresses, conditions and listeners
(attachedRoutes counted by ir.gateway), an HTTPRoute's `status.parents` entry per parentRef
(Accepted as the tenant side resolved the attachment, ResolvedRefs from its backends). Both go
to the tenant as one canonical JSON document (`SourceStatus.document`); the source places it
and stamps lastTransitionTime there (sources/gateway.py, sources/httproute.py).
"""

from __future__ import annotations

import json
from typing import Any

from ..records import conditions
from ..records.names import GATEWAY_CONTROLLER, LOADBALANCER, ROUTE
from ..records.problems import Problem, problems_of
from ..records.status import Event, SourceStatus
from ..records.types import GatewayListener, LBRecord, LoadBalancerReport, RouteRecord, RouteReport
from .allocation import AllocationError
from .gateway import GatewayIR
from .status import DNSState, Report

GROUP = "gateway.networking.k8s.io"
#: the allocator's reasons, as Gateway API's Programmed reasons say them
ADDRESS_REASONS = {"AddressNotInPool": "AddressNotUsable", "AddressInUse": "AddressNotUsable"}
#: backend problems Gateway API names as ResolvedRefs reasons; any other is BackendNotFound
REF_REASONS = frozenset(
    {"InvalidKind", "RefNotPermitted", "BackendNotFound", "UnsupportedProtocol"}
)


def document(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> Any:
    return conditions.desired(type_, ok, reason, message, generation)


def _source(rec: RouteRecord | LBRecord, doc: Any, events: list[Event]) -> SourceStatus:
    ref = rec.spec["source"]
    return SourceStatus(
        ref["kind"], ref["namespace"], ref["name"], ref["uid"], (), tuple(events),
        ref.get("generation", 0), document=document(doc),
    )  # fmt: skip


def _resolved_refs(route: RouteRecord, generation: int) -> Any:
    """ResolvedRefs: False with Gateway API's reason for the first reference that does not
    resolve (the tenant side named it: InvalidKind, RefNotPermitted, BackendNotFound), True
    when every backend of every rule resolved."""
    for problem in route.spec.get("problems", []):
        if problem["reason"] in REF_REASONS:
            reason, message = problem["reason"], problem["message"]
            return _condition("ResolvedRefs", False, reason, message, generation)
    for rule in route.spec["rules"]:
        for p in rule["paths"]:
            for b in p["backends"]:
                if "problem" in b:
                    reason = next(
                        (r for r in REF_REASONS if b["problem"].startswith(r)), "BackendNotFound"
                    )
                    return _condition("ResolvedRefs", False, reason, b["problem"], generation)
    return _condition("ResolvedRefs", True, "ResolvedRefs", "", generation)


def route_report(
    route: RouteRecord, gateways: GatewayIR, applied: bool, dns: DNSState | None = None
) -> Report:
    """A route's record conditions (DNSPublished too, when kubelbd publishes its names) and
    its `status.parents`."""
    generation = route.generation
    source_generation = route.spec["source"].get("generation", 0)
    problems = problems_of(route.spec.get("problems", []))
    served = gateways.served.get(route.id, [])
    accepted = conditions.accepted(problems, generation)
    if not applied:
        programmed = _condition("Programmed", False, "Pending", "waiting for Envoy", generation)
    elif served:
        where = ", ".join(served)
        programmed = _condition("Programmed", True, "Programmed", f"serving on {where}", generation)
    else:
        programmed = _condition(
            "Programmed", False, "NotAttached", "attached to no served listener", generation
        )
    conds = [accepted, programmed]
    if dns is not None:
        conds.append(
            conditions.desired("DNSPublished", dns.published, dns.reason, dns.message, generation)
        )
    status: RouteReport = {
        "hosts": "",
        "conditions": conds,
        "observedGeneration": generation,
    }
    source = None
    if applied:
        resolved = _resolved_refs(route, source_generation)
        parents = [
            {
                "parentRef": dict(p["ref"]),
                "controllerName": GATEWAY_CONTROLLER,
                "conditions": [
                    _condition("Accepted", p["accepted"], p["reason"], p["message"],
                               source_generation),
                    resolved,
                ],
            }
            for p in route.spec.get("parents", [])
            # A Gateway that is not ours (or not there) is another controller's to report on.
            if p["gateway"]
        ]  # fmt: skip
        events = [Event("Warning", p.reason, p.message) for p in problems]
        if dns is not None and dns.warn:
            events.append(Event("Warning", dns.reason, dns.message))
        source = _source(route, parents, events)
    return Report(ROUTE, route.tenant, route.name, status, source)


def gateway_report(
    rec: LBRecord,
    address: str | None,
    gateways: GatewayIR,
    failure: AllocationError | None,
    applied: bool,
) -> Report:
    """A Gateway's record conditions, and its status: addresses, conditions, listeners."""
    generation = rec.generation
    source_generation = rec.spec["source"].get("generation", 0)
    problems = problems_of(rec.spec.get("problems", []))
    accepted = conditions.accepted(problems, generation)
    if not applied:
        programmed = _condition("Programmed", False, "Pending", "waiting for Envoy", generation)
    elif failure is not None:
        programmed = _condition("Programmed", False, failure.reason, failure.message, generation)
    elif address is None:
        programmed = _condition(
            "Programmed", False, "AddressNotAssigned", "no address yet", generation
        )
    else:
        programmed = _condition(
            "Programmed", True, "Programmed", f"serving at {address}", generation
        )
    status: LoadBalancerReport = {
        "conditions": [accepted, programmed],
        "ingress": [{"ip": address}] if address else [],
        "observedGeneration": generation,
    }
    source = None
    if applied:
        g = source_generation
        ready = address is not None and failure is None
        listeners = [
            _listener(lst, gateways, rec.id, ready, g) for lst in rec.spec.get("listeners", [])
        ]
        served = {lst["name"] for lst in rec.spec.get("listeners", [])}
        refused = _refused_listeners(problems, served, g)
        if failure is not None:
            why = ADDRESS_REASONS.get(failure.reason, "AddressNotAssigned")
        else:
            why = "Programmed" if ready else "AddressNotAssigned"
        valid = not refused and all(_ok(x, "ResolvedRefs") for x in listeners)
        if valid:
            accepted_gw = _condition("Accepted", True, "Accepted", "", g)
        else:
            message = "some listeners are not valid; see their conditions"
            # Accepted while one listener is: that one is served.
            accepted_gw = _condition("Accepted", bool(served), "ListenersNotValid", message, g)
        listeners = sorted(listeners + refused, key=lambda x: str(x["name"]))
        doc = {
            "addresses": [{"type": "IPAddress", "value": address}] if address else [],
            "conditions": [
                accepted_gw,
                _condition("Programmed", ready, why, failure.message if failure else "", g),
            ],
            "listeners": listeners,
        }
        events = [Event("Warning", p.reason, p.message) for p in problems]
        events += [
            Event("Warning", p.reason, f"listener {name}: {p.message}")
            for name, p in sorted(gateways.unserved.get(rec.id, {}).items())
        ]
        if failure is not None:
            events.append(Event("Warning", failure.reason, failure.message))
        source = _source(rec, doc, events)
    return Report(LOADBALANCER, rec.tenant, rec.name, status, source)


def _ok(listener: Any, type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in listener["conditions"])


def _listener(lst: GatewayListener, gateways: GatewayIR, gid: str, ready: bool, g: int) -> Any:
    """A served listener's status: Accepted; ResolvedRefs False for the first reference that
    does not resolve (the tenant side's, or its certificates as the data plane found them);
    Programmed once the Gateway has its address and the listener a certificate it serves."""
    unresolved = lst.get("unresolved")
    unserved = gateways.unserved.get(gid, {}).get(lst["name"])
    if unresolved is not None:
        message = unresolved["message"].removeprefix(f"listener {lst['name']}: ")
        resolved = _condition("ResolvedRefs", False, unresolved["reason"], message, g)
    elif unserved is not None:
        resolved = _condition("ResolvedRefs", False, unserved.reason, unserved.message, g)
    else:
        resolved = _condition("ResolvedRefs", True, "ResolvedRefs", "", g)
    if unserved is not None:
        programmed = _condition("Programmed", False, "Invalid", unserved.message, g)
    else:
        programmed = _condition("Programmed", ready, "Programmed" if ready else "Pending", "", g)
    return {
        "name": lst["name"],
        "supportedKinds": [{"group": GROUP, "kind": k} for k in lst.get("kinds", ["HTTPRoute"])],
        "attachedRoutes": gateways.attached.get(gid, {}).get(lst["name"], 0),
        "conditions": [
            _condition("Accepted", True, "Accepted", "", g),
            programmed,
            resolved,
            _condition("Conflicted", False, "NoConflicts", "", g),
        ],
    }


def _refused_listeners(problems: list[Problem], served: set[str], g: int) -> list[Any]:
    """The listeners the tenant side refused (each a problem `listener <name>: ...`, with
    Gateway API's reason): in the status, not Accepted, not Programmed, nothing attached."""
    out: dict[str, Any] = {}
    for p in problems:
        head, sep, message = p.message.partition(": ")
        name = head.removeprefix("listener ")
        if not sep or not head.startswith("listener ") or name in served or name in out:
            continue  # a listener listed twice: the served one speaks for the name
        conflicted = p.reason in ("HostnameConflict", "ProtocolConflict")
        out[name] = {
            "name": name,
            "supportedKinds": [],
            "attachedRoutes": 0,
            "conditions": [
                _condition("Accepted", False, p.reason, message, g),
                _condition("Programmed", False, "Invalid", message, g),
                _condition("ResolvedRefs", True, "ResolvedRefs", "", g),
                _condition("Conflicted", conflicted, p.reason if conflicted else "NoConflicts",
                           "", g),
            ],
        }  # fmt: skip
    return list(out.values())
