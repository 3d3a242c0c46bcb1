"""Nodes: where Envoy reaches a tenant's NodePorts (the Tenant record's node addresses)."""

from __future__ import annotations

from collections.abc import Iterable

from ..objects import Obj


def _ready(node: Obj) -> bool:
    status = node.get("status") or {}
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _address(node: Obj, address_type: str) -> str | None:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == address_type and a.get("address"):
            return str(a["address"])
    return None


def node_addresses(nodes: Iterable[Obj], address_type: str) -> list[str]:
    """Addresses of Ready nodes, of the configured type, sorted: what Envoy dials.

    When no node is Ready, every node's address: a whole cluster turning NotReady at once is
    a disruption of its control plane (its API server was away, the node controller has not
    heard the kubelets yet), not of its nodes, and Kubernetes' own node controller stops
    evicting in that case too. Envoy's connect retries step over nodes that are really gone.
    """
    nodes = list(nodes)
    ready = [n for n in nodes if _ready(n)] or nodes
    return sorted({a for n in ready if (a := _address(n, address_type))})
