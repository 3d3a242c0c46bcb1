"""HTTPS: one listener, a filter chain per certificate chosen by SNI, and the certificates
themselves as SDS files (so rotating one never touches the listener or its connections)."""

from __future__ import annotations

import base64

from ..ir.tls import CertificateData, TLSPlan
from .common import Resource, config_source, socket_address
from .http import hcm, http_filter_chain
from .settings import FRONT_TLS, Settings, secret_file
from .type_urls import DOWNSTREAM_TLS, LISTENER, SDS_SECRET, TLS_INSPECTOR


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
    manager = hcm(FRONT_TLS, FRONT_TLS, settings, front=True)
    chains = []
    for secret, hosts in sorted(by_secret.items()):
        sds = {
            "name": secret,
            "sds_config": config_source(f"{settings.config_dir}/{secret_file(secret)}"),
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
