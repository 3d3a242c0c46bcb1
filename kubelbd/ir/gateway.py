"""Gateway API in the fleet model (pure): each Gateway's HTTP listeners, with the routes
attached to them, at the Gateway's own address.

Unlike Ingress, nothing is shared here: a Gateway has an address of its own (the Layer 4
allocator's, `ir.l4.place`), so its hosts need no ownership between tenants to be routed, and
two Gateways may serve one hostname differently. The tenant side has resolved each route's
attachment (`RouteSpec.parents`: which Gateway, which listeners, accepted or why not); this
module only intersects hostnames and orders the rules.

- A route host and a listener hostname meet as Gateway API says: a wildcard `*.x` covers any
  name below x (any depth, as Envoy's `*.` suffix); a route without hostnames takes the
  listener's; a listener without one takes the route's.
- Listeners of one Gateway on one port share an Envoy listener; their hosts are merged.
- Within a host, the precedence of Gateway API: an Exact path, then the longest prefix, then a
  method, then the most header matches, then the most query matches, then the oldest route
  (creation time, then namespace/name), then rule order.

Backends resolve to the clusters the HTTP model keeps (`ir.http.cluster_name`), so a Service
behind an Ingress and an HTTPRoute is one cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..records.types import HeaderMatch, HTTPPath, LBRecord, RouteRecord
from .http import Target, cluster_name
from .l4 import Placement

ANY_HOST = "*"

Match = tuple[str, str, str]  # (name, value, Exact | RegularExpression)


@dataclass(frozen=True)
class GatewayRule:
    path: str
    exact: bool
    headers: tuple[Match, ...]
    query: tuple[Match, ...]
    method: str
    target: Target


@dataclass(frozen=True)
class GatewayHost:
    domain: str  # a name, `*.x`, or ANY_HOST
    rules: tuple[GatewayRule, ...]


@dataclass(frozen=True)
class GatewayHTTPListener:
    """One Envoy listener: a Gateway's HTTP listeners on one port, at its address."""

    name: str
    address: str
    port: int
    hosts: tuple[GatewayHost, ...]


@dataclass
class GatewayIR:
    listeners: list[GatewayHTTPListener] = field(default_factory=list)
    #: Gateway record id -> listener name -> routes attached (listener status attachedRoutes)
    attached: dict[str, dict[str, int]] = field(default_factory=dict)
    #: route id -> "<gateway record id>/<listener>" it is served on, sorted
    served: dict[str, list[str]] = field(default_factory=dict)


def intersect(listener: str | None, host: str) -> str | None:
    """The hostname a route host (`""`: none) serves on a listener (None: no hostname), or
    None when they do not meet."""
    if not listener:
        return host or ANY_HOST
    if not host:
        return listener
    if host == listener:
        return host
    if listener.startswith("*.") and host.endswith(listener[1:]):
        return host  # the route's name (or narrower wildcard) inside the listener's
    if host.startswith("*.") and listener.endswith(host[1:]):
        return listener
    return None


def _matches(ms: Iterable[HeaderMatch]) -> tuple[Match, ...]:
    return tuple(sorted((m["name"], m["value"], m["type"]) for m in ms))


def _rule(route: RouteRecord, p: HTTPPath) -> GatewayRule:
    target = Target(
        tuple(
            (cluster_name(route.tenant, route.namespace, b) if "nodePort" in b else None,
             b.get("weight", 1))
            for b in p["backends"]
        ),
        route.id,
    )  # fmt: skip
    return GatewayRule(
        p["path"], p["pathType"] == "Exact", _matches(p.get("headers", [])),
        _matches(p.get("queryParams", [])), p.get("method", ""), target,
    )  # fmt: skip


def _precedence(route: RouteRecord, index: int, r: GatewayRule) -> tuple[Any, ...]:
    ns_name = f"{route.namespace}/{route.spec['source']['name']}"
    return (
        0 if r.exact else 1, -len(r.path), 0 if r.method else 1, -len(r.headers),
        -len(r.query), route.created, ns_name, index,
    )  # fmt: skip


def build(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    routes: Iterable[RouteRecord],
) -> GatewayIR:
    """Every Gateway's HTTP listeners with what is attached to them. `gateways`: LoadBalancer
    records with listeners, by id; `placements`: their addresses (a Gateway without one is
    not served yet); `routes`: every route (those without parents are not looked at)."""
    out = GatewayIR()
    # (gateway id, port) -> domain -> [(precedence, rule)]
    tables: dict[tuple[str, int], dict[str, list[tuple[tuple[Any, ...], GatewayRule]]]] = {}
    listener_of: dict[str, dict[str, tuple[int, str | None]]] = {}
    for gid, gw in gateways.items():
        http = {
            lst["name"]: (lst["port"], lst.get("hostname"))
            for lst in gw.spec.get("listeners", [])
            if lst["protocol"] == "HTTP"
        }
        listener_of[gid] = http
        out.attached[gid] = dict.fromkeys(http, 0)
        if gid in placements:
            for port, _ in http.values():
                tables.setdefault((gid, port), {})
    for route in routes:
        served: set[str] = set()
        for parent in route.spec.get("parents", []):
            gid = f"{route.tenant}/{parent['gateway']}"
            if not parent["accepted"] or gid not in listener_of:
                continue
            for name in parent["listeners"]:
                if name not in listener_of[gid]:
                    continue
                out.attached[gid][name] += 1
                port, hostname = listener_of[gid][name]
                table = tables.get((gid, port))
                if table is None:
                    continue  # the Gateway has no address yet
                served.add(f"{gid}/{name}")
                index = 0
                for rule in route.spec["rules"]:
                    domain = intersect(hostname, rule["host"])
                    for p in rule["paths"]:
                        index += 1
                        if domain is None:
                            continue
                        r = _rule(route, p)
                        table.setdefault(domain, []).append((_precedence(route, index, r), r))
        if served:
            out.served[route.id] = sorted(served)
    for (gid, port), table in sorted(tables.items()):
        hosts = tuple(
            GatewayHost(domain, _ordered(entries)) for domain, entries in sorted(table.items())
        )
        name = f"gw/{gid}/{port}"
        out.listeners.append(GatewayHTTPListener(name, placements[gid].address, port, hosts))
    return out


def _ordered(entries: list[tuple[tuple[Any, ...], GatewayRule]]) -> tuple[GatewayRule, ...]:
    """Precedence order, without a rule an earlier one with the same match shadows."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for _, r in sorted(entries, key=lambda e: e[0]):
        key = (r.path, r.exact, r.headers, r.query, r.method)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return tuple(out)
