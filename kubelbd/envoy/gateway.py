"""Gateway API listeners (IR → Envoy, pure): one listener per Gateway and port, at the
Gateway's own address, its routes inline.

Inline, not a route table file per listener: every file subscription costs Envoy an inotify
instance (128 per user by default), and a fleet has more Gateways than that. The price is that
a route change rewrites that Gateway's listener, which Envoy replaces and drains; the shared
Ingress listener never does (envoy/http.py).

The request side is the front listener's: the peer's address is the client's, paths are
normalized, a port in the Host header is ignored.
"""

from __future__ import annotations

from functools import lru_cache

from ..ir.gateway import GatewayHost, GatewayHTTPListener, GatewayRule, Match
from .common import Resource, socket_address
from .http import RETRY_POLICY, hcm, http_filter_chain, named_route, route_action, route_config
from .settings import Settings
from .type_urls import LISTENER


def _string_match(value: str, kind: str) -> Resource:
    if kind == "RegularExpression":
        return {"safe_regex": {"regex": value}}
    return {"exact": value}


def _headers(headers: tuple[Match, ...], method: str) -> list[Resource]:
    out = [{"name": n, "string_match": _string_match(v, k)} for n, v, k in headers]
    if method:
        out.append({"name": ":method", "string_match": {"exact": method}})
    return out


def _match(rule: GatewayRule) -> Resource:
    out: Resource
    if rule.exact:
        out = {"path": rule.path}
    elif rule.path == "/":
        out = {"prefix": "/"}
    else:
        # Gateway API's PathPrefix matches whole segments (/a matches /a and /a/b, not /ab).
        out = {"path_separated_prefix": rule.path.rstrip("/")}
    headers = _headers(rule.headers, rule.method)
    if headers:
        out["headers"] = headers
    if rule.query:
        out["query_parameters"] = [
            {"name": n, "string_match": _string_match(v, k)} for n, v, k in rule.query
        ]
    return out


def _virtual_host(listener: str, host: GatewayHost, settings: Settings) -> Resource:
    routes = [
        named_route({"match": _match(r), **route_action(r.target, settings, 500)}, r.target)
        for r in host.rules
    ]
    last = host.rules[-1] if host.rules else None
    if last is None or _match(last) != {"prefix": "/"}:
        # Nothing matched: Gateway API answers 404.
        routes.append({"match": {"prefix": "/"}, **route_action(None, settings)})
    return {
        "name": f"{listener}/{host.domain}",
        "domains": [host.domain],
        "routes": routes,
        "retry_policy": RETRY_POLICY,
    }


@lru_cache(maxsize=4096)
def gateway_listener(gl: GatewayHTTPListener, settings: Settings) -> Resource:
    manager = hcm(gl.name, gl.name, settings, front=True)
    del manager["rds"]
    table = route_config(gl.name, [_virtual_host(gl.name, h, settings) for h in gl.hosts])
    del table["@type"]  # a message field here, not an Any: Envoy refuses the type URL
    # An inline table's clusters are checked when the listener is added (RDS tables' are
    # not), and Envoy may read the listener file before the cluster file written just before
    # it: it would reject the listener. Unchecked, a cluster not there yet answers 503 for
    # the moment it takes, as behind the shared listener.
    table["validate_clusters"] = False
    manager["route_config"] = table
    return {
        "@type": LISTENER,
        "name": gl.name,
        "address": socket_address(gl.address, gl.port),
        "filter_chains": [http_filter_chain(manager)],
    }
