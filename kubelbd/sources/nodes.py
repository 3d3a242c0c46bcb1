"""Nodes: where Envoy reaches a tenant's NodePorts (the Tenant record's node addresses)."""

from __future__ import annotations

from collections.abc import Iterable

from ..objects import Obj


def node_addresses(nodes: Iterable[Obj], address_type: str) -> list[str]:
    """Addresses of Ready nodes, of the configured type, sorted: what Envoy dials."""
    out = set()
    for node in nodes:
        status = node.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if not ready:
            continue
        for a in status.get("addresses") or []:
            if a.get("type") == address_type and a.get("address"):
                out.add(a["address"])
                break
    return sorted(out)
