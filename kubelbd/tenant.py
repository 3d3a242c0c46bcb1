"""Everything kubelbd does for one tenant cluster, for as long as its registration Secret exists.

Watches the tenant's Ingresses, Services, Nodes and IngressClasses; makes the NodePort twins
ClusterIP backends need; keeps one Route record per Ingress of ours and the Tenant record (node
addresses, health) in the management cluster; reports problems as conditions and Events; and,
when the data plane says a route is served, writes the address into the Ingress status.

One tenant's failures stay here: a bad kubeconfig, an unreachable or unauthorized API server
become conditions on its Tenant record and log lines, never exceptions that leave this task.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc

from . import conditions, ingress, nodeports, records
from .events import Recorder
from .informer import Backoff, Informer
from .kube import (
    INGRESS_CLASSES,
    INGRESSES,
    NAMESPACES,
    NODES,
    SECRETS,
    SERVICES,
    ApiError,
    Kube,
    KubeconfigError,
    Obj,
    Resource,
    key,
    parse_kubeconfig,
)
from .tenant_l4 import ServiceLoadBalancers
from .tenant_tls import SecretCopies

log = logging.getLogger(__name__)

STATUS_MANAGER = "kubelbd-tenant"
ROUTE_WRITE_CONCURRENCY = 8
ACCEPTED_DELAY = 0.05
ACCEPTED_RETRY = 1.0
STATUS_MESSAGE_INTERVAL = 10.0
RECORD_DELAY = 0.05


@dataclass(frozen=True)
class TenantSettings:
    node_address_type: str = "InternalIP"
    public_address: str = ""


class RecordSink(Protocol):
    """Where fresh records go as soon as they are written (the data plane, in-process)."""

    def provisional(self, tenant: str, name: str, spec: Obj) -> None: ...
    def upsert(self, obj: Obj) -> None: ...
    def delete(self, tenant: str, name: str, uid: str | None = None) -> None: ...
    def upsert_lb(self, obj: Obj) -> None: ...
    def delete_lb(self, tenant: str, name: str, uid: str | None = None) -> None: ...
    def tenant(self, obj: Obj) -> None: ...


def node_addresses(nodes: list[Obj], address_type: str) -> list[str]:
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


class RetryLater(Exception):
    """Part of a reconcile failed; what failed is retried after a backoff (_retry_failed)."""


def classify(error: BaseException) -> tuple[str, str]:
    """(reason, message) for a condition, from whatever went wrong talking to the tenant."""
    if isinstance(error, KubeconfigError):
        return "InvalidKubeconfig", str(error)
    if isinstance(error, RetryLater):
        return "IngressErrors", str(error)
    if isinstance(error, ApiError):
        if error.status in (401, 403):
            return "Unauthorized", f"the tenant API server refused kubelbd: {error}"
        return "APIError", str(error)
    if isinstance(error, (ConnectionError, OSError, TimeoutError)):
        return "Unreachable", str(error)
    return "Error", repr(error)


class TenantSync:
    def __init__(
        self,
        name: str,
        kubeconfig: bytes,
        mgmt: Kube,
        sink: RecordSink,
        settings: TenantSettings,
    ) -> None:
        self.name = name
        self.namespace = records.namespace_of(name)
        self._kubeconfig = kubeconfig
        self.mgmt = mgmt
        self.sink = sink
        self.settings = settings
        self.kube: Kube | None = None
        self.recorder: Recorder | None = None
        # Health, as shown on the Tenant record.
        self._informer_errors: dict[str, str] = {}
        self._connected: tuple[bool | None, str, str] = (None, "Connecting", "connecting")
        self._synced: tuple[bool | None, str, str] = (None, "Pending", "not synced yet")
        self._last_error = ""
        self._written_status: Obj | None = None
        self._status_written_at = 0.0
        self._status_wake = anyio.Event()
        # What needs reconciling.
        self._wake = anyio.Event()
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._nodes_dirty = True
        self._by_service: dict[tuple[str, str], set[str]] = {}
        self._refs: dict[str, set[tuple[str, str]]] = {}
        # What is written.
        self._records: dict[str, Obj] = {}  # route name -> spec as applied
        self._accepted: dict[str, tuple[Any, ...]] = {}  # route name -> (generation, problems)
        self._fresh_twins: dict[tuple[str, str], Obj] = {}
        #: choose a new twin's nodePorts (off when the tenant's NodePort range is not the default)
        self._choose_node_ports = True
        self._rng = random.Random()
        self._addresses: list[str] | None = None
        self._failed: dict[str, str] = {}  # ingress key -> why its last reconcile failed
        self._retry_wake = anyio.Event()  # set: retry what failed, after _retry_backoff
        self._retry_backoff = Backoff(maximum=30)
        self._retry_sleep = anyio.CancelScope()
        self._accepted_queue: dict[str, tuple[Obj, list[ingress.Problem]]] = {}
        #: routes handed to the data plane whose record write has not succeeded (yet)
        self._unwritten: set[str] = set()
        self._accepted_wake = anyio.Event()
        #: set once this tenant has reconciled, or is known to be unreachable: the data plane
        #: waits for every tenant to settle before its first publish after a restart
        self.settled = anyio.Event()
        self.lbs = ServiceLoadBalancers(self)
        self.tls = SecretCopies(self)
        self._seen_ingress: dict[str, tuple[Any, ...]] = {}
        self._twin_candidates: set[tuple[str, str]] = set()  # services that may lose their twin

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        log.info("tenant %s: starting", self.name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._status_writer)
            tg.start_soon(self._accepted_writer)
            await self._ensure_namespace()
            try:
                self.kube = await Kube.from_kubeconfig(
                    parse_kubeconfig(self._kubeconfig), self.name
                )
            except KubeconfigError as e:
                self._fail_connect(e)
                log.error("tenant %s: %s", self.name, e)
                await anyio.sleep_forever()
            assert self.kube is not None
            self.recorder = Recorder(self.kube)
            try:
                await self._run_informers(tg)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.kube.aclose()

    async def _ensure_namespace(self) -> None:
        backoff = Backoff(maximum=10)
        while True:
            try:
                await self.mgmt.apply(NAMESPACES, records.namespace_object(self.name))
                return
            except (ApiError, ConnectionError) as e:
                log.warning(
                    "tenant %s: cannot create namespace %s: %s", self.name, self.namespace, e
                )
                await anyio.sleep(backoff.next())

    async def _run_informers(self, tg: anyio.abc.TaskGroup) -> None:
        assert self.kube is not None
        self.ingresses = Informer(
            self.kube, INGRESSES, self._on_ingress, on_error=self._informer_health("ingresses")
        )
        self.services = Informer(
            self.kube, SERVICES, self._on_service, on_error=self._informer_health("services")
        )
        self.nodes = Informer(
            self.kube, NODES, self._on_node, on_error=self._informer_health("nodes")
        )
        self.classes = Informer(
            self.kube, INGRESS_CLASSES, self._on_class, on_error=self._informer_health("classes")
        )
        # TLS Secrets only: kubelbd never lists or watches any other kind of Secret.
        self.secrets = Informer(
            self.kube,
            SECRETS,
            self.tls.on_secret,
            field_selector="type=kubernetes.io/tls",
            on_error=self._informer_health("secrets"),
        )
        for inf in self._informers():
            tg.start_soon(inf.run)
        tg.start_soon(self._retry_failed)
        await self._reconcile_loop()

    def _informer_health(self, which: str) -> Callable[[Exception | None], None]:
        def report(error: Exception | None) -> None:
            if error is None:
                self._informer_errors.pop(which, None)
            else:
                reason, message = classify(error)
                self._informer_errors[which] = f"{reason}: {message}"
                if which == "ingresses":
                    log.error("tenant %s: %s", self.name, message)
            if self._informer_errors:
                self.settled.set()  # nothing better to wait for: serve what the records hold
                reason = next(iter(self._informer_errors.values())).split(":", 1)[0]
                msg = "; ".join(f"{k}: {v}" for k, v in sorted(self._informer_errors.items()))
                self._connected = (False, reason, msg)
                self._last_error = msg
            else:
                self._connected = (True, "Connected", "watching the tenant API server")
            self._status_wake.set()

        return report

    def _fail_connect(self, error: BaseException) -> None:
        self.settled.set()
        reason, message = classify(error)
        self._connected = (False, reason, message)
        self._last_error = message
        self._status_wake.set()

    # ---- change tracking ---------------------------------------------------------------------

    def _wake_up(self) -> None:
        self._wake.set()

    def _on_ingress(self, kind: str, obj: Obj) -> None:
        k = key(obj)
        meta = obj["metadata"]
        # Our own status writes come back as events: spec and annotations are what matter
        # (the legacy class annotation does not bump the generation).
        fingerprint = (meta.get("uid"), meta.get("generation"), str(meta.get("annotations")))
        if kind != "DELETED" and self._seen_ingress.get(k) == fingerprint:
            return
        if kind == "DELETED":
            self._seen_ingress.pop(k, None)
        else:
            self._seen_ingress[k] = fingerprint
        self._dirty.add(k)
        log.debug("tenant %s: ingress %s %s", self.name, k, kind.lower())
        old = self._refs.pop(k, set())
        for ref in old:
            self._by_service.get(ref, set()).discard(k)
        self._twin_candidates |= old
        ns = meta["namespace"]
        refs = {(ns, s) for s in ingress.referenced_services(obj)} if kind != "DELETED" else set()
        if refs:
            self._refs[k] = refs
        for ref in refs:
            self._by_service.setdefault(ref, set()).add(k)
        self._wake_up()

    def _on_service(self, _kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        if nodeports.is_twin(obj):
            name = (meta.get("labels") or {}).get(nodeports.TWIN_OF, name)
            self._fresh_twins.pop((meta["namespace"], meta["name"]), None)
        users = self._by_service.get((meta["namespace"], name), set())
        if users:
            self._dirty |= users
            self._wake_up()
        if self.lbs.on_service(obj):
            self._wake_up()

    def _on_node(self, _kind: str, _obj: Obj) -> None:
        self._nodes_dirty = True
        self._wake_up()

    def _on_class(self, _kind: str, _obj: Obj) -> None:
        self._all_dirty = True
        self._wake_up()

    # ---- reconcile ---------------------------------------------------------------------------

    def _informers(self) -> tuple[Informer, ...]:
        return (self.ingresses, self.services, self.nodes, self.classes, self.secrets)

    def wake(self) -> None:
        self._wake_up()

    async def _reconcile_loop(self) -> None:
        for inf in self._informers():
            await inf.synced.wait()
        await self._load_records()
        backoff = Backoff(maximum=30)
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._reconcile()
            except (ApiError, ConnectionError, RetryLater) as e:
                reason, message = classify(e)
                self._synced = (False, reason, message)
                if message != self._last_error:  # not again on every pass while it fails
                    log.warning("tenant %s: reconcile failed: %s", self.name, message)
                self._last_error = message
                self._status_wake.set()
                if isinstance(e, RetryLater):
                    # The pass went through; what failed is retried on its own schedule.
                    self._retry_wake.set()
                    self.settled.set()
                    continue
                self._wake.set()
                await anyio.sleep(backoff.next())
                continue
            backoff.reset()
            self._retry_backoff.reset()
            self._retry_sleep.cancel()
            self._synced = (True, "Synced", f"{len(self._records)} routes in sync")
            self._status_wake.set()
            self.settled.set()

    async def _retry_failed(self) -> None:
        """Objects whose reconcile failed are tried again after a backoff, while every other
        change goes on at once: a reconcile loop that slept out the backoff itself held all of
        a tenant's changes behind one object the API server refused (for up to 30 s)."""
        while True:
            await self._retry_wake.wait()
            self._retry_wake = anyio.Event()
            # Cut short when everything succeeded meanwhile: a new failure then starts over
            # at the shortest backoff rather than waiting out an old, long one.
            with anyio.CancelScope() as self._retry_sleep:
                await anyio.sleep(self._retry_backoff.next())
            if self._failed or self.lbs.failed:
                self._dirty |= set(self._failed)
                self.lbs.dirty |= set(self.lbs.failed)
                self._wake_up()

    async def _load_records(self) -> None:
        backoff = Backoff(maximum=10)
        while True:
            try:
                items, _ = await self.mgmt.list(records.ROUTES, self.namespace)
                await self.lbs.load()
                await self.tls.load()
                break
            except (ApiError, ConnectionError) as e:
                log.warning("tenant %s: cannot list routes: %s", self.name, e)
                await anyio.sleep(backoff.next())
        self._records = {o["metadata"]["name"]: o.get("spec") or {} for o in items}
        self._all_dirty = True
        self._wake.set()

    async def _reconcile(self) -> None:
        assert self.kube is not None
        if self._all_dirty:
            self._all_dirty = False
            try:
                await self._ensure_ingress_class()
            except BaseException:
                self._all_dirty = True  # the whole resync is retried, not skipped
                raise
            self._dirty |= set(self.ingresses.cache)
            self._twin_candidates |= {
                (svc["metadata"]["namespace"], svc["metadata"]["labels"][nodeports.TWIN_OF])
                for svc in self.services.cache.values()
                if nodeports.is_twin(svc)
            }
            # Records whose Ingress is gone (deleted while we were away).
            live = {
                ingress.route_name(o["metadata"]["namespace"], o["metadata"]["name"])
                for o in self.ingresses.cache.values()
            }
            for name in [n for n in self._records if n not in live]:
                await self._delete_record(name)
            self.lbs.resync()
        if self._nodes_dirty:
            self._nodes_dirty = False
            try:
                await self._sync_nodes()
            except BaseException:
                self._nodes_dirty = True
                raise
        batch, self._dirty = self._dirty, set()
        async with anyio.create_task_group() as tg:
            limit = anyio.Semaphore(ROUTE_WRITE_CONCURRENCY)
            for k in sorted(batch):
                tg.start_soon(self._reconcile_one, k, limit)
        await self._collect_twins()
        await self.tls.reconcile()
        await self.lbs.reconcile()
        failed = {**self._failed, **self.lbs.failed}
        if failed:
            first = next(iter(sorted(failed.items())))
            raise RetryLater(f"{len(failed)} objects failed, e.g. {first[0]}: {first[1]}")

    async def _ensure_ingress_class(self) -> None:
        assert self.kube is not None
        await self.kube.apply(
            INGRESS_CLASSES,
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "IngressClass",
                "metadata": {
                    "name": ingress.INGRESS_CLASS,
                    "labels": {nodeports.MANAGED_BY: nodeports.MANAGER},
                },
                "spec": {"controller": ingress.CONTROLLER},
            },
        )

    async def _sync_nodes(self) -> None:
        addresses = node_addresses(list(self.nodes.cache.values()), self.settings.node_address_type)
        if addresses == self._addresses:
            return
        obj = await self.mgmt.apply(
            records.TENANTS,
            records.tenant_object(self.name, addresses, self.settings.node_address_type),
        )
        self._addresses = addresses
        self.sink.tenant(obj)
        log.info("tenant %s: node addresses %s", self.name, ", ".join(addresses) or "(none)")

    async def _reconcile_one(self, k: str, limit: anyio.Semaphore) -> None:
        """One Ingress; its failure is retried later and never blocks the others. `limit`
        bounds the API calls in flight, not the Ingresses being handled."""
        try:
            await self._reconcile_ingress(k, limit)
        except (ApiError, ConnectionError) as e:
            message = classify(e)[1]
            log.warning("tenant %s: ingress %s: %s", self.name, k, message)
            self._failed[k] = message
            return
        self._failed.pop(k, None)

    async def _reconcile_ingress(self, k: str, limit: anyio.Semaphore) -> None:
        ns, _, name = k.partition("/")
        route = ingress.route_name(ns, name)
        obj = self.ingresses.cache.get(k)
        if obj is None or not ingress.is_ours(obj, self.classes.cache.values()):
            self.tls.on_ingress(k, None)
            if route in self._records or route in self._unwritten:
                async with limit:
                    await self._delete_record(route)
            return
        creating = []
        async with limit:
            for svc_name in sorted(ingress.referenced_services(obj)):
                new = await self._ensure_twin(ns, svc_name)
                if new is not None:
                    creating.append(new)
        self.tls.on_ingress(k, obj)
        result = ingress.translate(obj, self._service, self._twin)
        if self._records.get(route) == result.spec and not creating:
            self._queue_accepted(route, obj, result.problems)
            return
        # The data plane renders from the Ingress at once; the record (the durable copy) is
        # written a moment later. A failed write is retried; a restart waits for tenants to
        # resync before its first publish, so a record lost in a crash is rewritten before
        # it is missed.
        self.sink.provisional(self.name, route, result.spec)
        self._unwritten.add(route)  # served already: must be withdrawn even if never written
        sent, served_at = result.spec, anyio.current_time()
        if creating:
            # The new twins' nodePorts are chosen already: Envoy gets the route and its
            # clusters while the tenant API server creates them, not after.
            moved = False
            async with limit:
                for desired in creating:
                    moved |= await self._create_twin(desired)
            if moved:
                result = ingress.translate(obj, self._service, self._twin)
                if result.spec != sent:
                    self.sink.provisional(self.name, route, result.spec)
        if self._records.get(route) != result.spec:
            # The record write costs the management API server and etcd as much CPU as Envoy
            # needs to apply the change: on a busy machine, writing it at once delays the
            # traffic it records. It waits until Envoy has most likely applied, unless more
            # changes wait for this batch to finish.
            with anyio.move_on_after(served_at + RECORD_DELAY - anyio.current_time()):
                await self._wake.wait()
            async with limit:
                await self._write_record(route, result.spec)
        else:
            self._unwritten.discard(route)  # only its twins were missing
        self._queue_accepted(route, obj, result.problems)

    async def _write_record(self, route: str, spec: Obj) -> None:
        start = time.perf_counter()
        written = await self.mgmt.apply(
            records.ROUTES, records.record_object("Route", self.name, route, spec)
        )
        self._unwritten.discard(route)
        self._records[route] = spec
        self.sink.upsert(written)
        log.debug(
            "tenant %s: route %s written in %.1f ms",
            self.name, route, (time.perf_counter() - start) * 1000,
        )  # fmt: skip

    def _queue_accepted(self, route: str, obj: Obj, problems: list[ingress.Problem]) -> None:
        # The Events wait a moment (see _accepted_writer) so Envoy gets the CPU first.
        self._accepted_queue[route] = (obj, problems)
        self._accepted_wake.set()

    def _service(self, ns: str, name: str) -> Obj | None:
        return self.services.cache.get(f"{ns}/{name}")

    def _twin(self, ns: str, name: str) -> Obj | None:
        twin_name = nodeports.twin_name(name)
        fresh = self._fresh_twins.get((ns, twin_name))
        if fresh is not None:
            return fresh
        svc = self.services.cache.get(f"{ns}/{twin_name}")
        return svc if svc is not None and nodeports.is_twin(svc) else None

    async def _ensure_twin(self, ns: str, name: str) -> Obj | None:
        """Bring the NodePort twin of a ClusterIP Service up to date. A twin that does not exist
        yet is returned instead, with its nodePorts chosen here (see _create_twin)."""
        assert self.kube is not None
        svc = self._service(ns, name)
        if svc is None or not ingress.needs_nodeport(svc):
            return None
        desired = nodeports.twin(svc)
        twin_name = desired["metadata"]["name"]
        existing = self.services.cache.get(f"{ns}/{twin_name}")
        if existing is not None and not nodeports.is_twin(existing):
            log.warning("tenant %s: %s/%s exists and is not kubelbd's", self.name, ns, twin_name)
            return None
        if existing is not None and _same_twin(existing, desired):
            return None
        if existing is None:
            fresh = self._fresh_twins.get((ns, twin_name))
            if fresh is not None and _same_twin(fresh, desired):
                return None  # being created, or created and not seen by the watch yet
            ports = desired["spec"]["ports"]
            chosen = []
            if self._choose_node_ports:
                known = [*self.services.cache.values(), *self._fresh_twins.values()]
                chosen = nodeports.free_node_ports(known, len(ports), self._rng)
            if chosen:
                for port, node_port in zip(ports, chosen, strict=True):
                    port["nodePort"] = node_port
                self._fresh_twins[(ns, twin_name)] = desired
                return desired
        else:
            # Keep the nodePorts Envoy sends to (the fields are ours since we chose them).
            have = {
                (p["port"], p.get("protocol", "TCP")): p.get("nodePort")
                for p in existing["spec"].get("ports") or []
            }
            for port in desired["spec"]["ports"]:
                kept = have.get((port["port"], port["protocol"]))
                if kept:
                    port["nodePort"] = kept
        start = time.perf_counter()
        self._fresh_twins[(ns, twin_name)] = await self.kube.apply(SERVICES, desired)
        log.debug(
            "tenant %s: NodePort %s/%s applied in %.1f ms",
            self.name, ns, twin_name, (time.perf_counter() - start) * 1000,
        )  # fmt: skip
        return None

    async def _create_twin(self, desired: Obj) -> bool:
        """Create a twin whose nodePorts kubelbd chose (a create, with the API server's
        nodePort allocation, is the slowest step of a route to a new backend: it now runs
        while Envoy loads the route). Falls back to allocated ports when the API server
        refuses the chosen ones; returns whether the nodePorts differ from those chosen."""
        assert self.kube is not None
        meta = desired["metadata"]
        twin_key = (meta["namespace"], meta["name"])
        start = time.perf_counter()
        try:
            try:
                created = await self.kube.apply(SERVICES, desired)
            except ApiError as e:
                if e.status != 422:
                    raise
                if "range" in str(e):
                    self._choose_node_ports = False  # a cluster with its own NodePort range
                log.info("tenant %s: NodePort %s/%s: %s", self.name, *twin_key, e)
                allocated = copy.deepcopy(desired)
                for port in allocated["spec"]["ports"]:
                    port.pop("nodePort", None)
                created = await self.kube.apply(SERVICES, allocated)
        except BaseException:
            if self._fresh_twins.get(twin_key) is desired:
                del self._fresh_twins[twin_key]
            raise
        self._fresh_twins[twin_key] = created
        log.debug(
            "tenant %s: NodePort %s/%s created in %.1f ms",
            self.name, *twin_key, (time.perf_counter() - start) * 1000,
        )  # fmt: skip

        def node_ports(svc: Obj) -> list[Any]:
            return [p.get("nodePort") for p in svc["spec"]["ports"]]

        if node_ports(created) == node_ports(desired):
            return False
        # Other Ingresses may have been translated with the chosen ports meanwhile.
        self._dirty |= self._by_service.get(
            (meta["namespace"], meta["labels"][nodeports.TWIN_OF]), set()
        )
        self._wake_up()
        return True

    async def _collect_twins(self) -> None:
        """Delete NodePort twins that no Ingress of ours needs any more.

        Only Services that an Ingress stopped referencing since the last pass are looked at
        (plus every twin on a full resync), so this costs what changed, not what exists.
        """
        assert self.kube is not None
        candidates, self._twin_candidates = self._twin_candidates, set()
        classes = list(self.classes.cache.values())
        for ns, name in sorted(candidates):
            users = self._by_service.get((ns, name), set())
            if any(
                (o := self.ingresses.cache.get(u)) is not None and ingress.is_ours(o, classes)
                for u in users
            ):
                continue
            if not users:
                self._by_service.pop((ns, name), None)
            twin = self._twin(ns, name)
            if twin is not None:
                log.info("tenant %s: deleting unused NodePort %s", self.name, key(twin))
                try:
                    await self.kube.delete(SERVICES, twin["metadata"]["name"], ns)
                except BaseException:
                    self._twin_candidates.add((ns, name))  # looked at again next pass
                    raise
                self._fresh_twins.pop((ns, twin["metadata"]["name"]), None)

    async def _delete_record(self, route: str) -> None:
        self.sink.delete(self.name, route)
        await self.mgmt.delete(records.ROUTES, route, self.namespace)
        self._unwritten.discard(route)
        self._records.pop(route, None)
        self.forget_accepted("Route", route)
        self._accepted_queue.pop(route, None)

    async def _accepted_writer(self) -> None:
        """Accepted conditions and Events, written shortly after the records they describe:
        people read them, clients do not, so they yield the CPU to Envoy's reconfiguration."""
        delay = ACCEPTED_DELAY
        while True:
            await self._accepted_wake.wait()
            await anyio.sleep(delay)
            self._accepted_wake = anyio.Event()
            batch, self._accepted_queue = self._accepted_queue, {}
            delay = ACCEPTED_DELAY
            for route, (obj, problems) in sorted(batch.items(), key=lambda kv: kv[0]):
                try:
                    await self._report_accepted(obj, route, problems)
                except ApiError as e:
                    if e.not_found:
                        continue  # the record went away meanwhile: nothing left to describe
                    log.warning("tenant %s: status of route %s: %s", self.name, route, e)
                except ConnectionError as e:
                    log.warning("tenant %s: status of route %s: %s", self.name, route, e)
                else:
                    continue
                self._accepted_queue.setdefault(route, (obj, problems))
                self._accepted_wake.set()
                delay = ACCEPTED_RETRY

    async def _report_accepted(self, obj: Obj, route: str, problems: list[ingress.Problem]) -> None:
        # A Route's Accepted condition comes from the problems in its record, written by the
        # data plane with the rest of its status: one status write per change, not two.
        await self.report_accepted(
            records.ROUTES, "Route", "Ingress", obj, route, problems, condition=False
        )

    def forget_accepted(self, kind: str, name: str) -> None:
        """The record is gone: a new one of the same name must be reported afresh."""
        self._accepted.pop(f"{kind}/{name}", None)

    async def report_accepted(
        self,
        resource: Resource,
        kind: str,
        source_kind: str,
        obj: Obj,
        name: str,
        problems: list[ingress.Problem],
        condition: bool = True,
    ) -> None:
        """The Accepted condition on a record (unless not `condition`), and an Event on the
        tenant object per problem."""
        generation = obj["metadata"].get("generation", 0)
        fingerprint = (kind, obj["metadata"].get("uid"), generation, tuple(problems))
        if self._accepted.get(f"{kind}/{name}") == fingerprint:
            return
        if condition:
            await self._write_accepted(resource, kind, name, problems, generation)
        self._accepted[f"{kind}/{name}"] = fingerprint
        for p in problems:
            log.warning("tenant %s: %s %s: %s", self.name, source_kind.lower(), key(obj), p.message)
            await self.event(obj, "Warning", p.reason, p.message, source_kind)

    async def _write_accepted(
        self,
        resource: Resource,
        kind: str,
        name: str,
        problems: list[ingress.Problem],
        generation: int,
    ) -> None:
        cond = conditions.accepted([(p.reason, p.message) for p in problems], generation)
        await self.mgmt.apply(
            resource,
            {
                "apiVersion": records.API_VERSION,
                "kind": kind,
                "metadata": {"name": name, "namespace": self.namespace},
                "status": {"conditions": [cond]},
            },
            subresource="status",
            field_manager=STATUS_MANAGER,
        )

    # ---- called by the data plane ------------------------------------------------------------

    async def event(
        self, obj: Obj, type_: str, reason: str, message: str, kind: str = "Ingress"
    ) -> None:
        if self.recorder is not None:
            api_version = "networking.k8s.io/v1" if kind == "Ingress" else "v1"
            await self.recorder.emit(
                {"apiVersion": api_version, "kind": kind, **obj}, type_, reason, message
            )

    def ingress(self, namespace: str, name: str) -> Obj | None:
        cache = getattr(self, "ingresses", None)
        return cache.cache.get(f"{namespace}/{name}") if cache is not None else None

    async def set_ingress_address(self, namespace: str, name: str, served: bool) -> None:
        """Publish (or withdraw) the load balancer's address in the tenant Ingress's status."""
        obj = self.ingress(namespace, name)
        if obj is None or self.kube is None:
            return
        want: list[Obj] = []
        if served and self.settings.public_address:
            field_ = "ip" if _is_ip(self.settings.public_address) else "hostname"
            want = [{field_: self.settings.public_address}]
        have = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if have == want:
            return
        await self.kube.patch(
            INGRESSES,
            name,
            {"status": {"loadBalancer": {"ingress": want}}},
            namespace,
            subresource="status",
        )

    async def set_service_address(
        self, namespace: str, name: str, ingress: list[dict[str, Any]]
    ) -> None:
        await self.lbs.set_address(namespace, name, ingress)

    def service(self, namespace: str, name: str) -> Obj | None:
        cache = getattr(self, "services", None)
        return cache.cache.get(f"{namespace}/{name}") if cache is not None else None

    # ---- Tenant record status ----------------------------------------------------------------

    async def _status_writer(self) -> None:
        backoff = Backoff(maximum=10)
        while True:
            await self._status_wake.wait()
            self._status_wake = anyio.Event()
            connected, synced = self._connected, self._synced
            written = self._written_status
            previous = written["conditions"] if written is not None else None
            status: Obj = {
                "conditions": [
                    conditions.condition("Connected", *connected, previous=previous),
                    conditions.condition("Synced", *synced, previous=previous),
                ],
                "lastError": self._last_error,
            }
            if written is not None and written["lastError"] == status["lastError"]:
                if conditions.same(written["conditions"], status["conditions"]):
                    continue
                if conditions.same(written["conditions"], status["conditions"], messages=False):
                    # Only a message moved (the route count does with every change): those
                    # writes cost the management API server as much as the route records
                    # themselves, so they are coalesced, at most one per interval.
                    # A real change meanwhile (a condition's status or reason) ends the wait.
                    wait = self._status_written_at + STATUS_MESSAGE_INTERVAL - anyio.current_time()
                    if wait > 0:
                        with anyio.move_on_after(wait):
                            await self._status_wake.wait()
                        self._status_wake.set()
                        continue
            try:
                await self.mgmt.apply(
                    records.TENANTS,
                    {
                        "apiVersion": records.API_VERSION,
                        "kind": "Tenant",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "status": status,
                    },
                    subresource="status",
                    field_manager=STATUS_MANAGER,
                )
                self._written_status = status
                self._status_written_at = anyio.current_time()
                backoff.reset()
            except ApiError as e:
                if e.not_found:
                    # Status needs the object: create it (node addresses come once nodes sync).
                    await self._create_tenant_record()
                else:
                    log.warning("tenant %s: cannot write status: %s", self.name, e)
                self._status_wake.set()
                await anyio.sleep(backoff.next())
            except ConnectionError as e:
                log.warning("tenant %s: cannot write status: %s", self.name, e)
                self._status_wake.set()
                await anyio.sleep(backoff.next())

    async def _create_tenant_record(self) -> None:
        obj = records.tenant_object(self.name, [], self.settings.node_address_type)
        del obj["spec"]["nodeAddresses"]
        try:
            await self.mgmt.create(records.TENANTS, obj)
        except ApiError as e:
            if not e.conflict:
                log.warning("tenant %s: cannot create Tenant record: %s", self.name, e)


def _same_twin(existing: Obj, desired: Obj) -> bool:
    def shape(svc: Obj) -> tuple[Any, ...]:
        spec = svc.get("spec") or {}
        ports = sorted(
            (
                p.get("name", ""),
                p["port"],
                str(p.get("targetPort", p["port"])),
                p.get("protocol", "TCP"),
            )
            for p in spec.get("ports") or []
        )
        return (spec.get("type"), tuple(sorted((spec.get("selector") or {}).items())), tuple(ports))

    return shape(existing) == shape(desired)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
