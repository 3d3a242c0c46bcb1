"""The plain HTTP listener's scopes: a route table per host, chosen by the Host header in the
listener's own connection manager (Envoy's scoped routes, sent over ADS: envoy/ads.py).

Why: the front table hands each request to its shard's internal listener, a second
connection manager per request that cost a third of Envoy's CPU a request
(docs/benchmarks.md, "The data plane's cost"), and any change of the host list rebuilds the
front table whole. A scope is found by an exact key, so it serves the hosts that have one:

- every exact host (not a wildcard, not the catch-all) whose HTTP requests are not redirected
  to HTTPS gets a scope holding its own routes, the same as its shard's table has;
- one more scope, `fallback`, holds the front table as before (into the shards, which still
  hold every host): wildcard hosts, the catch-all, a Host header in capitals, a path none of a
  host's routes takes, ACME HTTP-01 challenges (answered in the front table for every host)
  all go there, so they behave exactly as before.

The key is the `x-kubelbd-scope` header, which the listener sets from the Host header before
routing (whatever the client sent in it is replaced) and removes before a request leaves
Envoy. A request whose key matches no scope, or whose host's scope has no route for it, has no
route: the `kubelbd.fallback` Lua filter then looks for the host's scope again by its name as
the front table would match it (small letters, no port, no final dot) and, when that finds
none of a scope's routes either, sets the key to the fallback scope's; the route is found
again after each. The exact scopes' routes keep that filter out of their requests' chains
(Envoy's per-route `FilterConfig`, `disabled`): a request an exact scope routes runs no Lua
at all, where a filter turned off by its own per-route setting is still made and asked on
every request (about a tenth of Envoy's CPU a request, docs/benchmarks.md, "Scoped routes:
the hop gone"). Their routes carry the metadata `scoped`, by which
the filter tells a scope's route found after its name was normalized.

Envoy compares keys by a 64-bit hash (xxHash64) and refuses a set of scopes in which two keys
hash alike: a tenant could choose a host whose key collides with another's. A host whose key
hash another scope holds gets none (`KeyHashes`): it is served through the fallback, as a
wildcard host is.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping

import xxhash

from .common import Resource, socket_address
from .http import CLIENT_ADDRESS, challenge_routes, hcm, listener, route_config
from .settings import FRONT, Settings
from .type_urls import EARLY_HEADER_MUTATION, FILTER_CONFIG, LUA, SCOPED_ROUTE

log = logging.getLogger(__name__)

SCOPE_HEADER = "x-kubelbd-scope"
#: the fallback scope's key: a Host header cannot hold it as a host name
FALLBACK_KEY = "~fallback"
FALLBACK = "fallback"
LUA_FILTER = "kubelbd.fallback"

#: The route metadata (under the filter's name) of every route of an exact host's scope.
SCOPED = "scoped"

#: What the filter does when no route was found: the key as the front table would match a
#: host (small letters, no port, no final dot) and the route looked for again; then, unless
#: that found a scope's route, the fallback scope's key, and the route looked for again.
FALLBACK_LUA = f"""function envoy_on_request(handle)
  local headers = handle:headers()
  local key = headers:get("{SCOPE_HEADER}")
  if key ~= nil then
    local host = string.lower(key)
    host = string.gsub(host, ":%d+$", "")
    host = string.gsub(host, "%.$", "")
    if host ~= key then
      headers:replace("{SCOPE_HEADER}", host)
      handle:clearRouteCache()
      if handle:metadata():get("{SCOPED}") then
        return
      end
    end
  end
  headers:replace("{SCOPE_HEADER}", "{FALLBACK_KEY}")
  handle:clearRouteCache()
end
"""


def scope_file(name: str) -> str:
    """The publisher's name of a scope (envoy/publisher.py serves these over ADS, not files)."""
    return f"scopes/{name}"


def scope_name(file: str) -> str:
    """The name a scope has in Envoy (and over ADS) from its publisher's name: Envoy removes
    a scope by the name in the ScopedRouteConfiguration, so the delta response must use it."""
    return file.removeprefix("scopes/")


def host_scope_name(host: str) -> str:
    return f"host/{host}"


def is_scope(name: str) -> bool:
    return name.startswith("scopes/")


def front_listener(settings: Settings) -> Resource:
    """The plain HTTP listener: its connection manager picks a host's scope itself."""
    manager = hcm(FRONT, FRONT, settings, front=True)
    del manager["rds"]
    manager["scoped_routes"] = scoped_routes()
    manager["early_header_mutation_extensions"] = [SCOPE_KEY]
    manager["http_filters"] = [FALLBACK_FILTER, *manager["http_filters"]]
    return listener(FRONT, manager, socket_address(settings.http_address, settings.http_port))


