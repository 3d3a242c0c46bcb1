"""Layer 4: a TCP or UDP listener per LoadBalancer port, tenant nodes as its cluster."""

from __future__ import annotations

from functools import lru_cache

from ..ir.l4 import L4Cluster, L4Listener
from .common import Resource, health_check, socket_address
from .settings import Settings
from .type_urls import (
    CLUSTER,
    LISTENER,
    RAW_BUFFER,
    TCP_PROXY,
    UDP_PROXY,
    UDP_ROUTE,
    UPSTREAM_PROXY_PROTOCOL,
)


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
                        {
                            "endpoint": {"address": socket_address(a, port, c.protocol)},
                            **({"load_balancing_weight": weight} if c.weighted else {}),
                        }
                        for port, weight in (c.weighted or ((c.port, 1),))
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
            {**health_check(settings), "no_traffic_interval": settings.health_check_interval}
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
            "address": socket_address(listener.address, listener.port, "UDP"),
            "udp_listener_config": {},
            "listener_filters": [
                {"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": proxy}
            ],
        }
    tcp = tcp_proxy(stat, listener.weights or ((listener.cluster, 1),))
    if listener.affinity:
        tcp["typed_config"]["hash_policy"] = [{"source_ip": {}}]
    return {
        "@type": LISTENER,
        "name": listener.name,
        "address": socket_address(listener.address, listener.port),
        "filter_chains": [{"filters": [tcp]}],
    }


def tcp_proxy(stat: str, weights: tuple[tuple[str, int], ...]) -> Resource:
    """The network filter proxying a connection to one cluster, or shared by weight."""
    # A node that died since the last health check refuses the connection: try another.
    tcp: Resource = {"@type": TCP_PROXY, "stat_prefix": stat, "max_connect_attempts": 3}
    if len(weights) > 1:
        tcp["weighted_clusters"] = {"clusters": [{"name": c, "weight": w} for c, w in weights]}
    else:
        tcp["cluster"] = weights[0][0]
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}
