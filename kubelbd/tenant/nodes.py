"""A tenant's node addresses: those the data plane sends to, and those it refuses, and why.

From the tenant's Nodes (sources.nodes: the address type, Ready, the policy's networks),
less the addresses another tenant listed first: each address stays with one tenant
(ir/nodes.py), so a tenant cannot draw another's traffic by listing its nodes. The Tenant
record lists both (TenantHealth.set_addresses); each refused Node gets a Warning Event, once
per reason. Worked out again only when the Nodes, the policy or the taken addresses change.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..kube.events import Recorder
from ..objects import NODES
from ..records.policy import Policy
from ..sources.nodes import node_addresses
from .caches import TenantCaches
from .health import TenantHealth

log = logging.getLogger(__name__)


class TenantNodes:
    def __init__(self, tenant: str, health: TenantHealth, address_type: str) -> None:
        self.tenant = tenant
        self._health = health
        self._address_type = address_type
        #: worked out again on the next pass (the Nodes or the policy changed)
        self.dirty = True
        #: node address -> the tenant that listed it first (and keeps it)
        self._taken: dict[str, str] = {}
        self._refused: set[tuple[str, str]] = set()  # reported with an Event already

    def taken(self, taken: dict[str, str]) -> bool:
        """Addresses of this tenant's nodes that another tenant listed first; whether that
        changed anything (the addresses are then worked out again)."""
        if taken == self._taken:
            return False
        self._taken = taken
        self.dirty = True
        return True

    async def update(self, caches: TenantCaches, policy: Policy, recorder: Recorder) -> None:
        """The Tenant record's addresses and the refused Nodes' Events, if anything changed
        since the last time (and again next pass if writing them failed)."""
        if not self.dirty:
            return
        self.dirty = False
        try:
            found = node_addresses(caches.all(NODES), self._address_type, policy)
            taken = [
                (node, f"{address} is tenant {self._taken[address]}'s, who listed it first")
                for node, address in found.by_node.items()
                if address in self._taken
            ]
            found = replace(found, refused=sorted([*found.refused, *taken]))
            await self._report_refused(found.refused, caches, recorder)
            await self._health.set_addresses(found, set(self._taken))
        except BaseException:
            self.dirty = True
            raise

    async def _report_refused(
        self, refused: list[tuple[str, str]], caches: TenantCaches, recorder: Recorder
    ) -> None:
        """A Warning Event on each Node whose address is refused, once per reason; the
        Tenant record's NodesAccepted condition lists them all."""
        now = set(refused)
        for name, why in sorted(now - self._refused):
            log.warning("tenant %s: node %s: address not used: %s", self.tenant, name, why)
            node = caches.get(NODES, "", name)
            if node is not None and isinstance(node.get("metadata", {}).get("name"), str):
                await recorder.emit(
                    {"apiVersion": "v1", "kind": "Node", **node},
                    "Warning",
                    "AddressRefused",
                    f"kubelbd does not send traffic to this node: {why}",
                )
        self._refused = now
