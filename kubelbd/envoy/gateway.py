"""Gateway API listeners (IR → Envoy, pure): one listener per Gateway and port, at the
Gateway's own address: one filter chain for its HTTP listeners, or one per HTTPS listener,
chosen by SNI, its certificate over SDS as for the shared HTTPS listener (envoy/tls.py). A TLS
port is a TCP proxy per SNI name, TLS passed through or terminated (`gateway_tls_listener`);
TCP and UDP ports are envoy/l4.py's.

A chain's routes are inline, or a route table file of its own (`gateway_table`; the renderer
says which). Every file subscription costs Envoy an inotify instance (128 per user by
default) and a fleet has more Gateways than that, so most are inline; the price is that a
route change rewrites that Gateway's listener, which Envoy rebuilds, at a cost that grows with
its routes (about 190 ms at 500). The largest chains' routes are files, which Envoy applies
without touching the listener, as it does the shared Ingress tables (envoy/http.py).

The request side is the front listener's: the peer's address is the client's, paths are
normalized; a port in the Host header is ignored to choose a virtual host, and kept for the
backend.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..ir.gateway import (
    ANY_HOST,
    GatewayChain,
    GatewayHost,
    GatewayHTTPListener,
    GatewayRule,
    GatewayTLSListener,
    HeaderOp,
    Match,
    PathChange,
    Redirect,
    TLSChain,
)
from .common import Resource, last_of_each, socket_address
from .http import RETRY_POLICY, hcm, http_filter_chain, named_route, route_action, route_config
from .l4 import tcp_proxy
from .settings import Settings
from .tls import downstream_tls, misdirected_route, tls_inspector
from .type_urls import LISTENER, NETWORK_RBAC


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


#: Gateway API's redirect status codes, as Envoy names them
REDIRECT_CODES = {
    301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}  # fmt: skip
DEFAULT_PORTS = {"http": 80, "https": 443}


def _path_rewrite(matched: str, change: PathChange) -> Resource:
    """Envoy's regex_rewrite for Gateway API's path modifier (Envoy applies it to the path
    alone and keeps the query string). A prefix is replaced as whole segments, as it
    matched (`path_separated_prefix`); replaced by `/`, the slashes after it go with it."""
    if change.full:
        return {"pattern": {"regex": "^/.*$"}, "substitution": change.value}
    prefix = re.escape(matched.rstrip("/"))
    to = change.value.rstrip("/")
    if not to:
        return {"pattern": {"regex": f"^{prefix}/*"}, "substitution": "/"}
    return {"pattern": {"regex": f"^{prefix}"}, "substitution": to}


def _redirect(r: Redirect, port: int, tls: bool, matched: str) -> Resource:
    """Envoy's redirect for Gateway API's: without a port, the scheme's well-known one when
    the scheme changes, else the listener's; a port well-known for the scheme is left out of
    the Location (the Host Envoy sees has its port stripped, so it is always set here)."""
    out: Resource = {"response_code": REDIRECT_CODES[r.status]}
    if r.path is not None and r.path.full:
        out["path_redirect"] = r.path.value
    elif r.path is not None:
        out["regex_rewrite"] = _path_rewrite(matched, r.path)
    scheme = r.scheme or ("https" if tls else "http")
    if r.scheme:
        out["scheme_redirect"] = r.scheme
    if r.hostname:
        out["host_redirect"] = r.hostname
    to = r.port or (DEFAULT_PORTS[scheme] if r.scheme else port)
    if to != DEFAULT_PORTS[scheme]:
        out["port_redirect"] = to
    return out


def _header_changes(ops: tuple[HeaderOp, ...], which: str) -> Resource:
    """Envoy's `<which>_headers_to_add` and `_to_remove` for Gateway API's set, add, remove."""
    out: Resource = {}
    add = [
        {
            # Envoy reads %...% in a value as a formatter command (one it does not know
            # rejects the listener file; %ENVIRONMENT(...)% would read its environment):
            # the tenant's value is literal.
            "header": {"key": name, "value": value.replace("%", "%%")},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
            if op == "set"
            else "APPEND_IF_EXISTS_OR_ADD",
        }
        for op, name, value in ops
        if op != "remove"
    ]
    if add:
        out[f"{which}_headers_to_add"] = add
    removed = [name for op, name, _ in ops if op == "remove"]
    if removed:
        out[f"{which}_headers_to_remove"] = removed
    return out


def _seconds(ms: int) -> str:
    """Milliseconds as a protobuf Duration in JSON (never in exponent notation)."""
    return f"{ms // 1000}.{ms % 1000:03d}s"


def _route(r: GatewayRule, port: int, tls: bool, settings: Settings) -> Resource:
    if r.redirect is not None:
        action: Resource = {"redirect": _redirect(r.redirect, port, tls, r.path)}
    else:
        action = route_action(r.target, settings, 500)
    if "route" in action and r.host_rewrite:
        action["route"]["host_rewrite_literal"] = r.host_rewrite
    if "route" in action and r.path_rewrite is not None:
        action["route"]["regex_rewrite"] = _path_rewrite(r.path, r.path_rewrite)
    if "route" in action and r.request_timeout is not None:
        action["route"]["timeout"] = _seconds(r.request_timeout)  # 0s: none
    if "route" in action and r.backend_timeout:  # 0: none, as without one
        # Each try is a request to a backend (the retries are the virtual host's).
        retry = {**RETRY_POLICY, "per_try_timeout": _seconds(r.backend_timeout)}
        action["route"]["retry_policy"] = retry
    route = {
        "match": _match(r),
        **action,
        **_header_changes(r.request_headers, "request"),
        **_header_changes(r.response_headers, "response"),
    }
    return named_route(route, r.target)


def _virtual_host(
    listener: str, host: GatewayHost, port: int, tls: bool, settings: Settings
) -> Resource:
    routes = [_route(r, port, tls, settings) for r in host.rules]
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


def chain_name(gl: GatewayHTTPListener, chain: GatewayChain) -> str:
    """A filter chain's name (its HTTP connection manager's and inline table's)."""
    return f"{gl.name}/{chain.name}" if chain.name else gl.name


