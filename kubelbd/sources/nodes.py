"""Nodes: where Envoy reaches a tenant's NodePorts (the Tenant record's node addresses).

A node address is tenant data like any other: the tenant's admin writes Node objects. An
address Envoy dials must be an IP the tenant's policy allows (records/policy.py): never
kubelbd's own host or the management cluster, never outside the tenant's nodeCIDRs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..objects import Obj
from ..records.policy import Policy, canonical


@dataclass(frozen=True)
class NodeAddresses:
    addresses: list[str]
    #: (node name, why its address is not used), sorted by node name
    refused: list[tuple[str, str]]
    #: node name -> its address, for those used
    by_node: dict[str, str]
    #: the allowed addresses of every node, Ready or not: what the tenant claims (a node
    #: rebooting keeps its claim, or another tenant listing the address would take it)
    claimed: list[str]


def _ready(node: Obj) -> bool:
    status = node.get("status") or {}
    conditions = status.get("conditions") if isinstance(status, dict) else None
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in (conditions if isinstance(conditions, list) else [])
    )


def _address(node: Obj, address_type: str) -> str | None:
    status = node.get("status") or {}
    addresses = status.get("addresses") if isinstance(status, dict) else None
    for a in addresses if isinstance(addresses, list) else []:
        if isinstance(a, dict) and a.get("type") == address_type and a.get("address"):
            return str(a["address"])
    return None


def _name(node: Obj) -> str:
    meta = node.get("metadata") or {}
    return str(meta.get("name", ""))[:253] if isinstance(meta, dict) else ""


def node_addresses(nodes: Iterable[Obj], address_type: str, policy: Policy) -> NodeAddresses:
    """Addresses of Ready nodes, of the configured type, that the policy allows; sorted.

    When no node is Ready, every node's address: a whole cluster turning NotReady at once is
    a disruption of its control plane (its API server was away, the node controller has not
    heard the kubelets yet), not of its nodes, and Kubernetes' own node controller stops
    evicting in that case too. Envoy's connect retries step over nodes that are really gone.
    """
    nodes = list(nodes)
    ready = {id(n) for n in nodes if _ready(n)} or {id(n) for n in nodes}
    accepted: dict[str, str] = {}
    claimed: set[str] = set()
    refused = []
    for node in nodes:
        address = _address(node, address_type)
        if address is None:
            continue
        problem = policy.node_address_problem(address)
        if problem is not None:
            refused.append((_name(node), problem))  # reported whether Ready or not
        else:
            # One address, one spelling: 2001:DB8:0::5 is 2001:db8::5 (and ::ffff:a.b.c.d is
            # a.b.c.d), or two tenants could share it under two names.
            address = canonical(address)
            claimed.add(address)
            if id(node) in ready:
                accepted[_name(node)] = address
    return NodeAddresses(sorted(set(accepted.values())), sorted(refused), accepted, sorted(claimed))
