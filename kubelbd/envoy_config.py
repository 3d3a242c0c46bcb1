"""Stage 3: the intermediate representation becomes Envoy resources, grouped by file.

Pure functions only; field names are Envoy's own (v3 API, JSON form).

How the configuration is split, and why: Envoy rebuilds a whole route table whenever its file
changes, so the time to apply one change follows the size of the table it lands in. One table
for everything grows linearly with the fleet. Instead:

- the public HTTP listener has a small *front* table: one virtual host per shard, listing that
  shard's domains, whose only route hands the request to the shard's internal listener;
- hosts are spread over a fixed number of internal listeners (`shards`) by a stable hash of
  the host; each has its own route table (RDS) in its own file, holding the real rules;
- the catch-all (host-less rules, defaultBackend) has an internal listener of its own.

A change to one Ingress rewrites one small shard table, plus the front table only when the set
of hosts changes (a domain list is cheap for Envoy to rebuild). Listeners never change with
routes, so route changes never drain a listener. The shard count is fixed rather than per
tenant because every file subscription costs Envoy an inotify instance, and those are limited
(128 per user by default).

Clusters cannot be split that way: Envoy reads all of them from one CDS file and pays about
0.1-0.2 ms per cluster on every CDS update, so CDS is rewritten only when a backend Service
appears or goes, or a tenant's nodes change; route-only changes never touch it.
"""

from __future__ import annotations

import base64
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .ir import IR, Cluster, Delta, PathRule, Target, VirtualHost
from .l4ir import L4Cluster, L4Listener
from .tls import CertificateData, TLSPlan

Resource = dict[str, Any]

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_CONFIG = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UDP_PROXY = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
UDP_ROUTE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"
UPSTREAM_PROXY_PROTOCOL = (
    "type.googleapis.com/"
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"
)
RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
SDS_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ACME_PREFIX = "/.well-known/acme-challenge/"
PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)

FRONT = "http"
FRONT_TLS = "https"
DEFAULT_SHARD = "shard.default"


@dataclass(frozen=True)
class Settings:
    """What the renderer needs from kubelbd's flags."""

    config_dir: str
    http_address: str = "0.0.0.0"
    http_port: int = 8080
    https_address: str = "0.0.0.0"
    https_port: int = 0  # 0: no HTTPS listener
    https_redirect_port: int = 443  # where HTTP→HTTPS redirects point
    shards: int = 16
    route_timeout: str = "60s"
    health_check_interval: str = "2s"
    #: How long a cluster no route uses stays in Envoy (see Renderer.update).
    cluster_grace: float = 1.0


def shard_of(host: str, shards: int) -> str:
    """Stable (not Python's salted hash): the same host lands in the same file across restarts."""
    if host == "":
        return DEFAULT_SHARD
    return f"shard.{zlib.crc32(host.encode()) % shards}"


def rds_path(settings: Settings, name: str) -> str:
    return f"{settings.config_dir}/rds/{name}.json"


def rds_file(name: str) -> str:
    return f"rds/{name}.json"


def _config_source(path: str) -> Resource:
    return {"resource_api_version": "V3", "path_config_source": {"path": path}}


def _hcm(stat_prefix: str, route_config: str, settings: Settings, front: bool) -> Resource:
    hcm: Resource = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "rds": {
            "route_config_name": route_config,
            "config_source": _config_source(rds_path(settings, route_config)),
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "common_http_protocol_options": {"idle_timeout": "300s"},
    }
    if front:
        hcm.update(
            {
                "use_remote_address": True,
                "normalize_path": True,
                "strip_any_host_port": True,
                "strip_trailing_host_dot": True,
                "request_timeout": "0s",
            }
        )
    else:
        # The front listener already set X-Forwarded-For/-Proto; keep what it sent.
        hcm["use_remote_address"] = False
    return hcm


