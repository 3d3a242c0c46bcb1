"""Layer 4: LoadBalancer records plus their allocations → listeners and clusters.

Pure functions. Unlike HTTP there is nothing to merge across records: each LoadBalancer owns its
address (pool mode) or its listener ports (service mode), which the allocator has made unique,
so every (address, port, protocol) appears once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..records.types import LBRecord, LoadBalancerStatus, TenantRecord
from .allocation import (
    AddressRequest,
    AllocationError,
    PortRequest,
    allocate_addresses,
    allocate_ports,
)


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
    #: (nodePort, weight) of several backends behind one cluster, every address at each
    #: (a Gateway's UDP listener: Envoy's UDP proxy sends to one cluster); `port` unused
    weighted: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class L4Listener:
    name: str
    address: str
    port: int
    protocol: str
    cluster: str
    affinity: bool
    #: TCP: (cluster, weight) when connections are shared between several (a Gateway API
    #: route's weighted backendRefs); `cluster` is the first
    weights: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Pool:
    """Pool mode: an address of its own per LoadBalancer, from `cidr` ("" when unset)."""

    cidr: str


@dataclass(frozen=True)
class PortRange:
    """Service mode: listener ports from `first`-`last`, all on `address`."""

    address: str
    first: int
    last: int


def place(
    records: Iterable[LBRecord],
    current: Mapping[str, LoadBalancerStatus],
    where: Pool | PortRange,
) -> tuple[dict[str, Placement], dict[str, AllocationError]]:
    """Where Envoy listens for each LoadBalancer, oldest first, keeping what each holds
    (`current`: the allocation in its status); and why the others cannot be placed."""
    recs = sorted(records, key=lambda r: r.age)
    placements: dict[str, Placement] = {}
    if isinstance(where, Pool):
        if not where.cidr:
            err = AllocationError("NoPool", "kubelbd has no --l4-address-pool")
            return {}, {r.id: err for r in recs}
        result = allocate_addresses(
            (
                AddressRequest(
                    r.id,
                    r.age,
                    r.spec.get("requestedAddress") or None,
                    current.get(r.id, {}).get("address") or None,
                )
                for r in recs
            ),
            where.cidr,
        )
        for r in recs:
            address = result.assigned.get(r.id)
            if address is not None:
                ports = tuple((p["port"], p["protocol"], p["port"]) for p in r.spec["ports"])
                placements[r.id] = Placement(address, ports)
        return placements, result.failed
    presult = allocate_ports(
        (
            PortRequest(
                r.id,
                r.age,
                tuple((p["port"], p["protocol"]) for p in r.spec["ports"]),
                tuple(
                    (x["port"], x["protocol"], x["listenerPort"])
                    for x in current.get(r.id, {}).get("listenerPorts", [])
                ),
            )
            for r in recs
        ),
        where.first,
        where.last,
    )
    for r in recs:
        got = presult.assigned.get(r.id)
        if got is not None:
            listen = tuple(sorted((p, proto, lp) for (p, proto), lp in got.items()))
            placements[r.id] = Placement(where.address, listen)
    return placements, presult.failed


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
        affinity = rec.spec["sessionAffinity"] == "ClientIP"
        pp = rec.spec["proxyProtocol"] == "v2"
        for port in rec.spec["ports"]:
            proto = port["protocol"]
            if (port["port"], proto) not in listen:
                continue
            cname = (
                f"l4/{rec.tenant}/{rec.namespace}/{rec.service}/{port['nodePort']}/{proto.lower()}"
            )
            clusters[cname] = L4Cluster(
                cname, addresses, port["nodePort"], proto, affinity, pp and proto == "TCP"
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
