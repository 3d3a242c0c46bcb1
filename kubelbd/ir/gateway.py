"""Gateway API in the fleet model (pure): each Gateway's HTTP, HTTPS, TLS, TCP and UDP
listeners, with the routes attached to them, at the Gateway's own address.

Unlike Ingress, nothing is shared here: a Gateway has an address of its own (the Layer 4
allocator's, `ir.l4.place`), so its hosts need no ownership between tenants to be routed, and
two Gateways may serve one hostname differently. The tenant side has resolved each route's
attachment (`RouteSpec.parents`: which Gateway, which listeners, accepted or why not); this
module only intersects hostnames and orders the rules.

- A route host and a listener hostname meet as Gateway API says: a wildcard `*.x` covers any
  name below x (any depth, as Envoy's `*.` suffix); a route without hostnames takes the
  listener's; a listener without one takes the route's.
- Listeners of one Gateway on one port share an Envoy listener. HTTP listeners' hosts are
  merged into one filter chain, each host kept for the most specific listener that takes it
  (Gateway API's listener isolation: a route on a less specific listener does not answer for
  a more specific listener's hosts, and that one's hostname answers 404 when nothing is
  attached to it); each HTTPS listener is a filter chain of its own, chosen by SNI
  (its hostname; the one without a hostname takes any other name), with its own certificate
  and only the routes attached to it.
- An HTTPS listener is served with the first of its certificates that Envoy can serve now
  (ir.tls.usable; whatever names it has: the Gateway's address is the tenant's alone, so
  there is nothing to take from another tenant); with none, it is not served, and says why
  (InvalidCertificateRef).
- TLS, TCP and UDP listeners are in `ir.gateway_streams`; `ir.gateway_model` assembles the
  model from both, and keeps it between changes.
- Within a host, the precedence of Gateway API: an Exact path, then the longest prefix, then a
  method, then the most header matches, then the most query matches, then the oldest route
  (creation time, then namespace/name), then rule order.

Backends resolve to the clusters the HTTP model keeps (`ir.http.cluster_name`), so a Service
behind an Ingress and an HTTPRoute is one cluster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..records.names import secret_id
from ..records.problems import Problem
from ..records.types import (
    GatewayListener,
    HeaderFilter,
    HeaderMatch,
    HTTPPath,
    LBRecord,
    RouteRecord,
)
from ..records.types import PathChange as RecordPathChange
from .http import Target
from .http import target as http_target
from .l4 import L4Cluster, L4Listener, Placement
from .tls import CertificateData, usable

ANY_HOST = "*"

Match = tuple[str, str, str]  # (name, value, Exact | RegularExpression)


#: a header change: (set | add | remove, name, value)
HeaderOp = tuple[str, str, str]


def _hash_once(self: Any) -> int:
    """A frozen dataclass's hash, computed on first use and kept. The renderer's caches are
    keyed by a Gateway's listener and its hosts, and a dataclass hashes every field down
    to each rule on every call: a listener of 500 hosts, hashed at each lookup, was a tenth
    of kubelbd's time in a series of route changes. Assigned as `__hash__` in the class
    body, so that `dataclass` keeps it. Its fields are its `__dict__` until then, in their
    order (no cached property on these classes)."""
    kept: int | None = self.__dict__.get("_hash")
    if kept is None:
        kept = hash(tuple(self.__dict__.values()))
        object.__setattr__(self, "_hash", kept)
    return kept


@dataclass(frozen=True)
class PathChange:
    """The path replaced whole (`full`), or the prefix it matched, by `value`."""

    full: bool
    value: str


@dataclass(frozen=True)
class Redirect:
    """A redirect answered instead of forwarding (0, "" and None: the request's own)."""

    status: int
    scheme: str = ""
    hostname: str = ""
    port: int = 0
    path: PathChange | None = None


@dataclass(frozen=True)
class GatewayRule:
    path: str
    exact: bool
    headers: tuple[Match, ...]
    query: tuple[Match, ...]
    method: str
    target: Target
    request_headers: tuple[HeaderOp, ...] = ()
    response_headers: tuple[HeaderOp, ...] = ()
    redirect: Redirect | None = None
    #: milliseconds (0: none) for the whole request and each request to a backend; None:
    #: the default
    request_timeout: int | None = None
    backend_timeout: int | None = None
    #: URLRewrite: the Host ("": the client's) and the path (None: the client's) sent on
    host_rewrite: str = ""
    path_rewrite: PathChange | None = None

    __hash__ = _hash_once  # a route's rules are kept between builds (_compiled)


@dataclass(frozen=True)
class GatewayHost:
    domain: str  # a name, `*.x`, or ANY_HOST
    rules: tuple[GatewayRule, ...]

    __hash__ = _hash_once


@dataclass(frozen=True)
class GatewayChain:
    """One filter chain: every HTTP listener of a port (name "", no certificate), or one
    HTTPS listener (its name, its hostname as SNI, "" for any, and its certificate's id)."""

    name: str
    server_name: str
    secret: str
    hosts: tuple[GatewayHost, ...]

    __hash__ = _hash_once


@dataclass(frozen=True)
class TLSChain:
    """One filter chain of a Gateway's TLS port: the connections whose SNI is `server_name`
    (a name, `*.x`, or ANY_HOST: any other or none), of TLS `listener`, proxied to `weights`
    ((cluster, weight); none: the connection is refused), TLS terminated with certificate
    `secret` ("": passed through as it is)."""

    listener: str
    server_name: str
    secret: str
    weights: tuple[tuple[str, int], ...]


Chain_ = TypeVar("Chain_", GatewayChain, TLSChain)


@dataclass(frozen=True)
class PortListener(Generic[Chain_]):
    """One Envoy listener: a Gateway's listeners on one port, at its address, as filter
    chains (HTTP and HTTPS ones: GatewayChain; TLS ones: TLSChain)."""

    name: str  # gw/<tenant>/<Gateway record>/<port>[/tls] (listener_name)
    address: str
    port: int
    chains: tuple[Chain_, ...]

    __hash__ = _hash_once

    @property
    def tenant(self) -> str:
        """Whose Gateway it is (a tenant name has no `/`)."""
        return self.name.split("/")[1]


def listener_name(gid: str, port: int, suffix: str = "") -> str:
    """A Gateway's Envoy listener on one port (`gid`: `<tenant>/<record>`)."""
    return f"gw/{gid}/{port}{suffix}"


GatewayHTTPListener = PortListener[GatewayChain]
GatewayTLSListener = PortListener[TLSChain]


@dataclass
class GatewayIR:
    listeners: list[GatewayHTTPListener] = field(default_factory=list)
    #: the Gateways' TLS listeners (TLSRoute), by port
    tls_listeners: list[GatewayTLSListener] = field(default_factory=list)
    #: the Gateways' TCP and UDP listeners, and the clusters they and TLS listeners proxy to
    l4_listeners: list[L4Listener] = field(default_factory=list)
    l4_clusters: list[L4Cluster] = field(default_factory=list)
    #: the certificates the HTTPS and TLS chains are served with, by secret id
    secrets: dict[str, CertificateData] = field(default_factory=dict)
    #: Gateway record id -> listener name -> why it is not served (its certificates)
    unserved: dict[str, dict[str, Problem]] = field(default_factory=dict)
    #: Gateway record id -> listener name -> routes attached (listener status attachedRoutes)
    attached: dict[str, dict[str, int]] = field(default_factory=dict)
    #: route id -> "<gateway record id>/<listener>" it is served on, sorted
    served: dict[str, list[str]] = field(default_factory=dict)
    #: route id -> hostname it is served for (a name or `*.x`) -> the Gateway addresses it
    #: is served at, sorted: what DNS publishes for it (kubelbd.dns)
    hosts: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def owner(listeners: set[str], domain: str) -> str:
    """Which of the hostnames of one port's HTTP listeners ("": none) owns `domain` (a name,
    `*.x` or ANY_HOST): the most specific one that takes every host of it, an exact name
    before the longest wildcard before none (Gateway API's listener isolation)."""
    if domain in listeners:
        return domain
    covering = [
        h for h in listeners
        if h.startswith("*.") and domain != ANY_HOST and domain.endswith(h[1:])
    ]  # fmt: skip
    return max(covering, key=len) if covering else ""


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
    target = http_target(route, p["backends"])
    redirect = p.get("redirect")
    rewrite = p.get("rewrite", {})
    return GatewayRule(
        p["path"], p["pathType"] == "Exact", _matches(p.get("headers", [])),
        _matches(p.get("queryParams", [])), p.get("method", ""), target,
        _header_ops(p.get("requestHeaders", {})), _header_ops(p.get("responseHeaders", {})),
        Redirect(redirect.get("statusCode", 302), redirect.get("scheme", ""),
                 redirect.get("hostname", ""), redirect.get("port", 0),
                 _path_change(redirect.get("path")))
        if redirect is not None else None,
        p.get("timeouts", {}).get("request"), p.get("timeouts", {}).get("backendRequest"),
        rewrite.get("hostname", ""), _path_change(rewrite.get("path")),
    )  # fmt: skip


def _path_change(change: RecordPathChange | None) -> PathChange | None:
    if change is None:
        return None
    return PathChange(change["type"] == "ReplaceFullPath", change["value"])


def _header_ops(f: HeaderFilter) -> tuple[HeaderOp, ...]:
    return (
        *(("set", h["name"], h["value"]) for h in f.get("set", [])),
        *(("add", h["name"], h["value"]) for h in f.get("add", [])),
        *(("remove", name, "") for name in f.get("remove", [])),
    )


def specificity(host: str) -> tuple[int, int]:
    """How specific the route hostname a rule matched by is (smaller first): Gateway API
    prefers the most characters of a non-wildcard hostname, then of any hostname."""
    wildcard = not host or host.startswith("*.")
    return (0 if not wildcard else 1, -len(host))


def _precedence(route: RouteRecord, host: str, index: int, r: GatewayRule) -> tuple[Any, ...]:
    ns_name = f"{route.namespace}/{route.spec['source']['name']}"
    return (
        *specificity(host), 0 if r.exact else 1, -len(r.path), 0 if r.method else 1,
        -len(r.headers), -len(r.query), route.created, ns_name, index,
    )  # fmt: skip


Chain = tuple[str, int, str]  # (Gateway record id, port, chain name)
Entry = tuple[tuple[Any, ...], GatewayRule]  # (precedence, rule)

#: route id -> (the record, its rules' entries): a route's rules depend on its record alone,
#: and the data plane replaces a record object when it changes (never changes one), so a
#: build with one route changed compiles that one only (at 1,000 routes on one Gateway this
#: was most of a build's time)
_COMPILED: dict[str, tuple[RouteRecord, list[list[Entry]]]] = {}


def _compiled(route: RouteRecord) -> list[list[Entry]]:
    """Per rule of a route, its paths as (precedence, GatewayRule)."""
    held = _COMPILED.get(route.id)
    if held is not None and held[0] is route:
        return held[1]
    out: list[list[Entry]] = []
    index = 0
    for rule in route.spec["rules"]:
        entries = []
        for p in rule["paths"]:
            index += 1
            r = _rule(route, p)
            entries.append((_precedence(route, rule["host"], index, r), r))
        out.append(entries)
    _COMPILED[route.id] = (route, out)
    return out


@dataclass
class Listeners:
    """What one tenant's Gateways make of their HTTP and HTTPS listeners before any route is
    attached: built again whenever a Gateway, its address, the certificates or the minute
    they are checked at changes; the routes' attachments are built against it."""

    #: Gateway record id -> listener name -> (its chain, None: counted, not served; its
    #: hostname); every Gateway has an entry, its TLS, TCP and UDP listeners none
    chain_of: dict[str, dict[str, tuple[Chain | None, str | None]]] = field(default_factory=dict)
    #: chain -> (server name, secret id)
    chains: dict[Chain, tuple[str, str]] = field(default_factory=dict)
    #: an HTTP chain -> its listeners' hostnames ("": none): which listener owns a host
    hostnames: dict[Chain, set[str]] = field(default_factory=dict)
    #: the chains served (their Gateway has an address), in order
    served: list[Chain] = field(default_factory=list)
    #: Gateway record id -> the address it is served at
    addresses: dict[str, str] = field(default_factory=dict)
    #: Gateway record id -> every listener's name, with no route counted yet
    attached: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Gateway record id -> listener name -> why it is not served (its certificates)
    unserved: dict[str, dict[str, Problem]] = field(default_factory=dict)


def listeners_of(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    certificates: Mapping[str, CertificateData],
    now: dt.datetime,
) -> Listeners:
    """The HTTP and HTTPS listeners of `gateways` (LoadBalancer records with listeners, by
    id) at `placements` (a Gateway without one is not served yet), each HTTPS one served
    with the first of its `certificates` usable at `now`."""
    out = Listeners()
    for gid, gw in gateways.items():
        out.chain_of[gid] = {}
        out.attached[gid] = {lst["name"]: 0 for lst in gw.spec.get("listeners", [])}
        if gid in placements:
            out.addresses[gid] = placements[gid].address
        for lst in gw.spec.get("listeners", []):
            if lst["protocol"] not in HTTP:
                continue
            key: Chain | None = None
            if lst["protocol"] == "HTTP":
                key = (gid, lst["port"], "")
                out.chains[key] = ("", "")
                out.hostnames.setdefault(key, set()).add(lst.get("hostname", ""))
            else:
                secret = certificate_of(gw, lst, certificates, now, out.unserved)
                if secret:
                    key = (gid, lst["port"], lst["name"])
                    out.chains[key] = (lst.get("hostname", ""), secret)
            out.chain_of[gid][lst["name"]] = (key, lst.get("hostname"))
    out.served = sorted(k for k in out.chains if k[0] in out.addresses)
    return out


@dataclass(frozen=True)
class Attachment:
    """What one route adds to its tenant's HTTP listeners."""

    route: RouteRecord
    #: (Gateway record id, listener name) of each listener it counts on (any protocol)
    counted: tuple[tuple[str, str], ...]
    #: "<gateway record id>/<listener>" of each HTTP listener it is served on, sorted
    served: list[str]
    #: (chain, domain) -> its rules' entries there
    entries: dict[tuple[Chain, str], list[Entry]]
    #: hostname (a name or `*.x`) -> the Gateway addresses it is served at, sorted
    named: dict[str, list[str]]


def attach(route: RouteRecord, listeners: Listeners) -> Attachment:
    """The listeners `route` is attached to (the tenant side resolved its parents), and its
    rules on each host of their chains it serves: a route host meets a listener hostname
    (`intersect`), and the host is the listener's only if no more specific listener of the
    port owns it (listener isolation)."""
    counted = []
    served: set[str] = set()
    entries: dict[tuple[Chain, str], list[Entry]] = {}
    named: dict[str, set[str]] = {}
    for parent in route.spec.get("parents", []):
        gid = f"{route.tenant}/{parent['gateway']}"
        if not parent["accepted"] or gid not in listeners.chain_of:
            continue
        for name in parent["listeners"]:
            if name not in listeners.attached[gid]:
                continue
            counted.append((gid, name))
            if name not in listeners.chain_of[gid]:
                continue  # a TLS, TCP or UDP listener: gateway_streams
            key, hostname = listeners.chain_of[gid][name]
            if key is None or gid not in listeners.addresses:
                continue  # the Gateway has no address yet, or the listener no certificate
            served.add(f"{gid}/{name}")
            isolated = listeners.hostnames.get(key)
            for rule, compiled in zip(route.spec["rules"], _compiled(route), strict=True):
                domain = intersect(hostname, rule["host"])
                if (
                    not compiled
                    or domain is None
                    or (isolated is not None and owner(isolated, domain) != (hostname or ""))
                ):
                    continue  # no host, or another listener's (listener isolation)
                entries.setdefault((key, domain), []).extend(compiled)
                if domain != ANY_HOST:
                    named.setdefault(domain, set()).add(listeners.addresses[gid])
    return Attachment(
        route, tuple(counted), sorted(served), entries,
        {h: sorted(a) for h, a in sorted(named.items())},
    )  # fmt: skip


def forget_compiled(routes: Sequence[RouteRecord]) -> None:
    """Now and then, forget the compiled rules of routes no longer among `routes` (all of
    them: a build of one tenant's part must not make the others compile again)."""
    if len(_COMPILED) > 2 * len(routes) + 64:
        ids = {r.id for r in routes}
        for rid in [rid for rid in _COMPILED if rid not in ids]:
            del _COMPILED[rid]


#: the listener protocols served as HTTP (the others are gateway_streams')
HTTP = ("HTTP", "HTTPS")


def certificate_of(
    gw: LBRecord,
    listener: GatewayListener,
    certificates: Mapping[str, CertificateData],
    now: dt.datetime,
    unserved: dict[str, dict[str, Problem]],
) -> str:
    """The id of the certificate a listener that terminates TLS is served with, or "" after
    noting in `unserved` why none."""
    why = "no certificateRef resolves"
    for copy in listener.get("certificates", []):
        sid = secret_id(gw.tenant, copy)
        data = certificates.get(sid)
        if data is None:
            why = f"Secret {copy} not found (or not of type kubernetes.io/tls)"
            continue
        cert = usable(data, now)
        if isinstance(cert, Problem):
            why = cert.message
            continue
        return sid
    problem = Problem("InvalidCertificateRef", why)
    unserved.setdefault(gw.id, {})[listener["name"]] = problem
    return ""


def ordered(entries: Iterable[Entry]) -> tuple[GatewayRule, ...]:
    """Precedence order, without a rule an earlier one with the same match shadows."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for _, r in sorted(entries, key=lambda e: e[0]):
        key = (r.path, r.exact, r.headers, r.query, r.method)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return tuple(out)