def _listener(name: str, hcm: Resource, address: Resource | None) -> Resource:
    out: Resource = {"@type": LISTENER, "name": name}
    if address is None:
        out["internal_listener"] = {}
    else:
        out["address"] = address
    out["filter_chains"] = [
        {
            "filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
            ]
        }
    ]
    return out


def _socket(address: str, port: int, protocol: str = "TCP") -> Resource:
    out: Resource = {"address": address, "port_value": port}
    if protocol == "UDP":
        out["protocol"] = "UDP"
    return {"socket_address": out}


def shard_names(settings: Settings) -> list[str]:
    return [DEFAULT_SHARD] + [f"shard.{k}" for k in range(settings.shards)]


def listeners(settings: Settings) -> list[Resource]:
    front = _listener(
        FRONT,
        _hcm(FRONT, FRONT, settings, front=True),
        _socket(settings.http_address, settings.http_port),
    )
    out = [front]
    for name in shard_names(settings):
        out.append(_listener(name, _hcm(name.removeprefix("shard."), name, settings, False), None))
    return out


def shard_clusters(settings: Settings) -> list[Resource]:
    return [
        {
            "@type": CLUSTER,
            "name": name,
            "connect_timeout": "1s",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "envoy_internal_address": {"server_listener_name": name}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        for name in shard_names(settings)
    ]


def _health_check(settings: Settings) -> Resource:
    return {
        "timeout": "1s",
        "interval": settings.health_check_interval,
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        "tcp_health_check": {},
    }


@lru_cache(maxsize=16384)
def l4_cluster(c: L4Cluster, settings: Settings) -> Resource:
    """Tenant nodes at one nodePort. TCP gets TCP health checks; Envoy has no UDP health
    checker, so UDP relies on the tenant's Ready nodes (the Tenant record) alone."""
    out: Resource = {
        "@type": CLUSTER,
        "name": c.name,
        "connect_timeout": "2s",
        "type": "STATIC",
        # ClientIP affinity: the listener hashes the source address onto a ring of nodes.
        "lb_policy": "RING_HASH" if c.affinity else "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": c.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(a, c.port, c.protocol)}}
                        for a in c.addresses
                    ]
                }
            ],
        },
    }
    if c.protocol == "TCP":
        # Envoy counts only HTTP requests as "traffic": without this a TCP-only cluster is
        # checked at no_traffic_interval (60 s) and a dead node stays in rotation for a minute.
        out["health_checks"] = [
            {**_health_check(settings), "no_traffic_interval": settings.health_check_interval}
        ]
    if c.proxy_protocol:
        out["transport_socket"] = {
            "name": "envoy.transport_sockets.upstream_proxy_protocol",
            "typed_config": {
                "@type": UPSTREAM_PROXY_PROTOCOL,
                "config": {"version": "V2"},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": RAW_BUFFER},
                },
            },
        }
    return out


@lru_cache(maxsize=16384)
def l4_listener(listener: L4Listener) -> Resource:
    stat = listener.name.replace("/", "_")
    if listener.protocol == "UDP":
        proxy: Resource = {
            "@type": UDP_PROXY,
            "stat_prefix": stat,
            "matcher": {
                "on_no_match": {
                    "action": {
                        "name": "route",
                        "typed_config": {"@type": UDP_ROUTE, "cluster": listener.cluster},
                    }
                }
            },
        }
        if listener.affinity:
            proxy["hash_policies"] = [{"source_ip": True}]
        return {
            "@type": LISTENER,
            "name": listener.name,
            "address": _socket(listener.address, listener.port, "UDP"),
            "udp_listener_config": {},
            "listener_filters": [
                {"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": proxy}
            ],
        }
    # A node that died since the last health check refuses the connection: try another.
    tcp: Resource = {
        "@type": TCP_PROXY,
        "stat_prefix": stat,
        "cluster": listener.cluster,
        "max_connect_attempts": 3,
    }
    if listener.affinity:
        tcp["hash_policy"] = [{"source_ip": {}}]
    return {
        "@type": LISTENER,
        "name": listener.name,
        "address": _socket(listener.address, listener.port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]}
        ],
    }


