"""Nodes: where Envoy reaches a tenant's NodePorts (the Tenant record's node addresses)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..objects import Obj
from . import shapes


def _ready(node: Obj) -> bool:
    status = node.get("status") or {}
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _ip(address: str) -> str | None:
    """The address in canonical form if Envoy can dial it as one: an IP, without an IPv6
    zone (a tenant's API server may report anything as a node's address)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return None
    return str(ip)


def _address(node: Obj, address_type: str) -> str | None:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == address_type and a.get("address"):
            return _ip(a["address"])
    return None


def node_addresses(nodes: Iterable[Obj], address_type: str) -> list[str]:
    """Addresses of Ready nodes, of the configured type, sorted: what Envoy dials.

    When no node is Ready, every node's address: a whole cluster turning NotReady at once is
    a disruption of its control plane (its API server was away, the node controller has not
    heard the kubelets yet), not of its nodes, and Kubernetes' own node controller stops
    evicting in that case too. Envoy's connect retries step over nodes that are really gone.
    Nodes that are malformed, and addresses that are not IPs, are left out.
    """
    nodes = [n for n in nodes if shapes.fits(shapes.Node, n)]
    ready = [n for n in nodes if _ready(n)] or nodes
    return sorted({a for n in ready if (a := _address(n, address_type))})
