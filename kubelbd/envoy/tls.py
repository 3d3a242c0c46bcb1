"""HTTPS: one listener, a filter chain per certificate chosen by SNI, and the certificates
themselves over SDS from kubelbd's secret server (kubelbd.envoy.ads), so rotating one never
touches the listener or its connections.

A connection speaks only for the hosts served with its certificate. Every chain shares one
front table (`https_table`, one RDS file, like the plain HTTP one): each chain stamps its
requests with its certificate (`certificate_tag`, before routing, replacing whatever the
client sent), and each host's route there forwards only requests stamped with the certificate
that host is served with. Any other request (SNI of one tenant, Host of another: domain
fronting) gets 421 Misdirected Request, so a client retries on a connection of its own.
Contour and Envoy Gateway get the same with a route table per chain, over gRPC; here every
file subscription costs Envoy an inotify instance, so one table it is, and its size grows with
the TLS hosts, never with certificates times hosts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..ir.tls import TLSPlan
from .common import Resource, socket_address
from .http import CLIENT_ADDRESS, authority_guard, hcm, http_filter_chain, route_config
from .scopes import SCOPE_HEADER
from .settings import FRONT_TLS, Settings
from .type_urls import DOWNSTREAM_TLS, EARLY_HEADER_MUTATION, LISTENER, TLS_INSPECTOR

#: The certificate of the connection a request came on, set by its filter chain; internal.
CERTIFICATE_HEADER = "x-kubelb-certificate"


def certificate_tag(secret: str) -> Resource:
    """Early header mutation (before routing): this connection's certificate, overwriting
    any value the client sent."""
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": EARLY_HEADER_MUTATION,
            "mutations": [
                {"remove": CERTIFICATE_HEADER},
                {
                    "append": {
                        "header": {"key": CERTIFICATE_HEADER, "value": secret},
                        "append_action": "ADD_IF_ABSENT",
                    }
                },
            ],
        },
    }


def misdirected_route(message: str) -> Resource:
    """A route answering 421 Misdirected Request: the client is to use a connection of its
    own for this host."""
    return {
        "match": {"prefix": "/"},
        "direct_response": {"status": 421, "body": {"inline_string": message}},
    }


NOT_THIS_CERTIFICATE = "this host is not served with this connection's certificate\n"


def https_table(
    served: Mapping[str, tuple[tuple[str, ...], str]], misdirected: Sequence[str]
) -> Resource:
    """The HTTPS front table: host → shard, for requests on the connections of the
    certificates the host may be asked for on (`served`: host → (secret ids, shard); the one
    it is served with, then the one it was served with before, whose connections Envoy is
    draining); 421 for any other request. `misdirected`: hosts under a TLS wildcard that
    another route owns without a certificate (Envoy's `*.` would otherwise take them to the
    wildcard's routes). The client's address is appended to X-Forwarded-For, and the
    certificate stamp removed before the request goes on."""
    groups: dict[tuple[str, tuple[str, ...], str], list[str]] = {}
    for host, (secrets, shard) in served.items():
        wildcard = host if host.startswith("*.") else ""  # each with its own one-label guard
        groups.setdefault((shard, secrets, wildcard), []).append(host)
    vhosts = []
    for (shard, secrets, wildcard), hosts in sorted(groups.items()):
        forward = [
            {
                "match": {
                    "prefix": "/",
                    "headers": [
                        {"name": CERTIFICATE_HEADER, "string_match": {"exact": secret}},
                        *(authority_guard(wildcard) if wildcard else []),
                    ],
                },
                "route": {"cluster": shard, "timeout": "0s"},
            }
            for secret in secrets
        ]
        vhosts.append(
            {
                "name": " ".join(filter(None, (shard, *secrets, wildcard))),
                "domains": sorted(hosts),
                "routes": [*forward, misdirected_route(NOT_THIS_CERTIFICATE)],
            }
        )
    if misdirected:
        vhosts.append(
            {
                "name": "no-certificate",
                "domains": list(misdirected),
                "routes": [misdirected_route("no certificate for this host\n")],
            }
        )
    vhosts.append(
        {"name": "*", "domains": ["*"], "routes": [misdirected_route(NOT_THIS_CERTIFICATE)]}
    )
    return route_config(
        FRONT_TLS,
        vhosts,
        request_headers_to_add=[CLIENT_ADDRESS],
        # The plain listener's scope key means nothing here; a client's own would otherwise
        # reach the backend as if Envoy had set it.
        request_headers_to_remove=[CERTIFICATE_HEADER, SCOPE_HEADER],
    )


#: Where the listener's certificates come from: the ADS stream of the bootstrap (one gRPC stream
#: for all of them; a file per certificate would cost Envoy an inotify instance each).
SDS_CONFIG: Resource = {"ads": {}, "resource_api_version": "V3"}


def https_listener(plan: TLSPlan, settings: Settings) -> Resource | None:
    """One filter chain per certificate, chosen by SNI; certificates come from SDS, so
    rotating one never touches the listener or its connections. None without TLS hosts
    (Envoy refuses a listener with no filter chain)."""
    by_secret: dict[str, list[str]] = {}
    for h in plan.hosts.values():
        by_secret.setdefault(h.secret, []).append(h.host)
    if not by_secret or not settings.https_port:
        return None
    manager = hcm(FRONT_TLS, FRONT_TLS, settings, front=True, into_shards=True)
    chains = []
    for secret, hosts in sorted(by_secret.items()):
        chains.append(
            {
                "name": secret,
                "filter_chain_match": {"server_names": sorted(hosts)},
                "transport_socket": downstream_tls(secret),
                **http_filter_chain(
                    {**manager, "early_header_mutation_extensions": [certificate_tag(secret)]}
                ),
            }
        )
    return {
        "@type": LISTENER,
        "name": FRONT_TLS,
        "address": socket_address(settings.https_address, settings.https_port),
        "listener_filters": [tls_inspector()],
        "filter_chains": chains,
    }


def downstream_tls(secret: str, alpn: tuple[str, ...] = ("http/1.1",)) -> Resource:
    """TLS served with one certificate (a secret id), which Envoy takes from SDS, offering
    the application protocols `alpn` (none: the client's choice is not answered)."""
    sds = {"name": secret, "sds_config": SDS_CONFIG}
    context: Resource = {"tls_certificate_sds_secret_configs": [sds]}
    if alpn:
        context["alpn_protocols"] = list(alpn)
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": DOWNSTREAM_TLS, "common_tls_context": context},
    }


def tls_inspector() -> Resource:
    """The listener filter that reads the SNI a filter chain is chosen by."""
    return {
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": TLS_INSPECTOR},
    }
