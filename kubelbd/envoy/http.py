"""HTTP: the front and shard listeners, route tables, and backend clusters (IR → Envoy).

Pure functions with Envoy's own field names (v3 API, JSON form); memoized, and never
mutated after, so the publisher can reuse an unchanged resource's bytes.

How the configuration is split, and why: Envoy rebuilds a whole route table whenever its file
changes, so the time to apply one change follows the size of the table it lands in. One table
for everything grows linearly with the fleet. Instead:

- the public HTTP listener has a small *front* table: one virtual host per shard, listing that
  shard's domains, whose only route hands the request to the shard's internal listener;
- hosts are spread over a fixed number of internal listeners (`shards`) by a stable hash of
  the host; each has its own route table (RDS) in its own file, holding the real rules;
- the catch-all (host-less rules, defaultBackend) has an internal listener of its own.

A change to one route rewrites one small shard table, plus the front table only when the set
of hosts changes (a domain list is cheap for Envoy to rebuild). Listeners never change with
routes, so route changes never drain a listener. The shard count is fixed rather than per
tenant because every file subscription costs Envoy an inotify instance, and those are limited
(128 per user by default).

Clusters go to Envoy each on its own over the ADS stream (envoy/publisher.py, envoy/ads.py):
a backend Service that appears is one new cluster, a tenant's nodes that change are its
clusters; route-only changes never touch them. The renderer still hands them over as one list
(`cds.pb`), which the publisher splits.
"""

from __future__ import annotations

import re
from typing import Any

from ..ir.http import BackendTLS, Cluster, PathRule, Target, VirtualHost
from .common import Resource, config_source, health_check, last_of_each, socket_address
from .settings import DEFAULT_SHARD, Settings, rds_path, shard_names
from .type_urls import (
    CLUSTER,
    HCM,
    HTTP_PROTOCOL_OPTIONS,
    LISTENER,
    PREVIOUS_HOSTS,
    ROUTE_CONFIG,
    ROUTER,
    UPSTREAM_TLS,
)

ACME_PREFIX = "/.well-known/acme-challenge/"


#: What a client may ask of one HTTP/2 connection (Envoy's edge-proxy recommendations): by
#: default a connection may hold 2^31-1 streams, so one connection could hold as many requests
#: in flight as a slow backend lets it, while the downstream connection limit counts it once.
FRONT_HTTP2: Resource = {
    "max_concurrent_streams": 100,
    "initial_stream_window_size": 65536,
    "initial_connection_window_size": 1048576,
}


def hcm(
    stat_prefix: str, route_config: str, settings: Settings, front: bool, into_shards: bool = False
) -> Resource:
    """An HTTP connection manager reading its routes from one RDS file. The front listeners
    (HTTP, HTTPS) normalize what clients send; the internal shard listeners keep it.
    `into_shards`: its routes only hand requests to the shards, whose own routers keep the
    backend clusters' statistics; its router keeps none per request (Envoy's dynamic stats:
    per-cluster counters and a latency histogram of a hop inside Envoy, on every request)."""
    router: Resource = {"@type": ROUTER}
    if into_shards:
        router["dynamic_stats"] = False
    out: Resource = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "rds": {
            "route_config_name": route_config,
            "config_source": config_source(rds_path(settings, route_config)),
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": router}],
        "common_http_protocol_options": {"idle_timeout": "300s"},
        # WebSocket: the Upgrade goes on to the backend (every hop, the internal one too).
        "upgrade_configs": [{"upgrade_type": "websocket"}],
    }
    if front:
        out.update(
            {
                # The client is the connection's peer: what it says in X-Forwarded-For is kept
                # but never trusted, and X-Forwarded-Proto is overwritten.
                "use_remote_address": True,
                # Envoy's own append writes the machine's first non-loopback address instead
                # of a peer at 127.0.0.1 (or ::1); the front tables append the peer instead
                # (CLIENT_ADDRESS).
                "skip_xff_append": True,
                "normalize_path": True,
                "strip_any_host_port": True,
                "strip_trailing_host_dot": True,
                "request_timeout": "0s",
                "http2_protocol_options": FRONT_HTTP2,
            }
        )
    else:
        # The front listener already set X-Forwarded-For/-Proto; keep what it sent.
        out["use_remote_address"] = False
    return out


def http_filter_chain(manager: Resource) -> Resource:
    return {
        "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
        ]
    }


def listener(name: str, manager: Resource, address: Resource | None) -> Resource:
    out: Resource = {"@type": LISTENER, "name": name}
    if address is None:
        out["internal_listener"] = {}
    else:
        out["address"] = address
    out["filter_chains"] = [http_filter_chain(manager)]
    return out


