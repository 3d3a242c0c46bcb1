"""A tenant's policy: what the operator allows it, as the sources and the IR apply it.

The Tenant record's `spec` belongs to the operator (kubelbd writes only its status); where it
says nothing, the fleet-wide defaults given by flags apply. Tenants never write it, so
nothing here trusts tenant data: it is what tenant data is checked against.

Domain patterns follow KubeLB's syntax: an exact name; `*.example.com` for names one label
below example.com; `**.example.com` for names at any depth below it; `**` for every name.
Neither wildcard covers example.com itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .parse import tenant_spec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = ipaddress.IPv4Address | ipaddress.IPv6Address

#: the Kubernetes default Service node-port range
DEFAULT_NODE_PORTS = (30000, 32767)
ANY_DOMAIN = "**"

# Addresses no tenant node may have unless the operator names them in the tenant's
# nodeCIDRs: Envoy dialling them reaches kubelbd's own host (its admin API, the management
# cluster's node) or nothing routable.
_SPECIAL = (
    "loopback",
    "link-local",
    "unspecified",
    "multicast",
    "reserved",
)


@dataclass(frozen=True)
class Limits:
    """How many objects of each kind a tenant may have served (None: no limit)."""

    routes: int | None = None
    load_balancers: int | None = None
    certificates: int | None = None


@dataclass(frozen=True)
class Policy:
    allowed_domains: tuple[str, ...] = (ANY_DOMAIN,)
    #: where the tenant's node addresses may be; empty: anywhere not forbidden
    node_cidrs: tuple[Network, ...] = ()
    limits: Limits = Limits()
    #: cert-manager ClusterIssuers the tenant may name (namespaced Issuers are its own)
    cluster_issuers: frozenset[str] = frozenset()
    #: fleet-wide: the nodePorts a tenant Service may have
    node_ports: tuple[int, int] = DEFAULT_NODE_PORTS
    #: fleet-wide: the management cluster's own node, pod and service networks
    forbidden: tuple[Network, ...] = field(default=())
    #: fleet-wide (--dns-base-domain): every tenant gets `<tenant>.<base>` for its names
    base_domain: str = ""
    #: the tenant's own `<tenant>.<base>` ("" without a base domain): where its automatic
    #: names are (`kubelb.io/hostname: auto`), and a domain it may always use
    auto_domain: str = ""

    # ---- hosts ----------------------------------------------------------------------------

    def allows_host(self, host: str) -> bool:
        """Whether the tenant may claim `host` ("" is the catch-all: every host no one else
        claims, which only a tenant allowed every name may have)."""
        if self.base_domain and (host == self.base_domain or host.endswith(f".{self.base_domain}")):
            # Below the base domain every tenant has its own name and nothing else: no
            # allowedDomains entry (`**` included) lets one into another's.
            own = self.auto_domain
            return bool(own) and (host == own or host.endswith(f".{own}"))
        return any(domain_covers(p, host) for p in self.allowed_domains)

    # ---- node addresses -------------------------------------------------------------------

    def node_address_problem(self, address: str) -> str | None:
        """Why Envoy must not dial `address` for this tenant (None: it may)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return f"{address[:64]!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            return f"{address[:64]!r} has an IPv6 zone: not an address Envoy dials"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # ::ffff:a.b.c.d (and NAT64, 6to4, Teredo) reach a.b.c.d: judged as that.
            inner = self.node_address_problem(str(embedded))
            return f"{ip} is {embedded}: {inner}" if inner else None
        if any(ip in n for n in self.forbidden):
            return f"{ip} is an address of the management cluster"
        if self.node_cidrs:
            if not any(ip in n for n in self.node_cidrs):
                cidrs = ", ".join(str(n) for n in self.node_cidrs)
                return f"{ip} is outside the tenant's nodeCIDRs ({cidrs})"
            return None  # inside a range the operator named: allowed even if special
        for kind in _SPECIAL:
            if getattr(ip, f"is_{kind.replace('-', '_')}"):
                return f"{ip} is a {kind} address"
        return None

    def node_port_problem(self, port: Any) -> str | None:
        low, high = self.node_ports
        if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= high:
            return f"nodePort {str(port)[:16]} is outside {low}-{high}"
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to, where it leads to one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo is not None else None


def canonical(address: str) -> str:
    """One spelling per address (an IPv4-mapped IPv6 address as its IPv4 one); `address`
    must be one `node_address_problem` accepted."""
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def domain_covers(pattern: str, host: str) -> bool:
    """Whether a domain pattern allows `host` (itself possibly a wildcard `*.x`)."""
    if pattern == ANY_DOMAIN:
        return True
    if not host:
        return False
    if host.startswith("*."):
        # A wildcard host claims every name one label below its parent.
        if pattern == host:
            return True
        parent = host[2:]
        if pattern.startswith("**."):
            base = pattern[3:]
            return parent == base or parent.endswith("." + base)
        return False
    if pattern.startswith("**."):
        return host.endswith("." + pattern[3:])
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label and dot and rest == pattern[2:])
    return host == pattern


# ---- from the Tenant record ------------------------------------------------------------------


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (an address alone is a /32 or /128); ValueError names the first bad one."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"{v!r} is not a CIDR: {e}") from e
    return tuple(out)


def policy_of(spec: Mapping[str, Any] | None, defaults: Policy) -> Policy:
    """The policy a Tenant spec sets, with `defaults` where it sets nothing; ValueError for
    a spec that does not parse (the caller keeps the tenant on the defaults and says so)."""
    checked = tenant_spec({} if spec is None else spec)  # the TenantSpec type, strictly
    limits = checked.get("limits", {})
    domains = checked.get("allowedDomains")
    cidrs = checked.get("nodeCIDRs")
    issuers = checked.get("clusterIssuers")
    d = defaults.limits
    return Policy(
        allowed_domains=(
            tuple(v.strip().lower().rstrip(".") for v in domains)
            if domains is not None
            else defaults.allowed_domains
        ),
        node_cidrs=parse_networks(cidrs) if cidrs is not None else defaults.node_cidrs,
        limits=Limits(
            routes=limits.get("routes", d.routes),
            load_balancers=limits.get("loadBalancers", d.load_balancers),
            certificates=limits.get("certificates", d.certificates),
        ),
        cluster_issuers=frozenset(issuers) if issuers is not None else defaults.cluster_issuers,
        node_ports=defaults.node_ports,
        forbidden=defaults.forbidden,
        base_domain=defaults.base_domain,
    )


def for_tenant(policy: Policy, tenant: str) -> Policy:
    """`policy` as it applies to `tenant`: with a base domain, the tenant's own
    `<tenant>.<base>` and every name below it are allowed, and no other name below the base
    (tenant names are unique, so each of these domains is one tenant's alone, whatever any
    allowedDomains say)."""
    if not policy.base_domain:
        return policy
    own = f"{tenant}.{policy.base_domain}"
    extra = tuple(d for d in (own, f"**.{own}") if d not in policy.allowed_domains)
    return replace(policy, allowed_domains=policy.allowed_domains + extra, auto_domain=own)