def chain_size(chain: GatewayChain) -> int:
    """How many routes a chain's table has: what choosing it a file of its own is by (the
    renderer remembers it while the chain is the same object: the Gateway model keeps an
    unchanged chain's, and a chain of 500 hosts took a millisecond to count)."""
    return sum(len(h.rules) for h in chain.hosts)


@last_of_each(lambda gl, *_, **__: gl.name)
def gateway_listener(
    gl: GatewayHTTPListener, settings: Settings, tables: tuple[tuple[str, str], ...] = ()
) -> Resource:
    """A Gateway's listener on one port; `tables`: (chain name, route table name) of the
    chains whose routes are a route table file of their own (`gateway_table`), not inline."""
    files = dict(tables)
    out: Resource = {
        "@type": LISTENER,
        "name": gl.name,
        "address": socket_address(gl.address, gl.port),
        "filter_chains": [_chain(gl, c, settings, files.get(chain_name(gl, c))) for c in gl.chains],
    }
    if any(c.secret for c in gl.chains):
        out["listener_filters"] = [tls_inspector()]
    return out


def _misdirected_hosts(chain: GatewayChain, others: list[str], own: set[str]) -> list[Resource]:
    """An HTTPS chain's answers for requests it must not serve: 421 Misdirected Request for
    a host another HTTPS listener of the port serves (a more specific one, for a wildcard's
    chain), and, on a chain with a hostname, for any host it does not serve (the client is
    to open a connection for that name). A host of its own keeps its routes."""
    out = []
    taken = sorted(h for h in others if h not in own)
    if taken:
        out.append(
            {
                "name": f"{chain.name}/421",
                "domains": taken,
                "routes": [misdirected_route(NOT_THIS_CONNECTION)],
            }
        )
    if chain.server_name and ANY_HOST not in own:
        out.append(
            {
                "name": f"{chain.name}/421-any",
                "domains": [ANY_HOST],
                "routes": [misdirected_route(NOT_THIS_CONNECTION)],
            }
        )
    return out


NOT_THIS_CONNECTION = "this host is not served on this connection\n"


#: a table is large (every route of a chain of at least 64) and each change makes a new one:
#: only the current ones need remembering (the renderer tells an unchanged one by identity)
@lru_cache(maxsize=64)
def gateway_table(
    gl: GatewayHTTPListener, chain: GatewayChain, settings: Settings, table: str
) -> Resource:
    """A chain's routes as route table `table`, for a file of its own."""
    return _table(gl, chain, settings, table)


#: chain -> domain -> (host, port, TLS, settings, its virtual host): each chain's current
#: hosts only, so that an unchanged host keeps its object (a table's file then encodes only
#: its new hosts: protos.Remembered) while a host changed or gone is not kept (a cache of
#: every version of every host would grow with each edit a tenant makes)
_HOSTS: dict[str, dict[str, tuple[GatewayHost, int, bool, Settings, Resource]]] = {}