def scoped_routes() -> Resource:
    """The connection manager's `scoped_routes`: its scopes come over ADS."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "name": "hosts",
        "scope_key_builder": {
            "fragments": [
                # The host without a port (the header holds the Host header as sent).
                {
                    "header_value_extractor": {
                        "name": SCOPE_HEADER,
                        "element_separator": ":",
                        "index": 0,
                    }
                }
            ]
        },
        "rds_config_source": ads,
        "scoped_rds": {"scoped_rds_config_source": ads},
    }


#: Before routing: the key, from the Host header, replacing any value the client sent.
SCOPE_KEY: Resource = {
    "name": "envoy.http.early_header_mutation.header_mutation",
    "typed_config": {
        "@type": EARLY_HEADER_MUTATION,
        "mutations": [
            {"remove": SCOPE_HEADER},
            {
                "append": {
                    "header": {"key": SCOPE_HEADER, "value": "%REQ(:AUTHORITY)%"},
                    "append_action": "ADD_IF_ABSENT",
                }
            },
        ],
    },
}

FALLBACK_FILTER: Resource = {
    "name": LUA_FILTER,
    "typed_config": {"@type": LUA, "default_source_code": {"inline_string": FALLBACK_LUA}},
}
#: On an exact scope's virtual host: the Lua filter is not made for its requests at all (a
#: filter's own per-route `disabled` would still make it, and ask it, on every request).
_LUA_OFF: Resource = {LUA_FILTER: {"@type": FILTER_CONFIG, "disabled": True}}
_SCOPED_ROUTE: Resource = {"filter_metadata": {LUA_FILTER: {SCOPED: True}}}

#: ACME HTTP-01 answers: (token, key authorization) each
Answers = tuple[tuple[str, str], ...]

#: In the challenges' ConfigMap (certs/acme.py), beside each token's answer: the name it
#: validates, under this prefix and the token (a token is base64url: it has no dot).
CHALLENGE_HOST = "host."


def challenge_answers(challenges: Mapping[str, str]) -> tuple[Answers, dict[str, Answers]]:
    """Every answer (the front table serves them for any host), and each name's own (its
    scope serves those)."""
    answers = {k: v for k, v in challenges.items() if not k.startswith(CHALLENGE_HOST)}
    by_host: dict[str, list[tuple[str, str]]] = {}
    for key, host in challenges.items():
        token = key.removeprefix(CHALLENGE_HOST)
        if key.startswith(CHALLENGE_HOST) and token in answers:
            by_host.setdefault(host, []).append((token, answers[token]))
    return tuple(sorted(answers.items())), {h: tuple(sorted(a)) for h, a in by_host.items()}


def host_scope(host: str, vhost: Resource, answers: Answers = ()) -> Resource:
    """The scope of an exact host: its virtual host (`vhost`, as a shard's table would hold
    it), behind the answers to the ACME HTTP-01 challenges of its name, as the front table
    answers them ahead of every host's routes."""
    routes = [*challenge_routes(answers), *vhost["routes"]] if answers else vhost["routes"]
    routes = [{**route, "metadata": _SCOPED_ROUTE} for route in routes]
    table = route_config(
        host_scope_name(host),
        [{**vhost, "routes": routes, "typed_per_filter_config": _LUA_OFF}],
        request_headers_to_add=[CLIENT_ADDRESS],
        request_headers_to_remove=[SCOPE_HEADER],
    )
    return _scope(host_scope_name(host), host, table)


def fallback_scope(front: Resource) -> Resource:
    """The front table (http.front_table) as the fallback scope."""
    table = {**front, "request_headers_to_remove": [SCOPE_HEADER]}
    return _scope(FALLBACK, FALLBACK_KEY, table)


def _scope(name: str, key: str, table: Resource) -> Resource:
    # Unchecked clusters, as a Gateway's inline routes (envoy/gateway.py): a scope reaches
    # Envoy over ADS, which it may read before the cluster file written just before; checked,
    # the whole response would be refused. A cluster not there yet answers 503 meanwhile.
    table = {**table, "validate_clusters": False}
    return {
        "@type": SCOPED_ROUTE,
        "name": name,
        "key": {"fragments": [{"string_key": key}]},
        "route_configuration": table,
    }


def key_hash(key: str) -> int:
    """Envoy's hash of a one-fragment scope key (envoy/router/scopes.h: the key's hash folds
    each fragment's xxHash64 into the one before, from 0)."""
    fragment = xxhash.xxh64_intdigest(key.encode())
    return xxhash.xxh64_intdigest(struct.pack("<QQ", 0, fragment))


class KeyHashes:
    """Which host holds each key hash; a host whose hash is held (or is the fallback's) gets
    no scope. A host waiting for a hash gets it when its holder lets it go."""

    def __init__(self) -> None:
        self._holder: dict[int, str] = {key_hash(FALLBACK_KEY): ""}
        self._waiting: dict[int, set[str]] = {}

    def claim(self, host: str) -> bool:
        h = key_hash(host)
        holder = self._holder.setdefault(h, host)
        if holder == host:
            waiting = self._waiting.get(h)
            if waiting is not None:
                waiting.discard(host)
            return True
        if host not in self._waiting.setdefault(h, set()):
            self._waiting[h].add(host)
            log.warning(
                "host %s: its scope key hashes as %s's does; served through the fallback scope",
                host[:253],
                holder[:253] or "the fallback",
            )
        return False

    def release(self, host: str) -> str | None:
        """Let `host` go (it has no scope any more); the host that may claim its hash now."""
        h = key_hash(host)
        waiting = self._waiting.get(h)
        if waiting is not None:
            waiting.discard(host)
        if self._holder.get(h) != host:
            return None
        del self._holder[h]
        if not waiting:
            self._waiting.pop(h, None)
            return None
        return min(waiting)