@lru_cache(maxsize=65536)
def backend_cluster(c: Cluster, settings: Settings) -> Resource:
    return {
        "@type": CLUSTER,
        "name": c.name,
        "connect_timeout": "2s",
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": c.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(a, c.port)}} for a in c.addresses
                    ]
                }
            ],
        },
        "health_checks": [_health_check(settings)],
        "outlier_detection": {"consecutive_gateway_failure": 3, "interval": "5s"},
        "ignore_health_on_host_removal": True,
    }


def _action(target: Target | None, settings: Settings) -> Resource:
    if target is None:
        return {"direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}}
    if target.cluster is None:
        return {
            "direct_response": {"status": 503, "body": {"inline_string": "backend unavailable\n"}}
        }
    return {"route": {"cluster": target.cluster, "timeout": settings.route_timeout}}


# Retries only where no byte reached the backend: safe for any method. They let a request
# survive a node that died since the last health check. Each retry goes to another node, so
# there is nothing to back off from: Envoy's default back-off (25 ms base, up to 75 ms for the
# second retry) held requests for up to 100 ms while a new NodePort was still closed.
RETRY_POLICY: Resource = {
    "retry_on": "connect-failure,refused-stream",
    "num_retries": 2,
    "retry_back_off": {"base_interval": "0.002s", "max_interval": "0.010s"},
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": PREVIOUS_HOSTS},
        }
    ],
    "host_selection_retry_max_attempts": 3,
}


def _match(rule: PathRule) -> Resource:
    if rule.exact:
        return {"path": rule.path}
    if rule.path == "/":
        return {"prefix": "/"}
    return {"path_separated_prefix": rule.path}


def _authority_guard(host: str) -> list[Resource]:
    """Ingress wildcards match exactly one label; Envoy's `*.` suffix matches any number."""
    suffix = re.escape(host[1:])
    return [
        {
            "name": ":authority",
            "string_match": {"safe_regex": {"regex": f"(?i)^[^.]+{suffix}(:[0-9]+)?$"}},
        }
    ]


def _named(route: Resource, target: Target | None) -> Resource:
    return {"name": target.route, **route} if target is not None else route


@lru_cache(maxsize=65536)
def virtual_host(vh: VirtualHost, settings: Settings, catch_all_exists: bool) -> Resource:
    guard = _authority_guard(vh.host) if vh.wildcard else None
    routes = []
    for rule in vh.rules:
        match = _match(rule)
        if guard:
            match["headers"] = guard
        routes.append(_named({"match": match, **_action(rule.target, settings)}, rule.target))
    catches_all = bool(vh.rules) and vh.rules[-1].path == "/" and not vh.rules[-1].exact
    if not catches_all:  # otherwise nothing could ever reach the fallback
        fallback_match: Resource = {"prefix": "/"}
        if guard:
            fallback_match["headers"] = guard
        routes.append(
            _named({"match": fallback_match, **_action(vh.fallback, settings)}, vh.fallback)
        )
    if guard:
        # Deeper names (a.b.example.com) are not this host's: send them where unknown hosts go.
        beyond = Target(DEFAULT_SHARD, "catch-all") if catch_all_exists else None
        routes.append({"match": {"prefix": "/"}, **_action(beyond, settings)})
    return {
        "name": f"{vh.tenant}/{vh.host or '*'}",
        "domains": [vh.host or "*"],
        "routes": routes,
        "retry_policy": RETRY_POLICY,
    }


def route_config(name: str, vhosts: list[Resource]) -> Resource:
    return {"@type": ROUTE_CONFIG, "name": name, "virtual_hosts": vhosts}


