"""Stage 2: every tenant's Route records become one fleet-wide intermediate representation.

This is where the rules that span records live:
- host ownership across tenants: the oldest claim wins; a younger claim by another tenant on the
  same host, or on an exact host inside another tenant's older wildcard, is a conflict;
- Ingress precedence inside one virtual host: longest path first, Exact before Prefix on a tie,
  host-specific rules before host-less ones, older Ingress first;
- defaultBackend and host-less rules: they form the catch-all (one owner, like any host) and
  also serve the owning tenant's own hosts, never another tenant's.

`Model` is incremental: applying a change costs what the change touches, not what the fleet
holds, and it reports exactly which hosts, clusters and routes changed so the Envoy stage can
rewrite only the affected files. `build()` is the same model applied to everything at once;
a property test holds the two equal. Outputs are frozen and hashable for memoization.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..records.claims import CATCH_ALL, claimed_hosts  # CATCH_ALL: shown as "*" to users
from ..records.types import AgeKey, Backend, RouteRecord, RouteSpec, TenantRecord, UpstreamTLS


@dataclass(frozen=True, slots=True)
class Target:
    """Where matching requests go: (cluster, weight) per backend, cluster None for a backend
    that cannot be resolved; `route` names the record the rule came from."""

    backends: tuple[tuple[str | None, int], ...]
    route: str

    @property
    def clusters(self) -> tuple[tuple[str, int], ...]:
        """The backends requests can be sent to: resolved, with a weight above zero."""
        return tuple((c, w) for c, w in self.backends if c is not None and w > 0)


@dataclass(frozen=True, slots=True)
class PathRule:
    path: str
    exact: bool
    target: Target


@dataclass(frozen=True, slots=True)
class VirtualHost:
    tenant: str
    host: str
    rules: tuple[PathRule, ...]
    fallback: Target | None  # None answers 404

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")


@dataclass(frozen=True)
class BackendTLS:
    """TLS to a backend, as a BackendTLSPolicy asks: SNI `hostname`, a certificate signed by
    `ca` (PEM) for `hostname`, or for one of `subject_alt_names` ((type, value)) if any."""

    hostname: str
    ca: str
    subject_alt_names: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, tls: UpstreamTLS) -> BackendTLS:
        sans = tuple((s["type"], s["value"]) for s in tls.get("subjectAltNames") or [])
        return cls(tls["hostname"], tls["caCertificates"], sans)


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    tenant: str
    addresses: tuple[str, ...]
    port: int
    http2: bool = False  # HTTP/2 (h2c, or negotiated over TLS)
    tls: BackendTLS | None = None


@dataclass
class IR:
    vhosts: dict[str, VirtualHost] = field(default_factory=dict)
    catch_all: VirtualHost | None = None
    clusters: dict[str, Cluster] = field(default_factory=dict)
    #: route id -> hosts it serves ("*" for the catch-all), sorted
    served: dict[str, list[str]] = field(default_factory=dict)
    #: route id -> [(host, holder tenant)] it lost to an older claim, sorted
    conflicts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


@dataclass
class Delta:
    """What one `Model.apply` changed; empty sets mean nothing to rewrite."""

    hosts: set[str] = field(default_factory=set)  # vhosts added, changed or removed
    catch_all: bool = False
    clusters: set[str] = field(default_factory=set)  # added, changed or removed
    routes: set[str] = field(default_factory=set)  # route ids whose served/conflicts changed

    def __bool__(self) -> bool:
        return bool(self.hosts or self.catch_all or self.clusters or self.routes)

    @classmethod
    def of_all(cls, ir: IR) -> Delta:
        """Everything `ir` holds, as changed: what rendering it from nothing writes."""
        return cls(hosts=set(ir.vhosts), catch_all=True, clusters=set(ir.clusters))


def display_host(host: str) -> str:
    return host or "*"


def cluster_name(tenant: str, namespace: str, backend: Backend) -> str:
    """One cluster per nodePort and protocol (an HTTP/2 one is another cluster, and so is
    one spoken to in TLS, per policy: its key is a digest of what the policy asks)."""
    name = f"{tenant}/{namespace}/{backend['service']}/{backend.get('nodePort')}"
    if backend.get("protocol") == "h2c":
        name = f"{name}/h2c"
    return f"{name}/tls-{backend['tls']}" if "tls" in backend else name


def claims(route: RouteRecord) -> set[str]:
    """Hosts a route asks for on the shared listener; a defaultBackend or a host-less rule
    claims the catch-all. A Gateway API route (with parents) asks for none there: it is
    served on its Gateways' own listeners (ir.gateway); its clusters are kept here all the
    same, so a Service behind an Ingress and an HTTPRoute is one cluster."""
    if "parents" in route.spec:
        return set()
    return claimed_hosts(route.spec)


def wildcard_parent(host: str) -> str | None:
    """The Ingress wildcard that would cover an exact host: a.b.c -> *.b.c."""
    if not host or host.startswith("*."):
        return None
    _, dot, rest = host.partition(".")
    return f"*.{rest}" if dot and "." in rest else None


def backend_cluster(route: RouteRecord, backend: Backend) -> str | None:
    """The cluster a backend is sent to (None: it cannot be: unresolved, or its TLS is not
    in the record)."""
    if "nodePort" not in backend:
        return None
    if "tls" in backend and backend["tls"] not in (route.spec.get("backendTLS") or {}):
        return None
    return cluster_name(route.tenant, route.namespace, backend)


def target(route: RouteRecord, backends: list[Backend]) -> Target:
    """Where requests of a rule of `route` go: its backends' clusters, weighted."""
    clusters = tuple((backend_cluster(route, b), b.get("weight", 1)) for b in backends)
    return Target(clusters, route.id)


