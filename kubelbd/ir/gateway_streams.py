"""The Gateways' TLS, TCP and UDP listeners (pure): the part of the Gateway model that
proxies connections, not requests (ir.gateway_model assembles it with the HTTP part).

- A TLS port is a filter chain per SNI name its routes serve (the name kept, as for HTTP, by
  the most specific listener that takes it, and there by the oldest route), proxied to the
  route's backends: passed through, or terminated with the listener's certificate (a
  Passthrough and a Terminate listener may share the port). A name whose route has no
  backend refuses the connection; a name no route serves has no chain, so Envoy closes it.
- A TCP or UDP listener proxies to the backends of the oldest route attached to it.

They are rebuilt whole on every change of their tenant's Gateway model: a tenant has few of
them, where HTTP routes are many (those are kept between changes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from ..records.types import GatewayListener, HTTPRule, LBRecord, RouteRecord, TenantRecord
from .gateway import (
    ANY_HOST,
    GatewayIR,
    GatewayTLSListener,
    TLSChain,
    certificate_of,
    intersect,
    listener_name,
    owner,
    specificity,
)
from .http import cluster_name
from .l4 import L4Cluster, L4Listener, Placement
from .tls import CertificateData

#: the listener protocols served here
STREAMS = ("TLS", "TCP", "UDP")


def add_streams(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    routes: list[RouteRecord],
    certificates: Mapping[str, CertificateData],
    now: dt.datetime,
    tenants: Mapping[str, TenantRecord],
    out: GatewayIR,
) -> None:
    """Add the TLS, TCP and UDP listeners of `gateways` and the clusters they proxy to, and
    the routes they serve, to `out` (whose `served` and `hosts` lists it replaces, never
    changes: they may be another model's too)."""
    protocols = {
        lst["protocol"] for gw in gateways.values() for lst in gw.spec.get("listeners", [])
    }
    if not protocols & set(STREAMS):
        return
    clusters: dict[str, L4Cluster] = {}
    attachments = _attachments(gateways, routes)
    _tls(gateways, placements, attachments, certificates, now, tenants, clusters, out)
    _l4(gateways, placements, attachments, tenants, clusters, out)
    out.l4_clusters = [clusters[n] for n in sorted(clusters)]


def _serve(out: GatewayIR, route: RouteRecord, where: str) -> None:
    out.served[route.id] = sorted({*out.served.get(route.id, ()), where})


def _attachments(
    gateways: Mapping[str, LBRecord], routes: list[RouteRecord]
) -> list[tuple[RouteRecord, str, str]]:
    """(route, Gateway record id, listener name) of every accepted attachment, the oldest
    route first."""
    return [
        (route, gid, name)
        for route in sorted(routes, key=lambda r: r.age_key)
        for parent in route.spec.get("parents", [])
        if parent["accepted"] and (gid := f"{route.tenant}/{parent['gateway']}") in gateways
        for name in parent["listeners"]
    ]


def _backends(route: RouteRecord, rule: HTTPRule, protocol: str) -> list[tuple[str, int, int]]:
    """A Layer 4 rule's backends that resolve and carry weight: (cluster, nodePort, weight)."""
    return [
        (f"gw/{cluster_name(route.tenant, route.namespace, b)}/{protocol.lower()}",
         b["nodePort"], b.get("weight", 1))
        for b in (rule["paths"][0]["backends"] if rule["paths"] else [])
        if "nodePort" in b and b.get("weight", 1) > 0
    ]  # fmt: skip


def _tls(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    attachments: list[tuple[RouteRecord, str, str]],
    certificates: Mapping[str, CertificateData],
    now: dt.datetime,
    tenants: Mapping[str, TenantRecord],
    clusters: dict[str, L4Cluster],
    out: GatewayIR,
) -> None:
    """The Gateways' TLS listeners: a filter chain per SNI name a route attached to one of
    them serves, each name kept for the most specific listener of the port that takes it
    (as for HTTP) and, on it, for the route of the most specific hostname that meets it,
    then the oldest; passed through, or terminated with the listener's certificate (without
    one the listener is not served)."""
    listening: dict[tuple[str, str], tuple[GatewayListener, str]] = {}  # -> (it, secret)
    hostnames: dict[tuple[str, int], set[str]] = {}  # (gid, port) -> listener hostnames
    for gid, gw in sorted(gateways.items()):
        for lst in gw.spec.get("listeners", []):
            if lst["protocol"] != "TLS":
                continue
            # Every listener's hostname counts for isolation, served or not: the names of
            # one without a usable certificate are its own, not a wildcard neighbour's.
            hostnames.setdefault((gid, lst["port"]), set()).add(lst.get("hostname", ""))
            secret = ""
            if lst.get("tlsMode") == "Terminate":
                secret = certificate_of(gw, lst, certificates, now, out.unserved)
                if not secret:
                    continue
            if gid in placements:  # else no address yet
                listening[(gid, lst["name"])] = (lst, secret)
    #: (gid, port) -> SNI name -> (specificity, route, rule, listener) serving it
    chosen: dict[tuple[str, int], dict[str, tuple[tuple[int, int], RouteRecord, HTTPRule, str]]]
    chosen = {}
    for route, gid, name in attachments if listening else ():
        if (gid, name) not in listening:
            continue
        lst, _ = listening[(gid, name)]
        port, hostname = lst["port"], lst.get("hostname", "")
        for rule in route.spec["rules"]:
            domain = intersect(hostname, rule["host"])
            if domain is None or owner(hostnames[(gid, port)], domain) != hostname:
                continue  # no name in common, or another listener's (listener isolation)
            chains = chosen.setdefault((gid, port), {})
            rank = specificity(rule["host"])
            if domain not in chains or rank < chains[domain][0]:
                chains[domain] = (rank, route, rule, name)  # else an older route's
    for (gid, port), chains in sorted(chosen.items()):
        address = placements[gid].address
        nodes = tenants.get(gateways[gid].tenant)
        ordered = []
        for domain, (_, route, rule, name) in sorted(chains.items()):
            backends = _backends(route, rule, "TCP")
            for cluster, node_port, _ in backends:
                addresses = nodes.addresses if nodes else ()
                clusters[cluster] = L4Cluster(cluster, addresses, node_port, "TCP", False, False)
            weights = tuple((c, w) for c, _, w in backends)
            ordered.append(TLSChain(name, domain, listening[(gid, name)][1], weights))
            _serve(out, route, f"{gid}/{name}")
            if domain != ANY_HOST:
                named = dict(out.hosts.get(route.id, {}))
                named[domain] = sorted({*named.get(domain, ()), address})
                out.hosts[route.id] = named
        name = listener_name(gid, port, "/tls")
        out.tls_listeners.append(GatewayTLSListener(name, address, port, tuple(ordered)))


def _l4(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    attachments: list[tuple[RouteRecord, str, str]],
    tenants: Mapping[str, TenantRecord],
    clusters: dict[str, L4Cluster],
    out: GatewayIR,
) -> None:
    """The Gateways' TCP and UDP listeners: each proxies to the backends of the oldest route
    attached to it (Gateway API: the others are attached, and not served), weighted."""
    chosen: dict[tuple[str, str], RouteRecord] = {}
    for route, gid, name in attachments:
        chosen.setdefault((gid, name), route)
    for gid, gw in sorted(gateways.items()):
        placement = placements.get(gid)
        for lst in gw.spec.get("listeners", []):
            winner = chosen.get((gid, lst["name"]))
            if lst["protocol"] not in ("TCP", "UDP") or placement is None or winner is None:
                continue
            protocol = lst["protocol"]
            nodes = tenants.get(gw.tenant)
            addresses = nodes.addresses if nodes else ()
            rules = winner.spec["rules"]
            backends = _backends(winner, rules[0], protocol) if rules else []
            if not backends:
                continue  # nothing to proxy to: the port is not opened
            if protocol == "UDP" and len(backends) > 1:
                # Envoy's UDP proxy sends to one cluster: one of every backend, weighted.
                name = f"gw/{gid}/{lst['port']}/udp"
                top = max(w for _, _, w in backends)
                # Each node's endpoint of a backend carries its weight, and Envoy refuses a
                # cluster whose endpoint weights sum past 2^32: at most 1000 each.
                ports = tuple((port, max(1, w * 1000 // top)) for _, port, w in backends)
                clusters[name] = L4Cluster(name, addresses, 0, "UDP", False, False, ports)
                weights = [(name, 1)]
            else:
                for name, port, _ in backends:
                    clusters[name] = L4Cluster(name, addresses, port, protocol, False, False)
                weights = [(name, w) for name, _, w in backends]
            name = listener_name(gid, lst["port"], f"/{protocol.lower()}")
            out.l4_listeners.append(
                L4Listener(name, placement.address, lst["port"], protocol, weights[0][0], False,
                           tuple(weights))
            )  # fmt: skip
            _serve(out, winner, f"{gid}/{lst['name']}")