def front_table(
    name: str,
    shard_domains: dict[str, list[str]],
    catch_all: bool,
    redirect: tuple[str, ...] = (),
    challenges: tuple[tuple[str, str], ...] = (),
    redirect_port: int = 443,
    misdirected: Sequence[str] = (),
) -> Resource:
    """Host → shard. On plain HTTP, hosts served over HTTPS are redirected there instead, and
    ACME HTTP-01 challenges (token, key authorization) are answered first, for every host.
    `misdirected` hosts get 421: on HTTPS, hosts this connection's certificate may not speak
    for. The HTTPS table has no catch-all: only hosts with a certificate are served there."""
    answers = [
        {
            "match": {"path": ACME_PREFIX + token},
            "direct_response": {"status": 200, "body": {"inline_string": key_authorization}},
        }
        for token, key_authorization in challenges
    ]
    moved = set(redirect)
    https: Resource = {"https_redirect": True}
    if redirect_port != 443:
        https["port_redirect"] = redirect_port
    vhosts = []
    for shard, domains in sorted(shard_domains.items()):
        route = {"match": {"prefix": "/"}, "route": {"cluster": shard, "timeout": "0s"}}
        kept = [d for d in domains if d not in moved]
        if kept:
            vhosts.append({"name": shard, "domains": kept, "routes": [*answers, route]})
        for wildcard in sorted(d for d in domains if d in moved and d.startswith("*.")):
            # Only the one-label names its certificate covers are redirected; deeper names
            # go on as plain HTTP would (the shard's own guard sends them to the catch-all).
            redirect_one_label = {
                "match": {"prefix": "/", "headers": _authority_guard(wildcard)},
                "redirect": https,
            }
            vhosts.append(
                {
                    "name": f"redirect-to-https:{wildcard}",
                    "domains": [wildcard],
                    "routes": [*answers, redirect_one_label, route],
                }
            )
    exact = sorted(h for h in redirect if not h.startswith("*."))
    if exact:
        vhosts.append(
            {
                "name": "redirect-to-https",
                "domains": exact,
                "routes": [*answers, {"match": {"prefix": "/"}, "redirect": https}],
            }
        )
    if misdirected:
        vhosts.append(
            {
                "name": "no-certificate",
                "domains": list(misdirected),
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {
                            "status": 421,
                            "body": {"inline_string": "no certificate for this host\n"},
                        },
                    }
                ],
            }
        )
    default: Resource = (
        {"route": {"cluster": DEFAULT_SHARD, "timeout": "0s"}}
        if catch_all
        else {"direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}}
    )
    vhosts.append(
        {"name": "*", "domains": ["*"], "routes": [*answers, {"match": {"prefix": "/"}, **default}]}
    )
    return route_config(name, vhosts)


def secret_file(secret_id: str) -> str:
    return "secrets/" + secret_id.replace("/", ".") + ".json"


def sds_secret(data: CertificateData) -> Resource:
    return {
        "@type": SDS_SECRET,
        "name": data.name,
        "tls_certificate": {
            "certificate_chain": {"inline_bytes": base64.b64encode(data.cert_pem).decode()},
            "private_key": {"inline_bytes": base64.b64encode(data.key_pem).decode()},
        },
    }


def https_listener(plan: TLSPlan, settings: Settings) -> Resource | None:
    """One filter chain per certificate, chosen by SNI; certificates come from SDS files, so
    rotating one never touches the listener or its connections. None without TLS hosts
    (Envoy refuses a listener with no filter chain)."""
    by_secret: dict[str, list[str]] = {}
    for h in plan.hosts.values():
        by_secret.setdefault(h.secret, []).append(h.host)
    if not by_secret or not settings.https_port:
        return None
    hcm = _hcm(FRONT_TLS, FRONT_TLS, settings, front=True)
    chains = []
    for secret, hosts in sorted(by_secret.items()):
        sds = {
            "name": secret,
            "sds_config": _config_source(f"{settings.config_dir}/{secret_file(secret)}"),
        }
        chains.append(
            {
                "name": secret,
                "filter_chain_match": {"server_names": sorted(hosts)},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": DOWNSTREAM_TLS,
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [sds],
                            "alpn_protocols": ["http/1.1"],
                        },
                    },
                },
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        )
    return {
        "@type": LISTENER,
        "name": FRONT_TLS,
        "address": _socket(settings.https_address, settings.https_port),
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR},
            }
        ],
        "filter_chains": chains,
    }


