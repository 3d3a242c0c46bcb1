"""Stage 2 for Layer 4: LoadBalancer records plus their allocations → listeners and clusters.

Pure functions. Unlike HTTP there is nothing to merge across records: each LoadBalancer owns its
address (pool mode) or its listener ports (service mode), which the allocator has made unique,
so every (address, port, protocol) appears once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import Record, TenantRecord


@dataclass(frozen=True)
class LBRecord(Record):
    @property
    def age(self) -> tuple[str, str]:
        return (self.created, self.id)

    @property
    def service(self) -> str:
        return str((self.spec.get("source") or {}).get("name", ""))


@dataclass(frozen=True)
class Placement:
    """Where Envoy listens for one LoadBalancer: one address, a listener port per port."""

    address: str
    ports: tuple[tuple[int, str, int], ...]  # (service port, protocol, listener port)


@dataclass(frozen=True)
class L4Cluster:
    name: str
    addresses: tuple[str, ...]
    port: int
    protocol: str
    affinity: bool
    proxy_protocol: bool


@dataclass(frozen=True)
class L4Listener:
    name: str
    address: str
    port: int
    protocol: str
    cluster: str
    affinity: bool


def build(
    records: list[LBRecord], tenants: dict[str, TenantRecord], placements: dict[str, Placement]
) -> tuple[list[L4Listener], list[L4Cluster]]:
    listeners: list[L4Listener] = []
    clusters: dict[str, L4Cluster] = {}
    for rec in sorted(records, key=lambda r: r.id):
        placement = placements.get(rec.id)
        if placement is None:
            continue
        listen = {(p, proto): lp for p, proto, lp in placement.ports}
        addresses = tenants[rec.tenant].addresses if rec.tenant in tenants else ()
        affinity = rec.spec.get("sessionAffinity") == "ClientIP"
        pp = rec.spec.get("proxyProtocol") == "v2"
        for port in rec.spec.get("ports") or []:
            proto = port["protocol"]
            if (port["port"], proto) not in listen:
                continue
            cname = (
                f"l4/{rec.tenant}/{rec.namespace}/{rec.service}/{port['nodePort']}/{proto.lower()}"
            )
            clusters[cname] = L4Cluster(
                cname, addresses, int(port["nodePort"]), proto, affinity, pp and proto == "TCP"
            )
            listeners.append(
                L4Listener(
                    f"l4/{rec.tenant}/{rec.namespace}/{rec.service}/{port['port']}/{proto.lower()}",
                    placement.address,
                    listen[(port["port"], proto)],
                    proto,
                    cname,
                    affinity,
                )
            )
    return listeners, [clusters[n] for n in sorted(clusters)]