def _virtual_hosts(
    listener: str, chain: GatewayChain, port: int, tls: bool, settings: Settings
) -> list[Resource]:
    known = _HOSTS.get(listener, {})
    kept = {}
    for h in chain.hosts:
        held = known.get(h.domain)
        if held is None or held[:4] != (h, port, tls, settings):
            held = (h, port, tls, settings, _virtual_host(listener, h, port, tls, settings))
        kept[h.domain] = held
    _HOSTS[listener] = kept
    return [held[4] for held in kept.values()]


def forget_hosts(chains: set[str]) -> None:
    """Keep the hosts of these chains (`chain_name`) only: the others are gone."""
    for gone in set(_HOSTS) - chains:
        del _HOSTS[gone]


def _table(gl: GatewayHTTPListener, chain: GatewayChain, settings: Settings, name: str) -> Resource:
    tls = bool(chain.secret)
    vhosts = _virtual_hosts(chain_name(gl, chain), chain, gl.port, tls, settings)
    if tls:
        others = [c.server_name for c in gl.chains if c is not chain and c.server_name]
        vhosts += _misdirected_hosts(chain, others, {h.domain for h in chain.hosts})
    table = route_config(name, vhosts)
    # Not checked against the clusters Envoy has: an inline table's would be checked when
    # the listener is added, and Envoy may read the listener file before the cluster file
    # written just before it: it would reject the listener. Unchecked, a cluster not there
    # yet answers 503 for the moment it takes, as behind the shared listener.
    table["validate_clusters"] = False
    table["ignore_port_in_host_matching"] = True
    return table


def _chain(
    gl: GatewayHTTPListener, chain: GatewayChain, settings: Settings, table: str | None
) -> Resource:
    name = chain_name(gl, chain)
    # A route table file is named by kubelbd alone (stat names, which the versions Envoy
    # applied are read from, must not carry the tenant's names: `.rds.` in one would misread
    # them); an inline one by its chain.
    manager = hcm(table, table, settings, front=True) if table else hcm(name, name, settings, True)
    # The backend gets the Host the client sent, port and all (Gateway API's conformance
    # checks it); virtual hosts match it without its port.
    del manager["strip_any_host_port"]
    if not table:
        del manager["rds"]
        inline = _table(gl, chain, settings, name)
        del inline["@type"]  # a message field here, not an Any: Envoy refuses the type URL
        manager["route_config"] = inline
    out: Resource = http_filter_chain(manager)
    if not chain.secret:
        return out
    out["name"] = name
    if chain.server_name:
        out["filter_chain_match"] = {"server_names": [chain.server_name]}
    # HTTP/2 too: a client may then reuse a connection for another name the certificate
    # covers, which is what the 421 answers above are for.
    out["transport_socket"] = downstream_tls(chain.secret, ("h2", "http/1.1"))
    return out


@last_of_each(lambda gl, *_, **__: gl.name)
def gateway_tls_listener(gl: GatewayTLSListener) -> Resource:
    """A Gateway's TLS port: a filter chain per SNI name (the one for any name has no match,
    so it takes every other and none); a connection whose name has no chain is closed."""
    return {
        "@type": LISTENER,
        "name": gl.name,
        "address": socket_address(gl.address, gl.port),
        "listener_filters": [tls_inspector()],
        "filter_chains": [_tls_chain(gl, c) for c in gl.chains],
    }


def _tls_chain(gl: GatewayTLSListener, chain: TLSChain) -> Resource:
    name = f"{gl.name}/{chain.server_name}"
    out: Resource = {"name": name}
    if chain.server_name != ANY_HOST:
        out["filter_chain_match"] = {"server_names": [chain.server_name]}
    stat = name.replace("/", "_")
    if not chain.weights:
        # No backend to proxy to: refused before a handshake, whatever the mode (a chain
        # ends with a terminal filter: the proxy, to a cluster that is never there).
        out["filters"] = [_refuse(stat), tcp_proxy(stat, ((REFUSED, 1),))]
        return out
    out["filters"] = [tcp_proxy(stat, chain.weights)]
    if chain.secret:
        out["transport_socket"] = downstream_tls(chain.secret, ())
    return out


#: no cluster has this name (kubelbd's are `gw/...`, `<tenant>/...` and the static ones)
REFUSED = "refused"


def _refuse(stat: str) -> Resource:
    """A network filter that closes every connection (at its first bytes)."""
    deny = {"permissions": [{"any": True}], "principals": [{"any": True}]}
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": NETWORK_RBAC,
            "stat_prefix": stat,
            "rules": {"action": "DENY", "policies": {"no-backend": deny}},
        },
    }