Entry = tuple[tuple[Any, ...], PathRule]


def _entries(route: RouteRecord, host: str) -> list[Entry]:
    """This route's rules for one host (CATCH_ALL: its host-less rules), with precedence keys."""
    out = []
    specificity = 1 if host == CATCH_ALL else 0
    for rule in route.spec["rules"]:
        if rule["host"] != host:
            continue
        for p in rule["paths"]:
            exact = p["pathType"] == "Exact"
            key = (-len(p["path"]), 0 if exact else 1, specificity, route.age_key)
            out.append((key, PathRule(p["path"], exact, target(route, p["backends"]))))
    return out


def _ordered(entries: list[Entry]) -> tuple[PathRule, ...]:
    """Precedence order, without rules that an earlier identical match shadows entirely."""
    seen: set[tuple[str, bool]] = set()
    out = []
    for _, rule in sorted(entries, key=lambda e: e[0]):
        if (rule.path, rule.exact) in seen:
            continue
        seen.add((rule.path, rule.exact))
        out.append(rule)
    return tuple(out)


def _backends(spec: RouteSpec) -> list[Backend]:
    out = [b for rule in spec["rules"] for p in rule["paths"] for b in p["backends"]]
    if "defaultBackend" in spec:
        out.append(spec["defaultBackend"])
    return out


#: how a cluster dials its backend: (nodePort, in HTTP/2, TLS)
Dial = tuple[int, bool, BackendTLS | None]


def _cluster_ports(route: RouteRecord) -> dict[str, Dial]:
    """The clusters a route sends to and how each dials (a backend whose TLS the record
    does not say is not dialled at all: never in plain text instead)."""
    upstream = route.spec.get("backendTLS") or {}
    out: dict[str, Dial] = {}
    for b in _backends(route.spec):
        if backend_cluster(route, b) is None:
            continue
        tls = BackendTLS.of(upstream[b["tls"]]) if "tls" in b else None
        out[cluster_name(route.tenant, route.namespace, b)] = (
            b["nodePort"], b.get("protocol") == "h2c", tls,
        )  # fmt: skip
    return out


