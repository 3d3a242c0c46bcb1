"""NodePort twins in one tenant: made when a backend needs one, removed when none does.

A new twin's nodePorts are chosen here, from the free ports of the default range as the
Service cache knows them, so the route and its cluster reach Envoy while the tenant API server
creates the twin (that create was the slowest step of a route to a new backend). When the API
server refuses a choice (taken meanwhile, or a cluster with its own NodePort range) the twin
gets allocated ports and whoever used the chosen ones translates again.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Mapping

from ..kube import ApiError, Kube
from ..objects import SERVICES, Obj, key
from ..records.policy import DEFAULT_NODE_PORTS
from ..sources import twins
from ..sources.base import Ref

log = logging.getLogger(__name__)


class Twins:
    def __init__(
        self,
        tenant: str,
        services: Callable[[], Mapping[str, Obj]],
        node_ports: Callable[[], tuple[int, int]] = lambda: DEFAULT_NODE_PORTS,
    ) -> None:
        self.tenant = tenant
        self._services = services  # the tenant's Service cache
        self._node_ports = node_ports  # the operator's node-port range, as it is now
        #: twins created or updated by us and not seen back through the watch yet
        self.fresh: dict[Ref, Obj] = {}
        #: choose a new twin's nodePorts (off when the tenant's NodePort range is not the default)
        self.choose_node_ports = True
        self._rng = random.Random()

    def get(self, namespace: str, name: str) -> Obj | None:
        """The twin of Service namespace/name, also one being created right now."""
        twin_name = twins.twin_name(name)
        fresh = self.fresh.get((namespace, twin_name))
        if fresh is not None:
            return fresh
        svc = self._services().get(f"{namespace}/{twin_name}")
        return svc if svc is not None and twins.is_twin(svc) else None

    def seen(self, svc: Obj) -> None:
        """A twin came back through the watch: the cache has it now."""
        meta = svc["metadata"]
        self.fresh.pop((meta["namespace"], meta["name"]), None)

    def _remember(self, svc: Obj) -> None:
        """The API server's answer to a write of a twin, until the watch brings it back. The
        watch may have brought it already (an event can come before the answer): then it
        would stay until the twin's next change, one whole Service (managedFields and all)
        per twin, 4.3 MiB at 10,000 routes over 10 tenants."""
        meta = svc["metadata"]
        ref = (meta["namespace"], meta["name"])
        cached = self._services().get(f"{ref[0]}/{ref[1]}")
        if cached is not None and cached["metadata"].get("resourceVersion") == meta.get(
            "resourceVersion"
        ):
            self.fresh.pop(ref, None)
        else:
            self.fresh[ref] = svc

    async def ensure(self, kube: Kube, namespace: str, name: str) -> Obj | None:
        """Bring the twin of a ClusterIP Service up to date. A twin that does not exist yet is
        returned instead, with its nodePorts chosen here, for `create`."""
        svc = self._services().get(f"{namespace}/{name}")
        if svc is None or not twins.needs_twin(svc):
            return None
        desired = twins.twin(svc)
        twin_name = desired["metadata"]["name"]
        existing = self._services().get(f"{namespace}/{twin_name}")
        if existing is not None and not twins.is_twin(existing):
            log.warning(
                "tenant %s: %s/%s exists and is not kubelbd's", self.tenant, namespace, twin_name
            )
            return None
        if existing is not None and twins.same_twin(existing, desired):
            return None
        if existing is None:
            fresh = self.fresh.get((namespace, twin_name))
            if fresh is not None and twins.same_twin(fresh, desired):
                return None  # being created, or created and not seen by the watch yet
            ports = desired["spec"]["ports"]
            chosen: list[int] = []
            if self.choose_node_ports:
                known = [*self._services().values(), *self.fresh.values()]
                chosen = twins.free_node_ports(known, len(ports), self._rng, self._node_ports())
            if chosen:
                for port, node_port in zip(ports, chosen, strict=True):
                    port["nodePort"] = node_port
                self.fresh[(namespace, twin_name)] = desired
                return desired
        else:
            # Keep the nodePorts Envoy sends to (the fields are ours since we chose them).
            have = twins.assigned_node_ports(existing)
            for port in desired["spec"]["ports"]:
                kept = have.get((port["port"], port["protocol"]))
                if kept:
                    port["nodePort"] = kept
        start = time.perf_counter()
        self._remember(await kube.apply(SERVICES, desired))
        log.debug(
            "tenant %s: NodePort %s/%s applied in %.1f ms",
            self.tenant, namespace, twin_name, (time.perf_counter() - start) * 1000,
        )  # fmt: skip
        return None

    async def create(self, kube: Kube, desired: Obj) -> bool:
        """Create a twin whose nodePorts kubelbd chose; falls back to allocated ports when the
        API server refuses them. Returns whether the nodePorts differ from those chosen."""
        meta = desired["metadata"]
        twin_key = (meta["namespace"], meta["name"])
        start = time.perf_counter()
        try:
            try:
                created = await kube.apply(SERVICES, desired)
            except ApiError as e:
                if e.status != 422:
                    raise
                if "range" in str(e):
                    self.choose_node_ports = False  # a cluster with its own NodePort range
                log.info("tenant %s: NodePort %s/%s: %s", self.tenant, *twin_key, e)
                allocated = copy.deepcopy(desired)
                for port in allocated["spec"]["ports"]:
                    port.pop("nodePort", None)
                created = await kube.apply(SERVICES, allocated)
        except BaseException:
            if self.fresh.get(twin_key) is desired:
                del self.fresh[twin_key]
            raise
        self._remember(created)
        log.debug(
            "tenant %s: NodePort %s/%s created in %.1f ms",
            self.tenant, *twin_key, (time.perf_counter() - start) * 1000,
        )  # fmt: skip
        return twins.node_ports(created) != twins.node_ports(desired)

    def all_twins(self) -> set[Ref]:
        """(namespace, original Service) of every twin in the cache."""
        out = set()
        for svc in self._services().values():
            original = twins.original_of(svc)
            if original is not None:
                out.add((svc["metadata"]["namespace"], original))
        return out

    async def collect(
        self,
        kube: Kube,
        candidates: set[Ref],
        in_use: Callable[[Ref], bool],
        dialled: Callable[[Ref], bool],
    ) -> None:
        """Delete the twins of `candidates` (Services that lost a user) that nothing of ours
        uses any more. Each one looked at leaves the set; one whose delete failed stays, with
        those not reached yet, for the next pass, and so does one Envoy still sends to
        (`dialled`: a route's switch away from it may be held until its new backend answers,
        and a cluster lingers for the requests under way; its tenant is woken when it goes)."""
        for ns, name in sorted(candidates):
            if not in_use((ns, name)) and dialled((ns, name)):
                continue
            if not in_use((ns, name)):
                twin = self.get(ns, name)
                if twin is not None:
                    log.info("tenant %s: deleting unused NodePort %s", self.tenant, key(twin))
                    await kube.delete(SERVICES, twin["metadata"]["name"], ns)
                    self.fresh.pop((ns, twin["metadata"]["name"]), None)
            candidates.discard((ns, name))
