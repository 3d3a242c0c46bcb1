"""Allocation of what Layer 4 load balancers need: pure functions, deterministic results.

Pool mode gives each LoadBalancer an address of its own from the pool (so every tenant may use
port 443); service mode gives each (port, protocol) of each LoadBalancer an Envoy listener port
of its own. Existing allocations are never moved or lost to a failed change; requests are
served oldest first, so the outcome does not depend on the order records were seen in. A
request may end up both assigned (what it keeps serving) and failed (what it asked for).
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


def _usable(address: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    """The address in canonical form if it is a usable host address of `net`, else None."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version != net.version or ip not in net:
        return None
    if net.num_addresses > 2 and ip == net.network_address:
        return None
    if net.version == 4 and net.num_addresses > 2 and ip == net.broadcast_address:
        return None
    return str(ip)


def allocate_addresses(requests: Iterable[AddressRequest], pool: str) -> AddressResult:
    """Addresses are compared in canonical form and the pool is walked lazily, so a large pool
    (a /8, an IPv6 /64) costs what is allocated, not its size. A load balancer that asks to
    move keeps its current address until the move succeeds: a refused move is reported, and
    the address it serves on is neither dropped nor handed to someone else."""
    net = ipaddress.ip_network(pool, strict=False)
    reqs = sorted(requests, key=lambda r: r.age)
    result = AddressResult()
    taken: dict[str, str] = {}
    held: dict[str, str] = {}
    for r in reqs:
        current = _usable(r.current, net) if r.current else None
        if current and current not in taken:
            taken[current] = r.key
            held[r.key] = current
    for r in reqs:
        current = held.get(r.key)
        requested = (_usable(r.requested, net) or r.requested) if r.requested else None
        if requested and requested != current:
            if _usable(requested, net) is None:
                result.failed[r.key] = AllocationError(
                    "AddressNotInPool", f"requested address {r.requested} is not in pool {pool}"
                )
            elif requested in taken:
                result.failed[r.key] = AllocationError(
                    "AddressInUse", f"requested address {r.requested} is already taken"
                )
            else:
                if current:
                    del taken[current]
                taken[requested] = r.key
                result.assigned[r.key] = requested
                continue
            if current:
                result.assigned[r.key] = current
            continue
        if current:
            result.assigned[r.key] = current
            continue
        free = next((str(a) for a in net.hosts() if str(a) not in taken), None)
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
        new: dict[tuple[int, str], int] = {}
        for port, proto in r.ports:
            if (port, proto) in got:
                continue
            free = next((p for p in range(first, last + 1) if (p, proto) not in taken), None)
            if free is None:
                result.failed[r.key] = AllocationError(
                    "PortsExhausted", f"no free listener port left in {first}-{last}"
                )
                break
            new[(port, proto)] = free
            taken.add((free, proto))
        if r.key in result.failed:
            # All or nothing for the new ports, so a younger request is not starved by a
            # half-served one; the ports already served stay served.
            taken -= {(lp, proto) for (_, proto), lp in new.items()}
            if not got:
                del result.assigned[r.key]
        else:
            got.update(new)
    return result
