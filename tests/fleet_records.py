"""A small fleet's records as the management cluster stores them, and what Envoy's admin says
it holds: what the operator's views (kubelbd.overview, the CLI, the status page) are tested on.

alpha is healthy and serves shop.example.com over TLS and a wildcard; beta is disconnected,
claims alpha's host (and lost it), and has a hostile Ingress whose host is markup; one record
does not parse, one waits for Envoy, one sits in no tenant's namespace."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from kubefleet import certs

from kubelbd.objects import Obj
from kubelbd.overview.snapshot import Snapshot

from .records import condition, healthy_tenant, route, stored_route, stored_tenant, tls_copy

HOSTILE = "<script>document.title='pwned'</script>.beta.test"
SHOP = "shop.example.com"


def _path(service: str) -> dict[str, object]:
    return {"path": "/", "pathType": "Prefix",
            "backends": [{"service": service, "port": "80", "nodePort": 30080}]}  # fmt: skip


def _served(hosts: str, since: str = "2026-01-01T00:00:01Z") -> list[Obj]:
    return [
        condition("Accepted", "True", "Accepted", "translated", since),
        condition("Programmed", "True", "Programmed", f"serving {hosts}", since),
        condition("Conflict", "False", "NoConflict", "", since),
    ]


@dataclass(frozen=True)
class Fleet:
    snapshot: Snapshot
    now: dt.datetime  # ten days and an hour before shop's certificate expires
    shop_expires: dt.datetime


def envoy_configs() -> list[Obj]:
    """What /config_dump?resource=dynamic_route_configs and dynamic_listeners answer (trimmed
    to the fields read): a front table, a shard table and the HTTPS listener."""
    return [
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
         "route_config": {"name": "http", "virtual_hosts": [
             {"name": "shard.3", "domains": [SHOP, "*.apps.example.com"]}]}},
        {"route_config": {"name": "shard.3", "virtual_hosts": [
            {"name": f"alpha/{SHOP}", "domains": [SHOP]},
            {"name": "alpha/*.apps.example.com", "domains": ["*.apps.example.com"]}]}},
        {"route_config": {"name": "https", "virtual_hosts": [
            {"name": "shard.3 alpha/shop.web-tls", "domains": [SHOP]}]}},
        {"name": "https", "active_state": {"listener": {"name": "https", "filter_chains": [
            {"filter_chain_match": {"server_names": [SHOP]},
             "transport_socket": {"typed_config": {"common_tls_context": {
                 "tls_certificate_sds_secret_configs": [{"name": "alpha/shop.web-tls"}]}}}}]}}},
    ]  # fmt: skip


def fleet(envoy: list[Obj] | None = None, envoy_asked: bool = True) -> Fleet:
    pair = certs.self_signed(SHOP)
    expires = pair.cert.not_valid_after_utc
    tls = [{"hosts": [SHOP], "secretName": "web-tls", "source": "tenant"}]
    shop = route("alpha", "shop.web", [{"host": SHOP, "paths": [_path("web")]}], tls=tls)
    wild = route("alpha", "apps.wild", [{"host": "*.apps.example.com", "paths": [_path("w")]}])
    pending = route("alpha", "apps.new", [{"host": "new.example.com", "paths": [_path("n")]}])
    steal = route("beta", "x.steal", [{"host": SHOP, "paths": [_path("s")]}])
    hostile = route("beta", "x.evil", [{"host": HOSTILE, "paths": [_path("e")]}])
    invalid = stored_route(route("beta", "x.broken", []))
    invalid["spec"]["rules"] = "not a list"
    misplaced = stored_route(route("gamma", "x.elsewhere", [{"host": "m.test", "paths": []}]))
    misplaced["metadata"]["namespace"] = "default"
    snapshot = Snapshot(
        tenants=[
            healthy_tenant("alpha", "127.0.1.1", "127.0.1.2"),
            stored_tenant(
                "beta",
                condition(
                    "Connected",
                    "False",
                    "Unreachable",
                    "connection refused",
                    "2026-01-02T00:00:05Z",
                ),
                condition("Synced", "True", "Synced", "2 routes in sync"),
            ),
        ],
        routes=[
            stored_route(
                shop,
                SHOP,
                *_served(SHOP),
                condition("CertificateReady", "True", "CertificateReady", "every TLS host"),
            ),
            stored_route(wild, "*.apps.example.com", *_served("*.apps.example.com")),
            stored_route(pending),
            stored_route(
                steal,
                "",
                condition("Accepted", "True", "Accepted", "translated"),
                condition(
                    "Programmed",
                    "False",
                    "NoHosts",
                    "no host of this route is served",
                    "2026-01-02T00:00:03Z",
                ),
                condition(
                    "Conflict",
                    "True",
                    "HostConflict",
                    f"host {SHOP} is held by tenant alpha",
                    "2026-01-02T00:00:03Z",
                ),
            ),
            stored_route(
                hostile,
                "",
                condition(
                    "Accepted",
                    "False",
                    "HostNotAllowed",
                    f"host {HOSTILE} is not in the tenant's allowed domains",
                    "2026-01-02T00:00:04Z",
                ),
                condition(
                    "Programmed",
                    "False",
                    "NoHosts",
                    "<b>nothing</b> served",
                    "2026-01-02T00:00:04Z",
                ),
            ),
            invalid,
            misplaced,
        ],
        certificates=[tls_copy("alpha", "shop.web-tls", pair.cert_pem())],
        envoy_asked=envoy_asked,
        envoy_configs=envoy_configs() if envoy is None else envoy,
    )
    now = expires - dt.timedelta(days=10, hours=1)
    return Fleet(snapshot, now, expires)
