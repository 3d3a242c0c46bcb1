"""What Envoy holds, from its admin's /config_dump: which hosts its HTTP route tables serve
for which tenant, and which SDS secret its HTTPS listener picks for each SNI name.

Only what admin exposes is read: a shard table's virtual hosts, and those of a host's scope
(envoy/scopes.py), are named `<tenant>/<host>` (the catch-all `<tenant>/*`), and an HTTPS
filter chain matches `server_names` and names its certificate's SDS secret."""

from __future__ import annotations

from typing import Any

from ..objects import Obj
from .model import EnvoyFacts

#: route tables holding the rules; the front tables only forward by host to these
SHARD_PREFIX = "shard."
#: a host's scope's table (the fallback scope holds a front table)
HOST_PREFIX = "host/"


def envoy_facts(configs: list[Obj] | None) -> EnvoyFacts:
    """The facts in `configs` (items of /config_dump?resource=dynamic_route_configs,
    dynamic_scoped_route_configs and dynamic_listeners; None: Envoy could not be reached)."""
    if configs is None:
        return EnvoyFacts(reachable=False)
    http_hosts: dict[str, str] = {}
    https_hosts: dict[str, str] = {}
    for item in configs:
        if not isinstance(item, dict):
            continue
        table = item.get("route_config")
        if isinstance(table, dict) and str(table.get("name", "")).startswith(SHARD_PREFIX):
            _table_hosts(table, http_hosts)
        for scope in _list(item.get("scoped_route_configs")):
            table = scope.get("route_configuration")
            if isinstance(table, dict) and str(table.get("name", "")).startswith(HOST_PREFIX):
                _table_hosts(table, http_hosts)
        listener = (item.get("active_state") or {}).get("listener")
        if isinstance(listener, dict):
            _sni_secrets(listener, https_hosts)
    return EnvoyFacts(True, dict(sorted(http_hosts.items())), dict(sorted(https_hosts.items())))


def _table_hosts(table: Obj, out: dict[str, str]) -> None:
    for vhost in _list(table.get("virtual_hosts")):
        tenant, slash, _ = str(vhost.get("name", "")).partition("/")
        if slash and tenant:
            for domain in vhost.get("domains") or []:
                out[str(domain)] = tenant


def _sni_secrets(listener: Obj, out: dict[str, str]) -> None:
    for chain in _list(listener.get("filter_chains")):
        names = (chain.get("filter_chain_match") or {}).get("server_names") or []
        # a TLS context in config_dump JSON: transport_socket.typed_config.common_tls_context
        context = ((chain.get("transport_socket") or {}).get("typed_config") or {}).get(
            "common_tls_context"
        ) or {}
        secrets = _list(context.get("tls_certificate_sds_secret_configs"))
        if secrets:
            for name in names:
                out[str(name)] = str(secrets[0].get("name", ""))


def _list(value: Any) -> list[Obj]:
    """The objects of a list field (admin's output is read, not relied on for its shape)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