def shard_listeners(settings: Settings) -> list[Resource]:
    """The shards' internal listeners (the front one is envoy/scopes.py's)."""
    return [
        listener(name, hcm(name.removeprefix("shard."), name, settings, False), None)
        for name in shard_names(settings)
    ]


#: No circuit breaking on the hop into a shard: every host of the shard shares its cluster, so
#: Envoy's defaults (1,024 connections, one per request in flight over HTTP/1.1) capped all
#: of them together, and requests beyond waited unanswered. Each backend's own cluster keeps
#: the defaults: that is where a limit protects something.
UNLIMITED = 2**32 - 1
NO_CIRCUIT_BREAKING: Resource = {
    "thresholds": [
        {
            "priority": "DEFAULT",
            "max_connections": UNLIMITED,
            "max_pending_requests": UNLIMITED,
            "max_requests": UNLIMITED,
            "max_retries": UNLIMITED,
        }
    ]
}


def shard_clusters(settings: Settings) -> list[Resource]:
    return [
        {
            "@type": CLUSTER,
            "name": name,
            "connect_timeout": "1s",
            "type": "STATIC",
            "circuit_breakers": NO_CIRCUIT_BREAKING,
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
                        {"endpoint": {"address": socket_address(a, c.port)}} for a in c.addresses
                    ]
                }
            ],
        },
        "health_checks": [health_check(settings)],
        "outlier_detection": {"consecutive_gateway_failure": 3, "interval": "5s"},
        "ignore_health_on_host_removal": True,
        **({"typed_extension_protocol_options": H2C_OPTIONS} if c.http2 else {}),
        **({"transport_socket": upstream_tls(c.tls, c.http2)} if c.tls else {}),
    }


def upstream_tls(tls: BackendTLS, http2: bool) -> Resource:
    """TLS to a backend as its BackendTLSPolicy asks: SNI, the policy's CA certificates,
    and the names its certificate must have (the hostname, unless the policy lists them)."""
    names = tls.subject_alt_names or (("Hostname", tls.hostname),)
    context: Resource = {
        "validation_context": {
            "trusted_ca": {"inline_string": tls.ca},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS" if kind == "Hostname" else "URI", "matcher": {"exact": value}}
                for kind, value in names
            ],
        }
    }
    if http2:
        context["alpn_protocols"] = ["h2"]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": UPSTREAM_TLS, "sni": tls.hostname, "common_tls_context": context},
    }