def _prepared(route_id: str) -> str:
    """What holds a prepared cluster (`Model.prepare`): no route id has a `#`."""
    return f"{route_id}#prepared"


class Model:
    """The fleet's routing state, kept up to date change by change."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteRecord] = {}
        self.tenants: dict[str, TenantRecord] = {}
        self.ir = IR()
        self._claims: dict[str, dict[str, AgeKey]] = {}  # host -> route id -> age
        self._children: dict[str, set[str]] = {}  # wildcard -> exact hosts claimed under it
        self._owner: dict[str, tuple[str, AgeKey]] = {}  # host -> (tenant, age of its claim)
        self._cluster_refs: dict[str, set[str]] = {}  # cluster -> route ids
        #: cluster -> (tenant, how it dials)
        self._cluster_ports: dict[str, tuple[str, Dial]] = {}
        self._hostless_cache: dict[str, tuple[list[Entry], Target | None]] = {}

    # ---- changes -----------------------------------------------------------------------------

    def apply(
        self,
        upserts: Iterable[RouteRecord] = (),
        deletes: Iterable[str] = (),
        tenants: Iterable[TenantRecord] | None = None,
    ) -> Delta:
        """Upsert routes, delete route ids, and (if given) replace the tenant set."""
        delta = Delta()
        clusters_before = dict(self.ir.clusters)
        tenant_clusters: set[str] = set()  # clusters whose tenant's addresses changed
        touched: set[str] = set()  # hosts whose claims changed
        hostless_tenants: set[str] = set()  # tenants whose host-less rules/default changed
        gone: set[str] = set()
        updated: set[str] = set()
        for route_id in deletes:
            old = self.routes.pop(route_id, None)
            if old is not None:
                gone.add(route_id)
                self._unindex(old, touched, hostless_tenants, delta)
        for route in upserts:
            old = self.routes.get(route.id)
            if old is not None:
                self._unindex(old, touched, hostless_tenants, delta)
            self.routes[route.id] = route
            self._index(route, touched, hostless_tenants, delta)
            updated.add(route.id)
        if tenants is not None:
            tenant_clusters = self._set_tenants(list(tenants))
            delta.clusters |= tenant_clusters
        self._hostless_cache = {}
        self._reevaluate(touched, hostless_tenants, gone | updated, delta)
        # An upsert unindexes then indexes: only clusters whose existence changed count.
        delta.clusters = {
            c for c in delta.clusters if (c in self.ir.clusters) != (c in clusters_before)
        } | {c for c in delta.clusters if c in tenant_clusters}
        return delta

    def clusters_of(self, route: RouteRecord) -> set[str]:
        """The clusters a route sends to."""
        return set(_cluster_ports(route))

    def new_clusters(self, route: RouteRecord) -> set[str]:
        """The clusters a route sends to that the model has none of (nor Envoy, then)."""
        return {c for c in _cluster_ports(route) if c not in self.ir.clusters}

    def prepare(self, route: RouteRecord) -> Delta:
        """Keep the clusters of a version of `route` not applied yet (its change is held
        until its new backends answer: make before break), without its hosts: Envoy gets the
        clusters first, and the routes still send where they did. `unprepare` lets them go."""
        delta = Delta()
        self._use_clusters(route, _prepared(route.id), delta)
        return delta

    def unprepare(self, route: RouteRecord) -> Delta:
        """The clusters `prepare` kept for this version of the route, let go (those a route
        sends to stay)."""
        delta = Delta()
        self._let_go_clusters(route, _prepared(route.id), delta)
        return delta

    def confirm(self, route: RouteRecord) -> None:
        """The record of a route rendered before it was written, as written: same content
        (so every index stands), now with the generation its status reports."""
        if route.id in self.routes:
            self.routes[route.id] = route

    def _index(self, r: RouteRecord, touched: set[str], hostless: set[str], delta: Delta) -> None:
        for host in claims(r):
            self._claims.setdefault(host, {})[r.id] = r.claim_key(host)
            parent = wildcard_parent(host)
            if parent:
                self._children.setdefault(parent, set()).add(host)
            touched.add(host)
        if CATCH_ALL in claims(r):
            hostless.add(r.tenant)
        self._use_clusters(r, r.id, delta)

    def _unindex(self, r: RouteRecord, touched: set[str], hostless: set[str], delta: Delta) -> None:
        for host in claims(r):
            by_route = self._claims.get(host, {})
            by_route.pop(r.id, None)
            if not by_route:
                self._claims.pop(host, None)
                parent = wildcard_parent(host)
                if parent and parent in self._children:
                    self._children[parent].discard(host)
            touched.add(host)
        if CATCH_ALL in claims(r):
            hostless.add(r.tenant)
        self._let_go_clusters(r, r.id, delta)

    def _use_clusters(self, r: RouteRecord, ref: str, delta: Delta) -> None:
        """The clusters `r` sends to, held by `ref` (a route id, or a prepared version's)."""
        for name, dial in _cluster_ports(r).items():
            refs = self._cluster_refs.setdefault(name, set())
            if not refs:
                delta.clusters.add(name)
            refs.add(ref)
            self._cluster_ports[name] = (r.tenant, dial)
            self._put_cluster(name)

    def _let_go_clusters(self, r: RouteRecord, ref: str, delta: Delta) -> None:
        """`ref` no longer holds the clusters `r` sends to; those nothing holds go."""
        for name in _cluster_ports(r):
            refs = self._cluster_refs.get(name, set())
            refs.discard(ref)
            if not refs:
                self._cluster_refs.pop(name, None)
                self._cluster_ports.pop(name, None)
                self.ir.clusters.pop(name, None)
                delta.clusters.add(name)

    def _put_cluster(self, name: str) -> None:
        tenant, (port, http2, tls) = self._cluster_ports[name]
        rec = self.tenants.get(tenant)
        addresses = rec.addresses if rec else ()
        self.ir.clusters[name] = Cluster(name, tenant, addresses, port, http2, tls)

    def _set_tenants(self, tenants: list[TenantRecord]) -> set[str]:
        """Replace the tenant set; return the clusters whose endpoints changed."""
        new = {t.name: t for t in tenants}
        changed = {
            name for name in set(self.tenants) | set(new) if self.tenants.get(name) != new.get(name)
        }
        self.tenants = new
        clusters = {c for c, (tenant, _) in self._cluster_ports.items() if tenant in changed}
        for cluster in clusters:
            self._put_cluster(cluster)
        return clusters

    # ---- ownership and virtual hosts -----------------------------------------------------------

    def _compute_owner(self, host: str) -> tuple[str, AgeKey] | None:
        parent = wildcard_parent(host)
        holder = self._owner.get(parent) if parent else None
        for route_id, age in sorted(self._claims.get(host, {}).items(), key=lambda kv: kv[1]):
            tenant = self.routes[route_id].tenant
            if holder is None or holder[0] == tenant or holder[1] > age:
                return (tenant, age)
        return None

    def _reevaluate(
        self, touched: set[str], hostless: set[str], changed: set[str], delta: Delta
    ) -> None:
        # Wildcards first: exact hosts under a wildcard depend on who holds it.
        pending = sorted(touched, key=lambda h: (not h.startswith("*."), h))
        evaluated: set[str] = set()
        while pending:
            host = pending.pop(0)
            if host in evaluated:
                continue
            evaluated.add(host)
            new = self._compute_owner(host)
            if new != self._owner.get(host):
                if new is None:
                    self._owner.pop(host, None)
                else:
                    self._owner[host] = new
                if host.startswith("*."):
                    pending.extend(sorted(self._children.get(host, ())))
        rebuild = set(evaluated)
        for tenant in hostless:
            rebuild |= {h for h, (t, _) in self._owner.items() if t == tenant}
            rebuild.add(CATCH_ALL)
        for host in rebuild:
            self._rebuild_host(host, delta)
        affected_routes = {rid for h in rebuild for rid in self._claims.get(h, {})}
        affected_routes |= changed
        for rid in affected_routes:
            self._update_route_status(rid, delta)

    def _tenant_hostless(self, tenant: str) -> tuple[list[Entry], Target | None]:
        """A tenant's host-less rules and its default backend (memoized for one apply)."""
        cached = self._hostless_cache.get(tenant)
        if cached is not None:
            return cached
        routes = sorted(
            (self.routes[rid] for rid in self._claims.get(CATCH_ALL, {})
             if self.routes[rid].tenant == tenant),
            key=lambda r: r.age_key,
        )  # fmt: skip
        entries = [e for r in routes for e in _entries(r, CATCH_ALL)]
        default = next(
            (target(r, [r.spec["defaultBackend"]]) for r in routes if "defaultBackend" in r.spec),
            None,
        )
        self._hostless_cache[tenant] = (entries, default)
        return entries, default

    def _rebuild_host(self, host: str, delta: Delta) -> None:
        owner = self._owner.get(host)
        if host == CATCH_ALL:
            new: VirtualHost | None = None
            if owner is not None:
                entries, default = self._tenant_hostless(owner[0])
                new = VirtualHost(owner[0], CATCH_ALL, _ordered(entries), default)
            if new != self.ir.catch_all:
                self.ir.catch_all = new
                delta.catch_all = True
            return
        vh: VirtualHost | None = None
        if owner is not None:
            tenant = owner[0]
            contributors = sorted(
                (self.routes[rid] for rid in self._claims.get(host, {})
                 if self.routes[rid].tenant == tenant),
                key=lambda r: r.age_key,
            )  # fmt: skip
            hostless_entries, tenant_default = self._tenant_hostless(tenant)
            entries = [e for r in contributors for e in _entries(r, host)] + hostless_entries
            fallback = next(
                (target(r, [r.spec["defaultBackend"]]) for r in contributors
                 if "defaultBackend" in r.spec),
                tenant_default,
            )  # fmt: skip
            vh = VirtualHost(tenant, host, _ordered(entries), fallback)
        if vh != self.ir.vhosts.get(host):
            if vh is None:
                self.ir.vhosts.pop(host, None)
            else:
                self.ir.vhosts[host] = vh
            delta.hosts.add(host)

    def _update_route_status(self, rid: str, delta: Delta) -> None:
        route = self.routes.get(rid)
        if route is None:
            had = self.ir.served.pop(rid, None) is not None
            if self.ir.conflicts.pop(rid, []) or had:
                delta.routes.add(rid)
            return
        served, lost = [], []
        for host in sorted(claims(route)):
            owner = self._owner.get(host)
            if owner is not None and owner[0] == route.tenant:
                if host == CATCH_ALL or host in self.ir.vhosts:
                    served.append(display_host(host))
                continue
            parent = wildcard_parent(host)
            holder = owner or (self._owner.get(parent) if parent else None)
            lost.append((display_host(host), holder[0] if holder else "?"))
        if self.ir.served.get(rid) != served or self.ir.conflicts.get(rid, []) != lost:
            self.ir.served[rid] = served
            if lost:
                self.ir.conflicts[rid] = lost
            else:
                self.ir.conflicts.pop(rid, None)
            delta.routes.add(rid)


def build(routes: Iterable[RouteRecord], tenants: Iterable[TenantRecord]) -> IR:
    """The IR of a whole fleet at once (what the model converges to, whatever the order)."""
    model = Model()
    model.apply(upserts=routes, tenants=tenants)
    return model.ir
