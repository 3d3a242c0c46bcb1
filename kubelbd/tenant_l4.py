"""The tenant side of Layer 4: one LoadBalancer record per tenant Service of ours.

Part of a tenant's task (tenant.py owns the informers and the loop); kept apart because
Services of type LoadBalancer have nothing in common with Ingresses beyond that loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import l4, records
from .kube import SERVICES, ApiError, Obj, key

if TYPE_CHECKING:
    from .tenant import TenantSync

log = logging.getLogger(__name__)


class ServiceLoadBalancers:
    def __init__(self, tenant: TenantSync) -> None:
        self.t = tenant
        self.records: dict[str, Obj] = {}  # record name -> spec as applied
        self.dirty: set[str] = set()  # Service keys
        self.failed: dict[str, str] = {}

    def on_service(self, obj: Obj) -> bool:
        """Whether a Service event concerns us (it is, or was, one of our load balancers)."""
        meta = obj["metadata"]
        name = l4.lb_name(meta["namespace"], meta["name"])
        if l4.is_ours(obj) or name in self.records:
            self.dirty.add(key(obj))
            return True
        return False

    async def load(self) -> None:
        items, _ = await self.t.mgmt.list(records.LOADBALANCERS, self.t.namespace)
        self.records = {o["metadata"]["name"]: o.get("spec") or {} for o in items}

    def resync(self) -> None:
        """Everything, after a (re)connect: Services of ours, and records without a Service."""
        services = self.t.services.cache
        self.dirty |= {k for k, svc in services.items() if l4.is_ours(svc)}
        for spec in self.records.values():
            source = spec.get("source") or {}
            self.dirty.add(f"{source.get('namespace')}/{source.get('name')}")

    async def reconcile(self) -> None:
        batch, self.dirty = self.dirty, set()
        for k in sorted(batch):
            try:
                await self._reconcile_one(k)
                self.failed.pop(k, None)
            except (ApiError, ConnectionError) as e:
                log.warning("tenant %s: service %s: %s", self.t.name, k, e)
                self.failed[k] = str(e)

    async def _reconcile_one(self, k: str) -> None:
        ns, _, svc_name = k.partition("/")
        name = l4.lb_name(ns, svc_name)
        svc = self.t.services.cache.get(k)
        if svc is None or not l4.is_ours(svc):
            if name in self.records:
                self.t.sink.delete_lb(self.t.name, name)
                await self.t.mgmt.delete(records.LOADBALANCERS, name, self.t.namespace)
                self.records.pop(name, None)
                self.t.forget_accepted("LoadBalancer", name)
                if svc is not None:
                    await self.set_address(ns, svc_name, [])  # it changed type or class
            return
        result = l4.translate(svc)
        if self.records.get(name) != result.spec:
            written = await self.t.mgmt.apply(
                records.LOADBALANCERS,
                records.record_object("LoadBalancer", self.t.name, name, result.spec),
            )
            self.records[name] = result.spec
            self.t.sink.upsert_lb(written)
        await self.t.report_accepted(
            records.LOADBALANCERS, "LoadBalancer", "Service", svc, name, result.problems
        )

    def service(self, namespace: str, name: str) -> Obj | None:
        return self.t.services.cache.get(f"{namespace}/{name}")

    async def set_address(self, namespace: str, name: str, ingress: list[dict[str, Any]]) -> None:
        """The tenant Service's status.loadBalancer.ingress, written only when it differs."""
        svc = self.service(namespace, name)
        if svc is None or self.t.kube is None:
            return
        have = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        # The API server defaults ipMode: compare what we set.
        if [{k: v for k, v in i.items() if k in ("ip", "hostname")} for i in have] == ingress:
            return
        await self.t.kube.patch(
            SERVICES,
            name,
            {"status": {"loadBalancer": {"ingress": ingress}}},
            namespace,
            subresource="status",
        )