#: a cluster whose backend speaks HTTP/2 in clear text (Service appProtocol kubernetes.io/h2c)
H2C_OPTIONS: Resource = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_PROTOCOL_OPTIONS,
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def route_action(target: Target | None, settings: Settings, unresolved: int = 503) -> Resource:
    """Where a route sends requests; `unresolved`: the status when none of its backends can
    be reached (Gateway API says 500 for a backend that does not resolve)."""
    if target is None:
        return {"direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}}
    clusters = target.clusters
    if not clusters:
        return {
            "direct_response": {
                "status": unresolved,
                "body": {"inline_string": "backend unavailable\n"},
            }
        }
    if len(clusters) == 1:
        return {"route": {"cluster": clusters[0][0], "timeout": settings.route_timeout}}
    # Several backends share the requests by weight; one that cannot be resolved takes none.
    weighted = [{"name": c, "weight": w} for c, w in clusters]
    return {
        "route": {"weighted_clusters": {"clusters": weighted}, "timeout": settings.route_timeout}
    }


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


#: the match of most routes (a rule for "/", a host's fallback): one object for all of them,
#: as RETRY_POLICY is (a dict is 232 bytes, and the renderer keeps every host's rendering)
PREFIX_ALL: Resource = {"prefix": "/"}


def _match(rule: PathRule) -> Resource:
    if rule.exact:
        return {"path": rule.path}
    if rule.path == "/":
        return PREFIX_ALL
    return {"path_separated_prefix": rule.path}


def authority_guard(host: str) -> list[Resource]:
    """Ingress wildcards match exactly one label; Envoy's `*.` suffix matches any number."""
    suffix = re.escape(host[1:])
    return [
        {
            "name": ":authority",
            "string_match": {"safe_regex": {"regex": f"(?i)^[^.]+{suffix}(:[0-9]+)?$"}},
        }
    ]


def named_route(route: Resource, target: Target | None) -> Resource:
    return {"name": target.route, **route} if target is not None else route


def virtual_host(vh: VirtualHost, settings: Settings, catch_all_exists: bool) -> Resource:
    guard = authority_guard(vh.host) if vh.wildcard else None
    routes = []
    for rule in vh.rules:
        match = _match(rule)
        if guard:
            match = {**match, "headers": guard}
        routes.append(
            named_route({"match": match, **route_action(rule.target, settings)}, rule.target)
        )
    catches_all = bool(vh.rules) and vh.rules[-1].path == "/" and not vh.rules[-1].exact
    if not catches_all:  # otherwise nothing could ever reach the fallback
        fallback_match = {**PREFIX_ALL, "headers": guard} if guard else PREFIX_ALL
        routes.append(
            named_route(
                {"match": fallback_match, **route_action(vh.fallback, settings)}, vh.fallback
            )
        )
    if guard:
        # Deeper names (a.b.example.com) are not this host's: send them where unknown hosts go.
        beyond = Target(((DEFAULT_SHARD, 1),), "catch-all") if catch_all_exists else None
        routes.append({"match": {"prefix": "/"}, **route_action(beyond, settings)})
    return {
        "name": f"{vh.tenant}/{vh.host or '*'}",
        "domains": [vh.host or "*"],
        "routes": routes,
        "retry_policy": RETRY_POLICY,
    }


#: What the front tables add to every request they forward: the peer's address, appended to
#: X-Forwarded-For, so the backend's client address (the last entry) is always the real one.
CLIENT_ADDRESS: Resource = {
    "header": {"key": "x-forwarded-for", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
    "append_action": "APPEND_IF_EXISTS_OR_ADD",
}


def route_config(name: str, vhosts: list[Resource], **extra: Any) -> Resource:
    return {"@type": ROUTE_CONFIG, "name": name, "virtual_hosts": vhosts, **extra}


def challenge_routes(challenges: tuple[tuple[str, str], ...]) -> list[Resource]:
    """The routes answering ACME HTTP-01 challenges (token, key authorization)."""
    return [
        {
            "match": {"path": ACME_PREFIX + token},
            "direct_response": {"status": 200, "body": {"inline_string": key_authorization}},
        }
        for token, key_authorization in challenges
    ]


@last_of_each(lambda shard, *_, **__: shard)
def _shard_front(
    shard: str, domains: tuple[str, ...], challenges: tuple[tuple[str, str], ...]
) -> Resource:
    """A shard's virtual host in the front table, remembered: a change rebuilds the front
    table, and an unchanged shard's host, the same object, keeps its encoded bytes (the
    publisher's encoder remembers them by identity; at 3,000 hosts encoding every shard's
    host again was about 20 ms a change). Shared: never changed by a caller."""
    route = {"match": {"prefix": "/"}, "route": {"cluster": shard, "timeout": "0s"}}
    return {
        "name": shard,
        "domains": list(domains),
        "routes": [*challenge_routes(challenges), route],
    }


def front_table(
    name: str,
    shard_domains: dict[str, list[str]],
    catch_all: bool,
    redirect: tuple[str, ...] = (),
    challenges: tuple[tuple[str, str], ...] = (),
    redirect_port: int = 443,
) -> Resource:
    """Host → shard, for plain HTTP. Hosts served over HTTPS are redirected there instead, and
    ACME HTTP-01 challenges (token, key authorization) are answered first, for every host.
    (The HTTPS front table is `tls.https_table`.)"""
    answers = challenge_routes(challenges)
    moved = set(redirect)
    https: Resource = {"https_redirect": True}
    if redirect_port != 443:
        https["port_redirect"] = redirect_port
    vhosts = []
    for shard, domains in sorted(shard_domains.items()):
        # Every shard's hosts on every change: compared as sets (in C), not host by host
        # (a Python loop over every host of the fleet, 2 ms a change at 3,000 routes).
        here = moved.intersection(domains) if moved else set()
        kept = tuple(d for d in domains if d not in here) if here else tuple(domains)
        if kept:
            vhosts.append(_shard_front(shard, kept, challenges))
        for wildcard in sorted(d for d in here if d.startswith("*.")):
            # Only the one-label names its certificate covers are redirected; deeper names
            # go on as plain HTTP would (the shard's own guard sends them to the catch-all).
            redirect_one_label = {
                "match": {"prefix": "/", "headers": authority_guard(wildcard)},
                "redirect": https,
            }
            route = {"match": {"prefix": "/"}, "route": {"cluster": shard, "timeout": "0s"}}
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
    default: Resource = (
        {"route": {"cluster": DEFAULT_SHARD, "timeout": "0s"}}
        if catch_all
        else {"direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}}
    )
    vhosts.append(
        {"name": "*", "domains": ["*"], "routes": [*answers, {"match": {"prefix": "/"}, **default}]}
    )
    return route_config(name, vhosts, request_headers_to_add=[CLIENT_ADDRESS])
