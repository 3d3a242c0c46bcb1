"""kubelbd's flags, checked, as one Config."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .certs.acme import ACMESettings
from .dataplane.l4 import L4Settings


@dataclass(frozen=True)
class Config:
    kubeconfig: str | None
    namespace: str
    config_dir: Path
    http_listen: str
    https_listen: str
    https_redirect_port: int
    public_address: str
    node_address_type: str
    envoy_admin: str
    run_envoy: bool
    keep_envoy: bool
    envoy_log: str | None
    route_shards: int
    health_listen: str | None
    install_crds: bool
    trust_kubeconfigs: bool
    l4: L4Settings
    acme: ACMESettings


def parse_args(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(
        prog="kubelbd", description="Load balancing for a fleet of clusters"
    )
    ap.add_argument("--kubeconfig", help="management cluster kubeconfig (default: in-cluster)")
    ap.add_argument("--namespace", default="kubelb", help="where tenant Secrets are registered")
    ap.add_argument("--config-dir", default="/var/run/kubelbd/envoy", type=Path,
                    help="Envoy's config volume, shared with the Envoy sidecar")  # fmt: skip
    ap.add_argument("--http-listen", default="0.0.0.0:8080", help="Envoy's HTTP listener")
    ap.add_argument(
        "--https-listen", default="0.0.0.0:8443", help="Envoy's HTTPS listener; empty for none"
    )
    ap.add_argument("--https-redirect-port", type=int, default=443,
                    help="the public HTTPS port HTTP requests are redirected to")  # fmt: skip
    ap.add_argument("--public-address", default="",
                    help="IP or hostname written into tenant Ingress status")  # fmt: skip
    address_types = ["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"]
    ap.add_argument("--node-address-type", default="InternalIP", choices=address_types)
    ap.add_argument("--envoy-admin", default="127.0.0.1:9901",
                    help="Envoy admin address; must stay on loopback")  # fmt: skip
    ap.add_argument("--run-envoy", action="store_true",
                    help="run Envoy as a supervised child (outside a cluster)")  # fmt: skip
    ap.add_argument("--envoy-log", default=None, help="file for the child Envoy's output")
    ap.add_argument("--keep-envoy", action="store_true",
                    help="leave the child Envoy running on exit; adopt it on start")  # fmt: skip
    ap.add_argument("--route-shards", type=int, default=16,
                    help="route tables the hosts are spread over")  # fmt: skip
    ap.add_argument("--health-listen", default=None, help="host:port for /healthz and /readyz")
    ap.add_argument("--no-install-crds", dest="install_crds", action="store_false")
    ap.add_argument(
        "--trust-kubeconfigs",
        action="store_true",
        help="let registration kubeconfigs run exec and auth-provider plugins, read files on "
        "kubelbd's host (tokenFile, client-certificate, ...) and name a proxy-url; refused by "
        "default, as a kubeconfig is the tenant's. Only when whoever writes registration "
        "Secrets may run code as kubelbd",
    )
    ap.add_argument(
        "--l4-mode",
        choices=["pool", "service"],
        default="pool",
        help="how LoadBalancer Services get an address (see docs/architecture.md)",
    )
    ap.add_argument(
        "--l4-address-pool",
        default="",
        help="pool mode: CIDR of addresses Envoy listens on, one per LoadBalancer",
    )
    ap.add_argument(
        "--l4-listen-address",
        default="",
        help="service mode: where Envoy's L4 listeners bind (default: HTTP's)",
    )
    ap.add_argument(
        "--l4-port-range",
        default="20000-29999",
        help="service mode: Envoy listener ports to allocate from",
    )
    ap.add_argument("--l4-envoy-selector", default="app=kubelbd",
                    help="service mode: labels of the Envoy pods, k=v[,k=v]")  # fmt: skip
    ap.add_argument(
        "--acme-directory", default="", help="ACME directory URL for kubelb.io/tls-acme"
    )
    ap.add_argument("--acme-email", default="", help="contact address for the ACME account")
    ap.add_argument("--acme-ca-bundle", default=None,
                    help="CA bundle for the ACME server's HTTPS (default: system)")  # fmt: skip
    ap.add_argument("--log-level", default=os.environ.get("KUBELBD_LOG_LEVEL", "info"))
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    admin_host = args.envoy_admin.rpartition(":")[0]
    if admin_host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
        ap.error("--envoy-admin must be a loopback address: the admin API must never be exposed")
    if args.route_shards < 1:
        ap.error("--route-shards must be at least 1")
    try:
        if args.l4_address_pool:
            ipaddress.ip_network(args.l4_address_pool, strict=False)
        first, _, last = args.l4_port_range.partition("-")
        port_range = (int(first), int(last))
        selector = tuple(tuple(kv.split("=", 1)) for kv in args.l4_envoy_selector.split(",") if kv)
    except ValueError as e:
        ap.error(f"bad Layer 4 setting: {e}")
    if not all(len(kv) == 2 for kv in selector):
        ap.error("--l4-envoy-selector takes k=v[,k=v]")
    http_host = args.http_listen.rpartition(":")[0].strip("[]")
    return Config(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        config_dir=args.config_dir,
        http_listen=args.http_listen,
        https_listen=args.https_listen,
        https_redirect_port=args.https_redirect_port,
        public_address=args.public_address,
        node_address_type=args.node_address_type,
        envoy_admin=args.envoy_admin,
        run_envoy=args.run_envoy,
        keep_envoy=args.keep_envoy,
        envoy_log=args.envoy_log,
        route_shards=args.route_shards,
        health_listen=args.health_listen,
        install_crds=args.install_crds,
        trust_kubeconfigs=args.trust_kubeconfigs,
        acme=ACMESettings(
            directory=args.acme_directory,
            email=args.acme_email,
            ca_bundle=args.acme_ca_bundle,
            namespace=args.namespace,
        ),
        l4=L4Settings(
            mode=args.l4_mode,
            pool=args.l4_address_pool,
            listen_address=args.l4_listen_address or http_host,
            port_range=port_range,
            envoy_selector=selector,
        ),
    )


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
