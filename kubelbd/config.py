"""kubelbd's flags, checked, as one Config."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from .certs.acme import ACMESettings
from .dataplane.dns import DNSENDPOINT_PROVIDER, PROVIDERS, RFC2136_PROVIDER, DNSSettings
from .dataplane.l4 import L4Settings
from .kube.lease import LeaseSettings
from .records.policy import ANY_DOMAIN, Limits, Policy, parse_networks
from .sources.dnsnames import NAME


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
    #: the fleet-wide defaults of every tenant's policy, and what no tenant may have
    policy: Policy
    lease: LeaseSettings
    dns: DNSSettings
    #: on SIGTERM: how long Envoy drains its listeners before it stops (0: it stops at once)
    drain_seconds: float


def parse_args(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(
        prog="kubelbd serve", description="Load balancing for a fleet of clusters"
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
    tenants = ap.add_argument_group(
        "tenant policy",
        "fleet-wide defaults where a Tenant record's spec says nothing (docs/security.md)",
    )
    tenants.add_argument(
        "--default-allowed-domains",
        default=ANY_DOMAIN,
        help="hosts a tenant may claim, comma-separated: example.com, *.example.com, "
        "**.example.com, ** (default: every name)",
    )
    tenants.add_argument("--default-node-cidrs", default="",
                         help="CIDRs a tenant's node addresses must be in (default: any "
                              "address but special and management ones)")  # fmt: skip
    tenants.add_argument("--default-max-routes", type=int, default=None)
    tenants.add_argument("--default-max-load-balancers", type=int, default=None)
    tenants.add_argument("--default-max-certificates", type=int, default=None)
    tenants.add_argument("--default-cluster-issuers", default="",
                         help="cert-manager ClusterIssuers every tenant may name")  # fmt: skip
    tenants.add_argument("--management-cidrs", default="",
                         help="the management cluster's node, pod and service CIDRs: never a "
                              "tenant's node address (the L4 pool and Envoy's own addresses "
                              "never are either)")  # fmt: skip
    tenants.add_argument(
        "--node-port-range",
        default="30000-32767",
        help="nodePorts a tenant Service may have (Kubernetes' default)",
    )
    dns = ap.add_argument_group(
        "DNS",
        "publish every served host at --public-address: over RFC 2136 (TSIG) to an "
        "authoritative server (off without --dns-server), or as external-dns DNSEndpoint "
        "objects (--dns-provider=dnsendpoint)",
    )
    dns.add_argument("--dns-provider", choices=PROVIDERS, default=RFC2136_PROVIDER,
                     help="rfc2136: kubelbd updates --dns-server itself; dnsendpoint: it "
                          "writes a DNSEndpoint (externaldns.k8s.io/v1alpha1) per record in "
                          "tenant-<name> for the operator's external-dns, and needs no "
                          "server, zone or key")  # fmt: skip
    dns.add_argument("--dns-server", default="", help="host:port of the primary server")
    dns.add_argument("--dns-zone", default="", help="the zone kubelbd publishes into")
    dns.add_argument("--dns-tsig-name", default="", help="TSIG key name")
    dns.add_argument("--dns-tsig-algorithm", default="hmac-sha256")
    dns.add_argument("--dns-tsig-secret-file", default="",
                     help="file with the TSIG secret (or $KUBELBD_DNS_TSIG_SECRET)")  # fmt: skip
    dns.add_argument("--dns-ttl", type=int, default=60)
    dns.add_argument("--dns-owner-id", default="kubelbd",
                     help="the owner in the ownership TXT records (external-dns's registry "
                          "format): another kubelbd or external-dns on the same zone needs "
                          "another")  # fmt: skip
    dns.add_argument("--dns-base-domain", default="",
                     help="every tenant gets <tenant>.<base> for its names, and automatic "
                          "names there (kubelb.io/hostname: auto)")  # fmt: skip
    ha = ap.add_argument_group(
        "high availability",
        "every replica serves; the holder of a Lease in --namespace is the one that writes",
    )
    ha.add_argument("--identity", default=os.environ.get("POD_NAME") or _unique_identity(),
                    help="this replica's name in the Lease, unique among the replicas "
                         "(default: $POD_NAME, else host name and a random suffix); keep it "
                         "across restarts of the same replica")  # fmt: skip
    ha.add_argument("--lease-name", default="kubelbd")
    ha.add_argument("--lease-duration", type=int, default=15,
                    help="seconds without renewal before another replica takes over")  # fmt: skip
    ha.add_argument("--lease-renew-deadline", type=float, default=10.0,
                    help="seconds the leader tries to renew before it stops writing")  # fmt: skip
    ha.add_argument("--lease-retry-period", type=float, default=2.0)
    ap.add_argument("--drain-seconds", type=float, default=0.0,
                    help="on SIGTERM: fail readiness and Envoy's health checks, drain Envoy's "
                         "listeners this long, then stop")  # fmt: skip
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
    try:
        policy = default_policy(args)
    except ValueError as e:
        ap.error(f"bad tenant policy default: {e}")
    try:
        lease = LeaseSettings(
            namespace=args.namespace,
            identity=args.identity,
            name=args.lease_name,
            lease_duration=args.lease_duration,
            renew_deadline=args.lease_renew_deadline,
            retry_period=args.lease_retry_period,
        )
    except ValueError as e:
        ap.error(f"bad lease timing: {e}")
    try:
        dns_settings = dns_config(args)
    except (OSError, ValueError) as e:
        ap.error(f"bad DNS setting: {e}")
    if args.drain_seconds < 0:
        ap.error("--drain-seconds must not be negative")
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
        policy=policy,
        lease=lease,
        dns=dns_settings,
        drain_seconds=args.drain_seconds,
        l4=L4Settings(
            mode=args.l4_mode,
            pool=args.l4_address_pool,
            listen_address=args.l4_listen_address or http_host,
            port_range=port_range,
            envoy_selector=selector,
        ),
    )


#: the flags of --dns-provider=rfc2136 only: kubelbd's own updates and their ownership TXT
_RFC2136_FLAGS = {
    "dns_server": "--dns-server",
    "dns_zone": "--dns-zone",
    "dns_tsig_name": "--dns-tsig-name",
    "dns_tsig_secret_file": "--dns-tsig-secret-file",
}


def dns_config(args: argparse.Namespace) -> DNSSettings:
    if args.dns_ttl < 0:
        raise ValueError("--dns-ttl must not be negative")
    if args.dns_provider == DNSENDPOINT_PROVIDER:
        # external-dns has its own zones, credentials and owner id: a server or key given too
        # would look used and never be. Refused rather than ignored.
        given = [flag for attr, flag in _RFC2136_FLAGS.items() if getattr(args, attr)]
        if args.dns_tsig_algorithm != "hmac-sha256":
            given.append("--dns-tsig-algorithm")
        if args.dns_owner_id != "kubelbd":
            given.append("--dns-owner-id")
        if given:
            raise ValueError(
                f"--dns-provider=dnsendpoint publishes through external-dns: "
                f"{', '.join(given)} are for --dns-provider=rfc2136 only"
            )
        return DNSSettings(ttl=args.dns_ttl, provider=DNSENDPOINT_PROVIDER)
    if not args.dns_server:
        return DNSSettings()
    secret = os.environ.get("KUBELBD_DNS_TSIG_SECRET", "")
    if args.dns_tsig_secret_file:
        secret = Path(args.dns_tsig_secret_file).read_text().strip()
    if not (args.dns_zone and args.dns_tsig_name and secret):
        raise ValueError("--dns-server needs --dns-zone, --dns-tsig-name and a TSIG secret")
    split_host_port(args.dns_server)
    return DNSSettings(
        server=args.dns_server,
        zone=args.dns_zone,
        key_name=args.dns_tsig_name,
        key_secret=secret,
        algorithm=args.dns_tsig_algorithm,
        ttl=args.dns_ttl,
        owner=args.dns_owner_id,
    )


def _unique_identity() -> str:
    """Two replicas with one identity would both believe they hold the Lease."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def default_policy(args: argparse.Namespace) -> Policy:
    """Every tenant's policy where its record says nothing; plus what none may have: the
    management cluster's networks, the L4 pool and the addresses Envoy and kubelbd listen
    on (a tenant node there would have Envoy dial itself, admin API included)."""
    first, _, last = args.node_port_range.partition("-")
    node_ports = (int(first), int(last))
    if not 1 <= node_ports[0] <= node_ports[1] <= 65535:
        raise ValueError(f"--node-port-range {args.node_port_range!r}")
    own = [args.l4_address_pool] if args.l4_address_pool else []
    for listen in (args.envoy_admin, args.http_listen, args.https_listen, args.health_listen):
        host = (listen or "").rpartition(":")[0].strip("[]")
        try:
            if not ipaddress.ip_address(host).is_unspecified:
                own.append(host)
        except ValueError:
            pass  # a name ("localhost", "") or nothing: list its addresses in --management-cidrs
    for name in ("default_max_routes", "default_max_load_balancers", "default_max_certificates"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    return Policy(
        allowed_domains=tuple(d.lower().rstrip(".") for d in _csv(args.default_allowed_domains)),
        node_cidrs=parse_networks(_csv(args.default_node_cidrs)),
        limits=Limits(
            routes=args.default_max_routes,
            load_balancers=args.default_max_load_balancers,
            certificates=args.default_max_certificates,
        ),
        cluster_issuers=frozenset(_csv(args.default_cluster_issuers)),
        node_ports=node_ports,
        forbidden=parse_networks([*_csv(args.management_cidrs), *own]),
        base_domain=base_domain(args.dns_base_domain),
    )


def base_domain(value: str) -> str:
    name = value.strip().lower().rstrip(".")
    if name and not NAME.fullmatch(name):
        raise ValueError(f"--dns-base-domain {value!r} is not a DNS name")
    return name


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
