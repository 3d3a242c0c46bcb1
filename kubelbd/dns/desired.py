"""Which names kubelbd should publish, for which record, and which it must not (pure).

From what Envoy serves: a Route's served hosts (the IR decided them: owned, allowed, not
lost to another tenant) at the public address, a wildcard host as a wildcard record; a
Gateway API route's hostnames at the addresses of the Gateways serving them; a
LoadBalancer's names (its Service's annotation, or its automatic name) at the addresses it
is served at. A catch-all (no host) has no name.

One name, one owner. Routes and LoadBalancers of every tenant meet here, so this is where a
name two records want is given to one: the earliest claim by kubelbd's own clock (a Route's
claim of the host, a LoadBalancer's record creation), as the IR gives hosts to Routes. A
LoadBalancer's name under another record's wildcard host counts as that host, so a tenant
cannot take clients of a name another tenant serves by a wildcard. A record that loses a name
is told why (DNSPublished False); so is one whose host is not allowed or held by another
tenant, though nothing is published for those hosts in any case.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from ..ir.http import IR
from ..ir.status import DNSState
from ..records.names import LOADBALANCER, ROUTE, namespace_of
from ..records.problems import problems_of
from ..records.types import LBRecord, ProblemSpec, RouteRecord, fixed_width
from .records import Endpoint, RType

Key = tuple[str, str]
"""A record whose names are published: (record kind, record id)."""

_Claim = tuple[tuple[str, str], Key]  # ((when, tiebreak), key): the smallest wins


@dataclass
class Desired:
    #: per record, the record sets to publish (the names it owns, no others)
    endpoints: dict[Key, list[Endpoint]] = field(default_factory=dict)
    #: per record, why some of its names are not published, whatever the server says
    refused: dict[Key, DNSState] = field(default_factory=dict)
    #: per record, the names to write into the tenant object's status, once published
    names: dict[Key, list[str]] = field(default_factory=dict)


def route_key(rid: str) -> Key:
    return (ROUTE.kind, rid)


def lb_key(rid: str) -> Key:
    return (LOADBALANCER.kind, rid)


@lru_cache(maxsize=4096)
def record_type(target: str) -> RType:
    try:
        return "A" if ipaddress.ip_address(target).version == 4 else "AAAA"
    except ValueError:
        return "CNAME"


def _endpoints(name: str, targets: Sequence[str], ttl: int, resource: str) -> list[Endpoint]:
    """A and AAAA for addresses; a CNAME for a name (alone: a CNAME has no neighbours)."""
    by_type: dict[RType, list[str]] = {}
    for t in targets:
        by_type.setdefault(record_type(t), []).append(t)
    if "CNAME" in by_type and len(by_type) == 1:
        return [Endpoint(name, "CNAME", (by_type["CNAME"][0],), ttl, resource)]
    return [
        Endpoint(name, rtype, tuple(sorted(set(values))), ttl, resource)
        for rtype, values in sorted(by_type.items())
        if rtype != "CNAME"
    ]


def _covering_wildcards(name: str, route_hosts: Mapping[str, _Claim]) -> list[tuple[int, _Claim]]:
    """(depth, claim) of the served wildcard hosts covering `name` (depth 0) or one of its
    ancestors (the depth of that ancestor below `name`)."""
    out = []
    labels = name.split(".")
    for depth in range(len(labels) - 1):
        claim = route_hosts.get("*." + ".".join(labels[depth + 1 :]))
        if claim is not None:
            out.append((depth, claim))
    return out


def desired(
    routes: Mapping[str, RouteRecord],
    ir: IR,
    lbs: Mapping[str, LBRecord],
    lb_targets: Mapping[str, Sequence[str]],
    public_address: str,
    ttl: int,
    gateway_hosts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> Desired:
    """What to publish now. `lb_targets`: per LoadBalancer, where Envoy serves it (only those
    Envoy serves); `ttl`: the fleet's default; `gateway_hosts`: per Gateway API route, its
    served hostnames and the Gateway addresses each is served at (ir.gateway), which meet the
    Ingress hosts here, one owner per name as for them."""
    out = Desired()
    wants: dict[str, list[tuple[_Claim, list[Endpoint]]]] = {}
    route_hosts: dict[str, _Claim] = {}
    served: dict[str, dict[str, Sequence[str]]] = {}
    if public_address:
        for rid, hosts in ir.served.items():
            served[rid] = {h: (public_address,) for h in hosts if h and h != "*"}
    for rid, at in (gateway_hosts or {}).items():
        served.setdefault(rid, {}).update(at)
    for rid, hosts_at in sorted(served.items()):
        route = routes.get(rid)
        if route is None:
            continue
        key = route_key(rid)
        r_ttl = route.spec.get("dns", {}).get("ttl", ttl)
        resource = f"route/{namespace_of(route.tenant)}/{route.name}"
        for host, targets in hosts_at.items():
            claim = (route.claim_key(host)[0], rid), key
            route_hosts.setdefault(host, claim)
            route_hosts[host] = min(route_hosts[host], claim)
            wants.setdefault(host, []).append((claim, _endpoints(host, targets, r_ttl, resource)))
    for rid, rec in lbs.items():
        targets = lb_targets.get(rid) or ()
        dns = rec.spec.get("dns", {})
        if not targets or not dns.get("hostnames"):
            continue
        key = lb_key(rid)
        resource = f"loadbalancer/{namespace_of(rec.tenant)}/{rec.name}"
        for name in dns["hostnames"]:
            since = (dns.get("claims") or {}).get(name) or rec.recorded
            claim = (fixed_width(since) if since else "9999", rid), key
            endpoints = _endpoints(name, targets, dns.get("ttl", ttl), resource)
            wants.setdefault(name, []).append((claim, endpoints))
    lost: dict[Key, list[tuple[str, bool]]] = {}  # name, whether another tenant has it
    for name, candidates in wants.items():
        # An older wildcard of another tenant keeps a LoadBalancer's name it serves, and any
        # name below one it serves (which would become an empty name the wildcard no longer
        # answers for). A Route's own exact host under a wildcard is routed to that Route, so
        # its name is too.
        covering = _covering_wildcards(name, route_hosts)
        kept = []
        for claim, endpoints in candidates:
            if any(
                _tenant(w[1]) != _tenant(claim[1]) and w < claim
                and (depth > 0 or claim[1][0] == LOADBALANCER.kind)
                for depth, w in covering
            ):  # fmt: skip
                lost.setdefault(claim[1], []).append((name, True))
            else:
                kept.append((claim, endpoints))
        candidates[:] = kept
    for name, candidates in sorted(wants.items()):
        if not candidates:
            continue
        candidates.sort(key=lambda c: c[0])
        (_, winner), endpoints = candidates[0]
        if endpoints:
            out.endpoints.setdefault(winner, []).extend(endpoints)
        for (_, key), _e in candidates[1:]:
            if key == winner:
                continue
            if endpoints and key[0] == winner[0] == ROUTE.kind and _tenant(key) == _tenant(winner):
                # Routes of one tenant share a host (Ingress merges them): the name is
                # published for all of them, by the first.
                out.endpoints.setdefault(key, []).extend(endpoints)
                continue
            lost.setdefault(key, []).append((name, _tenant(winner) != _tenant(key)))
    for key, taken in lost.items():
        if any(other for _, other in taken):
            reason, whose = "NameHeldByOtherTenant", "held by another tenant"
        else:
            reason, whose = "NameInUse", "held by an older object of this tenant"
        listed = ", ".join(n for n, _ in taken)
        out.refused[key] = DNSState(False, reason, f"{listed}: {whose}; not published", warn=True)
    for rid, route in routes.items():
        _policy_refusals(out, route_key(rid), route.spec.get("problems", []), ir.conflicts.get(rid))
    for rid, rec in lbs.items():
        _policy_refusals(out, lb_key(rid), rec.spec.get("problems", []), None)
        names = rec.spec.get("dns", {}).get("hostnames", [])
        published = {e.name for e in out.endpoints.get(lb_key(rid), [])}
        if names:
            out.names[lb_key(rid)] = [n for n in names if n in published]
    for rid, route in routes.items():
        auto = route.spec.get("dns", {}).get("hostnames", [])
        published = {e.name for e in out.endpoints.get(route_key(rid), [])}
        if auto:
            out.names[route_key(rid)] = [n for n in auto if n in published]
    return out


def _tenant(key: Key) -> str:
    return key[1].split("/", 1)[0]


def _policy_refusals(
    out: Desired,
    key: Key,
    problems: Sequence[ProblemSpec],
    conflicts: Sequence[tuple[str, str]] | None,
) -> None:
    """Names the record asked for and may not have: not allowed, or another tenant's (the
    record's own condition and Event say so already; DNSPublished repeats why)."""
    if key in out.refused:
        return
    not_allowed = [p.message for p in problems_of(problems) if p.reason == "HostNotAllowed"]
    if not_allowed:
        message = "; ".join(not_allowed) + "; not published"
        out.refused[key] = DNSState(False, "NameNotAllowed", message)
    elif conflicts:
        held = ", ".join(h for h, _ in conflicts)
        out.refused[key] = DNSState(
            False, "NameHeldByOtherTenant", f"{held}: held by another tenant; not published"
        )
