"""Allocation of what Layer 4 load balancers need: pure functions, deterministic results.

Pool mode gives each LoadBalancer an address of its own from the pool (so every tenant may use
port 443); service mode gives each (port, protocol) of each LoadBalancer an Envoy listener port
of its own. Existing allocations are never moved; requests are served oldest first, so the
outcome does not depend on the order records were seen in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field


class AllocationError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class AddressRequest:
    key: str  # the LoadBalancer record id
    age: tuple[str, str]  # (creationTimestamp, key): oldest first
    requested: str | None = None
    current: str | None = None  # what its status already holds


@dataclass
class AddressResult:
    assigned: dict[str, str] = field(default_factory=dict)
    failed: dict[str, AllocationError] = field(default_factory=dict)


def pool_addresses(pool: str) -> list[str]:
    """Usable host addresses of a CIDR, in order (network and broadcast excluded)."""
    net = ipaddress.ip_network(pool, strict=False)
    return [str(a) for a in net.hosts()]


def allocate_addresses(requests: Iterable[AddressRequest], pool: str) -> AddressResult:
    reqs = sorted(requests, key=lambda r: r.age)
    usable = pool_addresses(pool)
    in_pool = set(usable)
    result = AddressResult()
    taken: dict[str, str] = {}
    # Keep what is already allocated (and valid), oldest first.
    for r in reqs:
        keep = r.current if r.current in in_pool and r.current not in taken else None
        if keep and r.requested and r.requested != keep:
            keep = None  # the user asked for another address: try to move there
        if keep:
            taken[keep] = r.key
            result.assigned[r.key] = keep
    for r in reqs:
        if r.key in result.assigned:
            continue
        if r.requested:
            if r.requested not in in_pool:
                result.failed[r.key] = AllocationError(
                    "AddressNotInPool", f"requested address {r.requested} is not in pool {pool}"
                )
            elif r.requested in taken:
                result.failed[r.key] = AllocationError(
                    "AddressInUse", f"requested address {r.requested} is already taken"
                )
            else:
                taken[r.requested] = r.key
                result.assigned[r.key] = r.requested
            continue
        free = next((a for a in usable if a not in taken), None)
        if free is None:
            result.failed[r.key] = AllocationError(
                "PoolExhausted", f"no free address left in pool {pool}"
            )
            continue
        taken[free] = r.key
        result.assigned[r.key] = free
    return result


@dataclass(frozen=True)
class PortRequest:
    key: str
    age: tuple[str, str]
    ports: tuple[tuple[int, str], ...]  # (service port, protocol)
    current: tuple[tuple[int, str, int], ...] = ()  # (port, protocol, listener port)


@dataclass
class PortResult:
    assigned: dict[str, dict[tuple[int, str], int]] = field(default_factory=dict)
    failed: dict[str, AllocationError] = field(default_factory=dict)


def allocate_ports(requests: Iterable[PortRequest], first: int, last: int) -> PortResult:
    """Envoy listener ports, unique per protocol across every LoadBalancer."""
    reqs = sorted(requests, key=lambda r: r.age)
    result = PortResult()
    taken: set[tuple[int, str]] = set()
    for r in reqs:
        keep = {}
        for port, proto, listener in r.current:
            if (
                (port, proto) in r.ports
                and first <= listener <= last
                and (listener, proto) not in taken
            ):
                keep[(port, proto)] = listener
                taken.add((listener, proto))
        result.assigned[r.key] = keep
    for r in reqs:
        got = result.assigned[r.key]
        for port, proto in r.ports:
            if (port, proto) in got:
                continue
            free = next((p for p in range(first, last + 1) if (p, proto) not in taken), None)
            if free is None:
                result.failed[r.key] = AllocationError(
                    "PortsExhausted", f"no free listener port left in {first}-{last}"
                )
                break
            got[(port, proto)] = free
            taken.add((free, proto))
    for key in result.failed:
        result.assigned.pop(key, None)
    return result
