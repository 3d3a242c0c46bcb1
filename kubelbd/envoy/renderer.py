"""The Renderer: keeps Envoy's files and rewrites only those a change touches.

Every resource comes from the pure functions of `http`, `tls` and `l4`; the Renderer only
decides which files a Delta (or a TLS or Layer 4 change) rewrites, so a full `render` and a
long series of updates give byte-identical files (a property test holds them equal).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter

from ..ir.gateway import GatewayChain, GatewayHTTPListener, GatewayIR
from ..ir.http import IR, Cluster, Delta, VirtualHost
from ..ir.l4 import L4Cluster, L4Listener
from ..ir.tls import TLSPlan
from .common import Resource
from .gateway import (
    chain_name,
    chain_size,
    forget_hosts,
    gateway_listener,
    gateway_table,
    gateway_tls_listener,
)
from .http import (
    backend_cluster,
    front_table,
    route_config,
    shard_clusters,
    shard_listeners,
    virtual_host,
)
from .l4 import l4_cluster, l4_listener
from .scopes import (
    FALLBACK,
    Answers,
    KeyHashes,
    challenge_answers,
    fallback_scope,
    front_listener,
    host_scope,
    host_scope_name,
    scope_file,
)
from .settings import (
    DEFAULT_SHARD,
    FRONT,
    FRONT_TLS,
    Settings,
    gateway_table_name,
    rds_file,
    shard_names,
    shard_of,
)
from .tls import https_listener, https_table

_NAME = attrgetter("name")

#: file path (relative to the config directory) → the resources it holds
Files = dict[str, list[Resource]]


def render(ir: IR, settings: Settings) -> Files:
    """Every file Envoy reads, by path relative to the config directory, as resource lists."""
    renderer = Renderer(settings)
    return renderer.update(ir, Delta.of_all(ir))


class Renderer:
    """Keeps the rendered files and rewrites only those a Delta touches.

    Owns no decisions: every resource comes from the pure functions of `http`, `tls` and
    `l4`, so a full `render` and a long series of updates give byte-identical files.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: the listeners and clusters that depend on the settings alone, rendered once: the
        #: same objects in every file, so the publisher encodes them once too (rendered anew,
        #: the 17 shard clusters cost ~4 ms of protobuf's JSON mapping on every cluster file,
        #: most of what kubelbd added to a change to a new backend)
        self._static_listeners = [front_listener(settings), *shard_listeners(settings)]
        self._static_clusters = shard_clusters(settings)
        self._shard_hosts: dict[str, dict[str, VirtualHost]] = {
            n: {} for n in shard_names(settings)
        }
        #: each shard's hosts as rendered: host -> (its IR host, whether a catch-all existed,
        #: its virtual host). Only the current ones: a host changed or gone is dropped, where
        #: a cache of past versions grows with every change (and a host's rendering is the
        #: same object until it changes, so the publisher keeps its encoded bytes).
        self._rendered: dict[str, dict[str, tuple[VirtualHost, bool, Resource]]] = {
            n: {} for n in shard_names(settings)
        }
        self._catch_all = False
        self._clusters: dict[str, Resource] = {}
        #: each cluster's IR, as its resource in `_clusters` was rendered from
        self._cluster_ir: dict[str, Cluster] = {}
        self._unused_since: dict[str, float] = {}  # cluster -> when its last route went
        self._cds_written = -math.inf
        self._l4_listeners: list[Resource] = []
        self._gateway_listeners: list[Resource] = []
        #: Gateway chain name -> the route table file its routes are in (the largest chains)
        self._gateway_tables: dict[str, str] = {}
        self._gateway_table_content: dict[str, Resource] = {}
        #: each Gateway chain's route count, by chain name, while it is the same object
        self._chain_sizes: dict[str, tuple[GatewayChain, int]] = {}
        self._gateway_clusters: list[Resource] = []
        self._l4_clusters: list[Resource] = []
        self._domains: dict[str, list[str]] = {}
        self._redirect: tuple[str, ...] = ()
        #: host served over HTTPS -> the secret ids of the connections that may ask for it
        #: (the one it is served with, then the one before: TLSHost.formerly)
        self._tls_hosts: dict[str, tuple[str, ...]] = {}
        self._https_front: tuple[dict[str, tuple[tuple[str, ...], str]], list[str]] | None = None
        self._challenges: tuple[tuple[str, str], ...] = ()
        self._https: Resource | None = None
        self._started = False
        #: every host's IR (the shards hold some of them, the scopes the others)
        self._hosts: dict[str, VirtualHost] = {}
        #: scoped host -> (its IR, its ACME answers) as its scope was last made, envoy/scopes.py
        self._scopes: dict[str, tuple[VirtualHost, Answers]] = {}
        self._key_hashes = KeyHashes()
        #: host -> the ACME HTTP-01 answers (token, key authorization) its scope holds
        self._host_answers: dict[str, Answers] = {}

    def _front_tables(self, catch_all: bool) -> dict[str, list[Resource]]:
        """The plain HTTP front table, and the HTTPS one if its hosts changed: it lists only
        the hosts served with a certificate, each for its certificate's connections, so most
        route changes leave it (and Envoy's rebuild of it) alone, and a request over TLS never
        reaches a plain-HTTP host or a host of another certificate."""
        s = self.settings
        front = front_table(
            FRONT, self._domains, catch_all, self._redirect, self._challenges,
            s.https_redirect_port,
        )  # fmt: skip
        files = {scope_file(FALLBACK): [fallback_scope(front)]}
        if s.https_port:
            # From the hosts with a certificate (a host is in its shard's table, by its hash),
            # not from every host of the fleet on every change.
            served: dict[str, tuple[tuple[str, ...], str]] = {}
            for d, secrets in self._tls_hosts.items():
                shard = shard_of(d, s.shards)
                if d and d in self._shard_hosts[shard]:
                    served[d] = (secrets, shard)
            # A TLS wildcard's SNI chain also takes names under it that another route owns
            # without a certificate; Envoy's `*.` would send them to the wildcard's routes.
            suffixes = tuple(h[1:] for h in self._tls_hosts if h.startswith("*."))
            misdirected = (
                sorted(d for d in self._hosts if d.endswith(suffixes) and d not in self._tls_hosts)
                if suffixes
                else []
            )
            if (served, misdirected) != self._https_front:
                self._https_front = (served, misdirected)
                files[rds_file(FRONT_TLS)] = [https_table(served, misdirected)]
        return files

    def update_tls(
        self, plan: TLSPlan, challenges: dict[str, str], catch_all: bool
    ) -> dict[str, list[Resource]]:
        """Files TLS changed. The certificates themselves are not files: kubelbd's secret
        server (kubelbd.envoy.ads) serves `plan.secrets`."""
        files: dict[str, list[Resource]] = {}
        redirect = tuple(sorted(h.host for h in plan.hosts.values() if h.redirect))
        answers, host_answers = challenge_answers(challenges)
        tls_hosts: dict[str, tuple[str, ...]] = {
            h.host: tuple(filter(None, (h.secret, h.formerly))) for h in plan.hosts.values()
        }
        if (redirect, answers, tls_hosts) != (self._redirect, self._challenges, self._tls_hosts):
            moved = set(redirect).symmetric_difference(self._redirect)
            moved |= set(tls_hosts).symmetric_difference(self._tls_hosts)
            moved |= set(host_answers).symmetric_difference(self._host_answers)
            moved |= {h for h, a in host_answers.items() if self._host_answers.get(h) != a}
            self._redirect, self._challenges, self._tls_hosts = redirect, answers, tls_hosts
            self._host_answers = host_answers
            dirty: set[str] = set()
            self._place(moved, dirty, files)
            self._shard_tables(dirty, catch_all, files)
            files.update(self._front_tables(catch_all))
        https = https_listener(plan, self.settings)
        if https != self._https:
            self._https = https
            files["lds.pb"] = self._lds()
        return files

    def update_l4(
        self, listeners: list[L4Listener], clusters: list[L4Cluster]
    ) -> dict[str, list[Resource]]:
        """The listener and cluster files, if Layer 4 changed them."""
        new_listeners = [l4_listener(x) for x in sorted(listeners, key=lambda x: x.name)]
        new_clusters = [l4_cluster(c, self.settings) for c in clusters]
        files: dict[str, list[Resource]] = {}
        if new_listeners != self._l4_listeners:
            self._l4_listeners = new_listeners
            files["lds.pb"] = self._lds()
        if new_clusters != self._l4_clusters:
            self._l4_clusters = new_clusters
            files["cds.pb"] = self._cds()
        return files

    def update_gateways(self, gateways: GatewayIR) -> dict[str, list[Resource]]:
        """The listener and cluster files, if the Gateways' listeners (HTTP ones with their
        routes inline; TLS, TCP and UDP ones) or their Layer 4 clusters changed, and the
        route table files of the chains that have one, if their routes changed."""
        files: dict[str, list[Resource]] = {}
        tables = self._choose_tables(gateways.listeners)
        self._gateway_table_content = {
            t: c for t, c in self._gateway_table_content.items() if t in tables.values()
        }
        new = []
        for gl in sorted(gateways.listeners, key=_NAME):
            own = []  # (chain, table) of its chains whose routes are a file
            for c in gl.chains:
                table = tables.get(chain_name(gl, c))
                if table is None:
                    continue
                own.append((chain_name(gl, c), table))
                content = gateway_table(gl, c, self.settings, table)
                if content is not self._gateway_table_content.get(table):
                    # Before the listener that names it (the publisher's order).
                    self._gateway_table_content[table] = content
                    files[rds_file(table)] = [content]
            new.append(gateway_listener(gl, self.settings, tuple(own)))
        forget_hosts({chain_name(gl, c) for gl in gateways.listeners for c in gl.chains})
        new += [gateway_tls_listener(x) for x in sorted(gateways.tls_listeners, key=_NAME)]
        new += [l4_listener(x) for x in sorted(gateways.l4_listeners, key=_NAME)]
        clusters = [l4_cluster(c, self.settings) for c in gateways.l4_clusters]
        if clusters != self._gateway_clusters:
            self._gateway_clusters = clusters
            files["cds.pb"] = self._cds()
        if new != self._gateway_listeners:
            self._gateway_listeners = new
            files["lds.pb"] = self._lds()
        return files

    def _choose_tables(self, listeners: list[GatewayHTTPListener]) -> dict[str, str]:
        """Which Gateway chains' routes are route table files (chain name -> table name): a
        chain of at least `gateway_table_routes` routes keeps its file; the others of that
        size take the files left, largest first (ties by name), `gateway_tables` in all and
        `gateway_tables_per_tenant` per tenant. Kept, not moved to a larger newcomer: a chain
        that leaves its file has its listener rebuilt. A table is named after its chain
        alone (`gateway_table_name`), so a name never passes from one chain to another: a
        listener Envoy still has would read the other chain's routes from it."""
        s = self.settings
        counted: dict[str, tuple[GatewayChain, int]] = {}
        sizes: dict[str, tuple[int, str]] = {}
        for gl in listeners:
            for c in gl.chains:
                name = chain_name(gl, c)
                known = self._chain_sizes.get(name)
                size = known[1] if known is not None and known[0] is c else chain_size(c)
                counted[name] = (c, size)
                if size >= s.gateway_table_routes:
                    sizes[name] = (size, gl.tenant)
        self._chain_sizes = counted  # the current chains only, not their past versions
        kept = [name for name in self._gateway_tables if name in sizes]
        per_tenant = Counter(sizes[name][1] for name in kept)
        for name in sorted(set(sizes) - set(kept), key=lambda n: (-sizes[n][0], n)):
            tenant = sizes[name][1]
            if len(kept) < s.gateway_tables and per_tenant[tenant] < s.gateway_tables_per_tenant:
                kept.append(name)
                per_tenant[tenant] += 1
        self._gateway_tables = {name: gateway_table_name(name) for name in kept}
        return self._gateway_tables

    def cluster_names(self) -> list[str]:
        """Every cluster the cluster file has (one no route uses, in its grace period, too)."""
        return [*self._clusters, *(c["name"] for c in self._l4_clusters + self._gateway_clusters)]

    def next_removal(self) -> float | None:
        """When the next `update` would remove unused clusters (None: none waiting)."""
        if not self._unused_since:
            return None
        grace = self.settings.cluster_grace
        return max(min(self._unused_since.values()), self._cds_written) + grace

    def _virtual_host(self, shard: str, host: str, vh: VirtualHost, catch_all: bool) -> Resource:
        known = self._rendered[shard].get(host)
        if known is not None and known[1] == catch_all and (known[0] is vh or known[0] == vh):
            return known[2]
        rendered = virtual_host(vh, self.settings, catch_all)
        self._rendered[shard][host] = (vh, catch_all, rendered)
        return rendered

    def _place(self, hosts: Iterable[str], dirty: set[str], files: Files) -> bool:
        """Where each of these hosts is served (envoy/scopes.py): an exact host, not redirected
        to HTTPS, whose key hash no other scope holds, in a scope of its own; a wildcard, a
        host with a certificate (the HTTPS table hands it to its shard) and a host without a
        scope in its shard's table. Marks the shards whose table changed; True when a shard's
        host list did (the front tables list them)."""
        front = False
        todo = sorted(hosts, reverse=True)  # popped from the end: the first host first
        redirect = set(self._redirect) if todo else set()
        while todo:
            host = todo.pop()
            vh = self._hosts.get(host)
            scoped = False
            if vh is not None and not host.startswith("*.") and host not in redirect:
                scoped = self._key_hashes.claim(host)
            elif (freed := self._key_hashes.release(host)) is not None:
                todo.append(freed)
            shard = shard_of(host, self.settings.shards)
            table = self._shard_hosts[shard]
            if vh is not None and (not scoped or host in self._tls_hosts):
                front |= host not in table
                if table.get(host) is not vh:
                    table[host] = vh
                    dirty.add(shard)
            elif host in table:
                del table[host]
                self._rendered[shard].pop(host, None)
                dirty.add(shard)
                front = True
            self._scope(host, vh if scoped else None, files)
        return front

    def _scope(self, host: str, vh: VirtualHost | None, files: Files) -> None:
        """The host's scope as `vh` and its ACME challenges make it, if that changed."""
        had = self._scopes.get(host)
        name = scope_file(host_scope_name(host))
        if vh is None:
            if had is not None:
                del self._scopes[host]
                files[name] = []
            return
        answers = self._host_answers.get(host, ())
        if had is not None and (had[0] is vh or had[0] == vh) and had[1] == answers:
            return
        self._scopes[host] = (vh, answers)
        files[name] = [host_scope(host, virtual_host(vh, self.settings, False), answers)]

    def _shard_tables(self, dirty: set[str], catch_all: bool, files: Files) -> None:
        """The route tables of these shards. Only their hosts are sorted again (every host of
        the fleet, sorted on each change, was a millisecond a change at 3,000 routes)."""
        for shard in dirty - {DEFAULT_SHARD}:
            self._domains[shard] = sorted(self._shard_hosts[shard])
        for shard in sorted(dirty):
            hosts = self._shard_hosts[shard]
            order = self._domains[shard] if shard != DEFAULT_SHARD else sorted(hosts)
            vhosts = [self._virtual_host(shard, h, hosts[h], catch_all) for h in order]
            files[rds_file(shard)] = [route_config(shard, vhosts)]

    def _lds(self) -> list[Resource]:
        https = [self._https] if self._https is not None else []
        return self._static_listeners + https + self._l4_listeners + self._gateway_listeners

    def _cds(self) -> list[Resource]:
        return (
            self._static_clusters
            + [self._clusters[n] for n in sorted(self._clusters)]
            + self._l4_clusters
            + self._gateway_clusters
        )

    def update(self, ir: IR, delta: Delta, now: float | None = None) -> dict[str, list[Resource]]:
        """Files whose content may have changed (the publisher skips identical ones).

        A cluster whose last route went stays `cluster_grace` seconds (`now`, a monotonic
        clock; without it, unused clusters go at once). Clusters are written before route
        tables, so removing it in the same write would leave Envoy, until it reads the tables,
        with routes naming a cluster it no longer has (a backend switch answered 503).
        Envoy re-reads the whole cluster file on every change (about 55 ms at 1,000 routes on
        the development machine), so removals also wait for the next addition or ride
        together: at most one removal-only write per grace period.
        """
        s = self.settings
        files: dict[str, list[Resource]] = {}
        dirty: set[str] = set()
        front_dirty = not self._started
        if not self._started:
            dirty |= set(self._shard_hosts)
            files["lds.pb"] = self._lds()
        for host in delta.hosts:
            vh = ir.vhosts.get(host)
            if vh is None:
                self._hosts.pop(host, None)
            else:
                self._hosts[host] = vh
        front_dirty |= self._place(delta.hosts, dirty, files)
        catch_all = ir.catch_all is not None
        if delta.catch_all:
            if ir.catch_all is None:
                self._shard_hosts[DEFAULT_SHARD].pop("", None)
                self._rendered[DEFAULT_SHARD].pop("", None)
            else:
                self._shard_hosts[DEFAULT_SHARD][""] = ir.catch_all
            dirty.add(DEFAULT_SHARD)
        if catch_all != self._catch_all:
            # Wildcard hosts send deeper names to the catch-all: their tables change with it.
            front_dirty = True
            for shard, hosts in self._shard_hosts.items():
                if any(h.startswith("*.") for h in hosts):
                    dirty.add(shard)
            self._catch_all = catch_all
        self._shard_tables(dirty, catch_all, files)
        if front_dirty:
            files.update(self._front_tables(catch_all))
        cds_dirty = not self._started
        clock = -math.inf if now is None else now
        for name in delta.clusters:
            c = ir.clusters.get(name)
            if c is not None:
                self._unused_since.pop(name, None)
                if c != self._cluster_ir.get(name):
                    resource = backend_cluster(c, s)
                    cds_dirty |= self._clusters.get(name) != resource
                    self._clusters[name], self._cluster_ir[name] = resource, c
            elif name in self._clusters and name not in self._unused_since:
                self._unused_since[name] = clock
        grace = s.cluster_grace
        due = [n for n, t in self._unused_since.items() if now is None or now - t >= grace]
        if due and (cds_dirty or now is None or now - self._cds_written >= grace):
            for name in due:
                del self._unused_since[name], self._clusters[name], self._cluster_ir[name]
            cds_dirty = True
        if cds_dirty:
            files["cds.pb"] = self._cds()
            self._cds_written = clock
        self._started = True
        return files
