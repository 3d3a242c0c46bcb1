"""The objects kubelbd keeps in a tenant cluster for a source kind, and their statuses.

A kind may need objects of kubelbd's own in the tenant (an IngressClass, a GatewayClass:
`Source.tenant_objects`), and report status on objects that are not records' sources (the
tenant's own GatewayClasses that name kubelbd: `Source.reported_objects`). Both are applied
on every resync of the kind, and written only where the tenant's copy differs. A kind the
tenant API server does not serve (a CRD not installed) is skipped, and resynced once its
informer finds it served: the tenant installing the CRD later is an ordinary event, not an
error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from ..kube import ApiError, Kube
from ..kube.client import timestamp
from ..objects import Obj, Resource
from ..sources.base import Source
from .caches import TenantCaches
from .statuses import STATUS_MANAGER, tenant_object_status

log = logging.getLogger(__name__)


class KeptObjects:
    def __init__(
        self, tenant: str, sources: Mapping[str, Source], resync: Callable[[str], None]
    ) -> None:
        self.tenant = tenant
        self._sources = sources
        self._resync = resync  # asks for a resync of a source kind
        #: kinds whose kept objects were skipped: their kind is not served
        self.unserved: set[str] = set()

    async def apply(self, kube: Kube, caches: TenantCaches, source: Source) -> None:
        """The kind's kept objects, and the statuses it reports on objects of the tenant."""
        for resource, obj in source.tenant_objects():
            await self._apply_object(kube, caches, source, resource, obj)
        for resource, obj in source.reported_objects(caches):
            meta = obj["metadata"]
            current = caches.get(resource, meta.get("namespace", ""), meta["name"])
            if current is None:
                continue
            try:
                # Against what the tenant object holds: unchanged, nothing is written.
                await self._apply_status(kube, resource, obj, current)
            except ApiError as e:
                # Gone meanwhile: its deletion resyncs the kind again. Refused: that object
                # alone (a tenant may change its kind's schema), tried again on the next
                # resync of the kind; the others are written all the same.
                if not e.not_found:
                    where = f"{meta.get('namespace', '')}/{meta['name']}"
                    log.warning("tenant %s: status of %s %s not written: %s",
                                self.tenant, obj.get("kind"), where, e)  # fmt: skip

    def served_again(self, caches: TenantCaches, plural: str) -> None:
        """An informer listed its kind: sources whose kept objects were skipped while their
        kind was not served are resynced once every kind they keep is."""
        for kind in sorted(self.unserved):
            resources = {r for r, _ in self._sources[kind].tenant_objects()}
            if plural in {r.plural for r in resources} and all(
                caches.informers[r].served for r in resources if r in caches.informers
            ):
                self.unserved.discard(kind)
                self._resync(kind)

    async def _apply_object(
        self, kube: Kube, caches: TenantCaches, source: Source, resource: Resource, obj: Obj
    ) -> None:
        """One kept object, and its status if it has one."""
        informer = caches.informers.get(resource)
        if informer is not None and not informer.served:
            self.unserved.add(source.kind)
            return
        try:
            applied = await kube.apply(resource, {k: v for k, v in obj.items() if k != "status"})
        except ApiError as e:
            if not e.not_found:
                raise
            self.unserved.add(source.kind)
            return
        await self._apply_status(kube, resource, obj, applied)

    @staticmethod
    async def _apply_status(kube: Kube, resource: Resource, obj: Obj, current: Obj) -> None:
        """`obj`'s status, as wanted, to the status subresource of the object `current`
        (the object as the API server last had it), unless it holds it already."""
        status = tenant_object_status(obj.get("status"), current, timestamp())
        if status is not None:
            meta = {"name": obj["metadata"]["name"]}
            if obj["metadata"].get("namespace"):
                meta["namespace"] = obj["metadata"]["namespace"]
            body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta,
                    "status": status}  # fmt: skip
            await kube.apply(resource, body, subresource="status", field_manager=STATUS_MANAGER)