def shard_table(
    shard: str, vhosts: list[VirtualHost], settings: Settings, catch_all: bool
) -> Resource:
    return route_config(shard, [virtual_host(v, settings, catch_all) for v in vhosts])


def render(ir: IR, settings: Settings) -> dict[str, list[Resource]]:
    """Every file Envoy reads, by path relative to the config directory, as resource lists."""
    renderer = Renderer(settings)
    return renderer.update(
        ir, Delta(hosts=set(ir.vhosts), catch_all=True, clusters=set(ir.clusters))
    )


class Renderer:
    """Keeps the rendered files and rewrites only those a Delta touches.

    Owns no decisions: every resource comes from the pure functions above, so a full `render`
    and a long series of updates give byte-identical files.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._shard_hosts: dict[str, dict[str, VirtualHost]] = {
            n: {} for n in shard_names(settings)
        }
        self._catch_all = False
        self._clusters: dict[str, Resource] = {}
        self._unused_since: dict[str, float] = {}  # cluster -> when its last route went
        self._cds_written = -math.inf
        self._l4_listeners: list[Resource] = []
        self._l4_clusters: list[Resource] = []
        self._domains: dict[str, list[str]] = {}
        self._redirect: tuple[str, ...] = ()
        self._tls_hosts: frozenset[str] = frozenset()
        self._https_front: tuple[dict[str, list[str]], list[str]] | None = None
        self._challenges: tuple[tuple[str, str], ...] = ()
        self._https: Resource | None = None
        self._secrets: dict[str, str] = {}  # secret id -> digest rendered
        self._started = False

    def _front_tables(self, catch_all: bool) -> dict[str, list[Resource]]:
        """The plain HTTP front table, and the HTTPS one if its hosts changed: it lists only
        the hosts served with a certificate, so most route changes leave it (and Envoy's
        rebuild of it) alone, and a request over TLS never reaches a plain-HTTP host."""
        s = self.settings
        files = {
            rds_file(FRONT): [
                front_table(FRONT, self._domains, catch_all, self._redirect, self._challenges,
                            s.https_redirect_port)
            ]
        }  # fmt: skip
        if s.https_port:
            https = {
                shard: [d for d in domains if d in self._tls_hosts]
                for shard, domains in self._domains.items()
            }
            # A TLS wildcard's SNI chain also takes names under it that another route owns
            # without a certificate; Envoy's `*.` would send them to the wildcard's routes.
            suffixes = tuple(h[1:] for h in self._tls_hosts if h.startswith("*."))
            misdirected = sorted(
                d
                for domains in self._domains.values()
                for d in domains
                if d not in self._tls_hosts and suffixes and d.endswith(suffixes)
            )
            if (https, misdirected) != self._https_front:
                self._https_front = (https, misdirected)
                files[rds_file(FRONT_TLS)] = [
                    front_table(FRONT_TLS, https, catch_all=False, misdirected=misdirected)
                ]
        return files

    def update_tls(
        self, plan: TLSPlan, challenges: dict[str, str], catch_all: bool
    ) -> tuple[dict[str, list[Resource]], set[str]]:
        """Files TLS changed, and secret files no longer referenced (to delete after LDS)."""
        files: dict[str, list[Resource]] = {}
        redirect = tuple(sorted(h.host for h in plan.hosts.values() if h.redirect))
        answers = tuple(sorted(challenges.items()))
        tls_hosts = frozenset(plan.hosts)
        if (redirect, answers, tls_hosts) != (self._redirect, self._challenges, self._tls_hosts):
            self._redirect, self._challenges, self._tls_hosts = redirect, answers, tls_hosts
            files.update(self._front_tables(catch_all))
        for sid, data in plan.secrets.items():
            if self._secrets.get(sid) != data.digest:
                files[secret_file(sid)] = [sds_secret(data)]
                self._secrets[sid] = data.digest
        stale = {secret_file(sid) for sid in self._secrets if sid not in plan.secrets}
        self._secrets = {k: v for k, v in self._secrets.items() if k in plan.secrets}
        https = https_listener(plan, self.settings)
        if https != self._https:
            self._https = https
            files["lds.json"] = self._lds()
        return files, stale

    def update_l4(
        self, listeners: list[L4Listener], clusters: list[L4Cluster]
    ) -> dict[str, list[Resource]]:
        """The listener and cluster files, if Layer 4 changed them."""
        new_listeners = [l4_listener(x) for x in sorted(listeners, key=lambda x: x.name)]
        new_clusters = [l4_cluster(c, self.settings) for c in clusters]
        files: dict[str, list[Resource]] = {}
        if new_listeners != self._l4_listeners:
            self._l4_listeners = new_listeners
            files["lds.json"] = self._lds()
        if new_clusters != self._l4_clusters:
            self._l4_clusters = new_clusters
            files["cds.json"] = self._cds()
        return files

    def next_removal(self) -> float | None:
        """When the next `update` would remove unused clusters (None: none waiting)."""
        if not self._unused_since:
            return None
        grace = self.settings.cluster_grace
        return max(min(self._unused_since.values()), self._cds_written) + grace

    def _lds(self) -> list[Resource]:
        https = [self._https] if self._https is not None else []
        return listeners(self.settings) + https + self._l4_listeners

    def _cds(self) -> list[Resource]:
        return (
            shard_clusters(self.settings)
            + [self._clusters[n] for n in sorted(self._clusters)]
            + self._l4_clusters
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
            files["lds.json"] = self._lds()
        for host in delta.hosts:
            shard = shard_of(host, s.shards)
            vh = ir.vhosts.get(host)
            hosts = self._shard_hosts[shard]
            if (host in hosts) != (vh is not None):
                front_dirty = True
            if vh is None:
                hosts.pop(host, None)
            else:
                hosts[host] = vh
            dirty.add(shard)
        catch_all = ir.catch_all is not None
        if delta.catch_all:
            if ir.catch_all is None:
                self._shard_hosts[DEFAULT_SHARD].pop("", None)
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
        for shard in sorted(dirty):
            hosts = self._shard_hosts[shard]
            files[rds_file(shard)] = [
                shard_table(shard, [hosts[h] for h in sorted(hosts)], s, catch_all)
            ]
        if front_dirty:
            domains = {
                shard: sorted(hosts)
                for shard, hosts in self._shard_hosts.items()
                if shard != DEFAULT_SHARD
            }
            self._domains = domains
            files.update(self._front_tables(catch_all))
        cds_dirty = not self._started
        clock = -math.inf if now is None else now
        for name in delta.clusters:
            c = ir.clusters.get(name)
            if c is not None:
                self._unused_since.pop(name, None)
                resource = backend_cluster(c, s)
                cds_dirty |= self._clusters.get(name) != resource
                self._clusters[name] = resource
            elif name in self._clusters and name not in self._unused_since:
                self._unused_since[name] = clock
        grace = s.cluster_grace
        due = [n for n, t in self._unused_since.items() if now is None or now - t >= grace]
        if due and (cds_dirty or now is None or now - self._cds_written >= grace):
            for name in due:
                del self._unused_since[name], self._clusters[name]
            cds_dirty = True
        if cds_dirty:
            files["cds.json"] = self._cds()
            self._cds_written = clock
        self._started = True
        return files
