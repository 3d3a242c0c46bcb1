"""HTTPS: one listener, a filter chain per certificate chosen by SNI, and the certificates
themselves over SDS from kubelbd's secret server (kubelbd.envoy.sds), so rotating one never
touches the listener or its connections."""

from __future__ import annotations

from ..ir.tls import TLSPlan
from .common import Resource, socket_address
from .http import hcm, http_filter_chain
from .settings import FRONT_TLS, Settings
from .type_urls import DOWNSTREAM_TLS, LISTENER, TLS_INSPECTOR

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
    manager = hcm(FRONT_TLS, FRONT_TLS, settings, front=True)
    chains = []
    for secret, hosts in sorted(by_secret.items()):
        sds = {"name": secret, "sds_config": SDS_CONFIG}
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
                **http_filter_chain(manager),
            }
        )
    return {
        "@type": LISTENER,
        "name": FRONT_TLS,
        "address": socket_address(settings.https_address, settings.https_port),
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR},
            }
        ],
        "filter_chains": chains,
    }
