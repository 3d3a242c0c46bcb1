"""Everything kubelbd does for one tenant cluster, for as long as its registration Secret exists.

For every source kind (kubelbd.sources) alike: watch the kind and what it references, make
NodePort twins for the backends that need them, translate each object of ours into its
record, write the record into the management cluster and hand it to the data plane, and
write back the status the data plane decided. Besides: the Tenant record (node addresses,
health) and copies of the TLS Secrets objects of ours are served with.

One tenant's failures stay here: a bad kubeconfig, an unreachable or unauthorized API server
become conditions on its Tenant record and log lines, never exceptions that leave this task.
An object the tenant API server refuses is retried on its own schedule (a backoff shared by
the tenant's failed objects, reset once a pass goes through), while the tenant's other
changes go on at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc

from ..hub import RecordSink, Settling, StatusBoard
from ..kube import ApiError, Kube, KubeconfigError, parse_kubeconfig
from ..kube.informer import ErrorHandler, EventHandler
from ..objects import (
    ENDPOINT_SLICES,
    NAMESPACES,
    NODES,
    SECRETS,
    SERVICES,
    Obj,
    Resource,
    key,
    split_key,
)
from ..records.names import LOADBALANCER, ROUTE
from ..records.objects import namespace_object
from ..records.policy import Policy, for_tenant, policy_of
from ..records.problems import Translation
from ..retry import Backoff
from ..sources import SOURCES, twins
from ..sources.base import Ref, Source
from .caches import ObjectId, ReverseIndex, TenantCaches
from .changes import ChangeFilter
from .copies import SecretCopies
from .health import POLICY_OK, RetryLater, TenantHealth
from .kept import KeptObjects
from .limits import TenantLimits
from .nodes import TenantNodes
from .records import TenantRecords
from .retries import Retries
from .statuses import TenantStatuses

log = logging.getLogger(__name__)

#: API calls in flight per tenant while reconciling a batch of objects
API_CONCURRENCY = 8
#: a reconcile pass this long is logged (debug): a change that comes meanwhile waits for it
SLOW_PASS = 0.02


@dataclass(frozen=True)
class TenantSettings:
    node_address_type: str = "InternalIP"
    #: the fleet-wide defaults where a Tenant record's spec says nothing
    policy: Policy = field(default_factory=Policy)
    #: let registration kubeconfigs run plugins, read files and name a proxy (kube.kubeconfig)
    trust_kubeconfigs: bool = False


#: a client of a tenant's API server, from its registration kubeconfig (and the tenant's name)
Connect = Callable[[bytes, str], Awaitable[Kube]]


@dataclass(frozen=True)
class Connector:
    """The Connect of a running kubelbd: a registration kubeconfig is the tenant's, so it is
    checked first (kube.kubeconfig), and refused what only a trusted one may ask."""

    trusted: bool = False

    async def __call__(self, kubeconfig: bytes, name: str) -> Kube:
        parse = partial(parse_kubeconfig, trusted=self.trusted, name=f"tenant {name}")
        # In a thread: a hostile megabyte of YAML would hold up every tenant for seconds.
        config = await anyio.to_thread.run_sync(parse, kubeconfig)
        return await Kube.from_kubeconfig(config, name)


class TenantSync:
    def __init__(
        self,
        name: str,
        kubeconfig: bytes,
        mgmt: Kube,
        sink: RecordSink,
        board: StatusBoard,
        settling: Settling,
        settings: TenantSettings,
        sources: Sequence[Source] = SOURCES,
        connect: Connect | None = None,
    ) -> None:
        self.name = name
        self._kubeconfig = kubeconfig
        self._connect = connect or Connector(settings.trust_kubeconfigs)
        self.mgmt = mgmt
        self.board = board
        self.settling = settling
        self.settings = settings
        self.sources = {s.kind: s for s in sources}
        if len(self.sources) != len(sources):
            raise ValueError("two sources of one kind: each kind is served by one Source")
        self.health = TenantHealth(name, mgmt, sink, settings.node_address_type)
        self._dialled = sink.dialled
        self._dialled.on_change(name, lambda: self._wake.set())
        self.policy = for_tenant(settings.policy, name)
        self._policy_spec: object = None
        self.nodes = TenantNodes(name, self.health, settings.node_address_type)
        self.records = TenantRecords(name, mgmt, sink, board.busy)
        self.limits = TenantLimits(name, self.records, self.sources, board)
        self.copies = SecretCopies(name, mgmt)
        self.index = ReverseIndex()
        self.kube: Kube | None = None
        # What needs reconciling.
        self._wake = anyio.Event()
        self._dirty: set[ObjectId] = set()
        self._resync = True  # everything: after (re)connecting
        self._resync_sources: set[str] = set()  # kinds whose depends_on objects changed
        self.kept = KeptObjects(name, self.sources, self._resync_kind)
        self._changes = ChangeFilter()
        self._twin_candidates: set[Ref] = set()  # Services that may have lost their last user
        self.retries = Retries(name, self._reconcile_again)
        self._logged_error = ""

    def set_record(self, tenant: Obj | None) -> None:
        """The Tenant record as the management cluster has it (None: not there yet): the
        operator's policy in its spec, the node address claims in its status. A changed
        policy translates everything again."""
        if tenant is not None:
            self.health.known_claims(tenant.get("status"))
        spec = (tenant or {}).get("spec")
        generation = (tenant or {}).get("metadata", {}).get("generation")
        generation = generation if isinstance(generation, int) else None
        if spec == self._policy_spec:
            if generation != self.health.policy_generation:  # a change undone: still in force
                self.health.policy_state(self.health.policy, generation)
            return
        self._policy_spec = spec
        try:
            policy = policy_of(spec if isinstance(spec, dict) else None, self.settings.policy)
            self.health.policy_state(POLICY_OK, generation)
        except ValueError as e:
            # The CRD's schema keeps most mistakes out; what it lets through leaves the
            # tenant on the fleet's defaults, and says so.
            log.error("tenant %s: its Tenant record's policy is invalid: %s", self.name, e)
            self.health.policy_state(
                (False, "InvalidPolicy", f"{e}; using the defaults"), generation
            )
            policy = self.settings.policy
        policy = for_tenant(policy, self.name)
        if policy == self.policy:
            return
        log.info("tenant %s: policy changed, translating everything again", self.name)
        self.policy = policy
        if hasattr(self, "caches"):
            self.caches.policy = policy
        self._resync = True
        self.nodes.dirty = True
        self._wake.set()

    def node_addresses_taken(self, taken: dict[str, str]) -> None:
        """Addresses of this tenant's nodes that another tenant listed first: the data plane
        does not use them for this one (ir/nodes.py); the Tenant record and the Nodes say so."""
        if self.nodes.taken(taken):
            self._wake.set()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        log.info("tenant %s: starting", self.name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.health.writer.run)
            await self._ensure_namespace()
            try:
                kube = await self._connect(self._kubeconfig, self.name)
            except KubeconfigError as e:
                self.health.connection_failed(e)
                self.settling.done(self.name)
                log.error("tenant %s: %s", self.name, e)
                await anyio.sleep_forever()
            try:
                await self._run_connected(kube, tg)
            finally:
                # Stopped (deregistered, kubeconfig changed): what the data plane got from
                # this task and was never written goes back to what the records hold.
                self.records.revert_unwritten()
                with anyio.CancelScope(shield=True):
                    await kube.aclose()

    async def _ensure_namespace(self) -> None:
        backoff = Backoff(maximum=10)
        while True:
            try:
                await self.mgmt.apply(NAMESPACES, namespace_object(self.name))
                await self.health.ensure_record()
                return
            except (ApiError, ConnectionError) as e:
                log.warning("tenant %s: cannot create its namespace: %s", self.name, e)
                await anyio.sleep(backoff.next())

    async def _run_connected(self, kube: Kube, tg: anyio.abc.TaskGroup) -> None:
        self.kube = kube
        sources = list(self.sources.values())
        self.caches = TenantCaches(
            kube, sources, self._on_event, self._informer_health, self.policy
        )
        self.statuses = TenantStatuses(self.name, kube, self.board, sources, self._lookup)
        for inf in self.caches.all_informers():
            tg.start_soon(inf.run)
        tg.start_soon(self.statuses.writer.run)
        tg.start_soon(self.retries.run)
        tg.start_soon(self.copies.run, lambda: self._wake.set())
        await tg.start(self.records.run)
        for inf in self.caches.all_informers():
            await inf.synced.wait()
        await self._load_records()
        tg.start_soon(self.statuses.run)
        await self._reconcile_loop()

    def _informer_health(self, which: str) -> ErrorHandler:
        def report(error: Exception | None) -> None:
            if error is None and self.kept.unserved:
                self.kept.served_again(self.caches, which)
            if self.health.informer(which, error):
                self.settling.done(self.name)  # nothing better to wait for: serve the records

        return report

    async def _load_records(self) -> None:
        backoff = Backoff(maximum=10)
        while True:
            try:
                await self.records.load([ROUTE, LOADBALANCER])
                await self.copies.load()
                break
            except (ApiError, ConnectionError) as e:
                log.warning("tenant %s: cannot list its records: %s", self.name, e)
                await anyio.sleep(backoff.next())
        self._resync = True
        self._wake.set()

    def _lookup(self, source: Source, namespace: str, name: str) -> Obj | None:
        return self.caches.get(source.resource, namespace, name)

    # ---- change tracking ---------------------------------------------------------------------

    def _on_event(self, resource: Resource) -> EventHandler:
        primary = [s for s in self.sources.values() if s.resource == resource]
        dependents = {s.kind for s in self.sources.values() if resource in s.depends_on}
        referenced = any(resource in s.referenced for s in self.sources.values())
        seen_as = f"used: {resource.group_version}/{resource.plural}"

        def handle(kind: str, obj: Obj) -> None:
            if resource == SECRETS:
                if self.copies.on_secret(obj):
                    self._wake.set()
                return
            if resource == ENDPOINT_SLICES:
                self.caches.mirrors.on_slice(obj)
                self._wake.set()
                return
            if resource == NODES:
                self.nodes.dirty = True
                self._wake.set()
                return
            for source in primary:
                self._on_source_object(source, kind, obj)
            # Those that use it look again, unless only its status changed.
            used = bool(dependents or referenced) and self._changes.changed(seen_as, kind, obj)
            if dependents and used:
                self._resync_sources |= dependents  # which objects are ours may have changed
                self._wake.set()
            if resource == SERVICES:
                self._on_service(obj)
            elif referenced and used:
                ns, name = split_key(key(obj))
                # (ns, ""): every object of the kind in the namespace (References)
                users = self.index.users(resource, (ns, name)) | self.index.users(
                    resource, (ns, "")
                )
                if users:
                    self._dirty |= users
                    self._wake.set()

        return handle

    def _on_source_object(self, source: Source, kind: str, obj: Obj) -> None:
        if not self._changes.changed(source.kind, kind, obj):
            return
        k = key(obj)
        oid = (source.kind, k)
        current = obj if kind != "DELETED" else None
        refs = source.references(obj, self.caches) if current is not None else None
        self._twin_candidates |= self.index.update(oid, refs)
        if self._concerns_us(source, k, current):
            self._dirty.add(oid)
            log.debug("tenant %s: %s %s %s", self.name, source.kind, k, kind.lower())
            self._wake.set()

    def _on_service(self, obj: Obj) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        original = twins.original_of(obj)
        if original is not None:
            self.caches.twins.seen(obj)
            name = original
            self.caches.mirrors.dirty.add((meta["namespace"], original))
            self._wake.set()
        users = self.index.users(SERVICES, (meta["namespace"], name))
        if users:
            self._dirty |= users
            self._wake.set()

    # ---- reconcile ---------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        backoff = Backoff(maximum=30)
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            started = time.perf_counter()
            try:
                await self._reconcile()
            except (ApiError, ConnectionError, RetryLater) as e:
                message = self.health.sync_failed(e)
                if message != self._logged_error:  # not again on every pass while it fails
                    log.warning("tenant %s: reconcile failed: %s", self.name, message)
                    self._logged_error = message
                if isinstance(e, RetryLater):
                    # The pass went through; what failed is retried on its own schedule.
                    self.retries.soon()
                    self.settling.done(self.name)
                    continue
                self._wake.set()
                await anyio.sleep(backoff.next())
                continue
            took = time.perf_counter() - started
            if took >= SLOW_PASS:
                log.debug("tenant %s: a pass took %.1f ms", self.name, took * 1000)
            backoff.reset()
            self.retries.all_succeeded()
            self._logged_error = ""
            self.health.sync_succeeded(self.records.held(ROUTE))
            self.settling.done(self.name)

    def _reconcile_again(self, objects: set[ObjectId]) -> None:
        self._dirty |= objects
        self._wake.set()

    async def _reconcile(self) -> None:
        assert self.kube is not None
        if self._resync:
            self._resync = False
            try:
                await self._full_resync()
            except BaseException:
                self._resync = True  # the whole resync is retried, not skipped
                raise
        for kind in sorted(self._resync_sources):
            # Taken off before its pass: a change that comes while the pass writes (one of its
            # statuses, computed before the change) asks for another pass, and is not lost.
            self._resync_sources.discard(kind)
            try:
                await self._resync_source(self.sources[kind])
            except BaseException:
                self._resync_sources.add(kind)
                raise
        await self.nodes.update(self.caches, self.policy, self.statuses.recorder)
        batch, self._dirty = self._dirty, set()
        batch = self.limits.admit(batch, self.policy.limits, self.caches)
        async with anyio.create_task_group() as tg:
            limit = anyio.Semaphore(API_CONCURRENCY)
            for oid in sorted(batch):
                tg.start_soon(self._reconcile_one, oid, limit)
        if self.limits.room_for_waiting(self.policy.limits):
            self._wake.set()  # a record went: the oldest waiting object gets its place
        await self.caches.twins.collect(
            self.kube, self._twin_candidates, self._twin_in_use, self._twin_dialled
        )
        await self.copies.reconcile(self.caches.secrets.cache)
        await self.caches.mirrors.reconcile(self.kube)
        if self.retries.failed:
            failed = self.retries.failed
            first = next(iter(sorted(failed.items())))
            raise RetryLater(
                f"{len(failed)} objects failed, e.g. {first[0][0]} {first[0][1]}: {first[1]}"
            )

    async def _full_resync(self) -> None:
        """After (re)connecting, or when which objects are ours may have changed: every
        object of every source, every twin, and every record whose object is gone."""
        self._resync_sources.clear()  # before: a change during the resync asks for another
        for source in self.sources.values():
            await self._resync_source(source)
        self._twin_candidates |= self.caches.twins.all_twins()
        for kind in (ROUTE, LOADBALANCER):
            for record, (source_kind, ns, name) in sorted(self.records.sources(kind).items()):
                src = self.sources.get(source_kind)
                if src is None or src.record != kind or src.record_name(ns, name) != record:
                    log.info("tenant %s: removing %s %s: no source kind makes it", self.name,
                             kind.kind, record)  # fmt: skip
                    await self.records.delete(kind, record)
                else:
                    self._dirty.add((source_kind, f"{ns}/{name}"))

    async def _resync_source(self, source: Source) -> None:
        """One source: the objects kubelbd keeps in the tenant for it, and every object of
        it that is ours or has a record translated again."""
        assert self.kube is not None
        await self.kept.apply(self.kube, self.caches, source)
        for k, obj in self.caches.cache(source.resource).items():
            if self._concerns_us(source, k, obj):
                self._dirty.add((source.kind, k))

    def _resync_kind(self, kind: str) -> None:
        self._resync_sources.add(kind)
        self._wake.set()

    def _concerns_us(self, source: Source, k: str, obj: Obj | None) -> bool:
        """Whether an object (None: deleted) needs reconciling: it is ours, or it has a
        record (which must go when it no longer is)."""
        if obj is not None and source.is_ours(obj, self.caches):
            return True
        ns, name = split_key(k)
        return self.records.known(source.record, source.record_name(ns, name))

    def _twin_dialled(self, ref: Ref) -> bool:
        return self._dialled.dials(self.name, ref)

    def _twin_in_use(self, ref: Ref) -> bool:
        for source_kind, k in self.index.users(SERVICES, ref):
            source = self.sources[source_kind]
            obj = self.caches.cache(source.resource).get(k)
            if obj is not None and source.is_ours(obj, self.caches):
                return True
        return False

    def _translate(self, source: Source, obj: Obj, record: str) -> Translation[Any]:
        result = source.translate(obj, self.caches)
        if source.record == ROUTE:
            self.limits.certificates(record, result, self.policy.limits.certificates)
        result.spec = self.records.with_claims(source.record, record, result.spec)
        return result

    async def _reconcile_one(self, oid: ObjectId, limit: anyio.Semaphore) -> None:
        """One object; its failure is retried later and never blocks the others. `limit`
        bounds the API calls in flight, not the objects being handled."""
        try:
            await self._reconcile_object(oid, limit)
        except (ApiError, ConnectionError) as e:
            self.retries.fail(oid, e)
            return
        self.retries.succeeded(oid)

    async def _reconcile_object(self, oid: ObjectId, limit: anyio.Semaphore) -> None:
        assert self.kube is not None
        source_kind, k = oid
        source = self.sources[source_kind]
        ns, name = split_key(k)
        record = source.record_name(ns, name)
        obj = self.caches.cache(source.resource).get(k)
        if obj is None or not source.is_ours(obj, self.caches):
            self.copies.uses(f"{source_kind}/{k}", frozenset())
            if self.records.known(source.record, record):
                # The data plane then takes back the address it gave the object, if it stays.
                self.records.delete_later(
                    source.record,
                    record,
                    partial(self.retries.fail, oid, now=True),
                    self._record_gone,
                )
            return
        refs = source.references(obj, self.caches)
        self._twin_candidates |= self.index.update(oid, refs)
        self.copies.uses(f"{source_kind}/{k}", refs.tls_secrets)
        creating = []
        async with limit:
            for svc_ns, svc in sorted(refs.backends):
                new = await self.caches.twins.ensure(self.kube, svc_ns, svc)
                if new is not None:
                    creating.append(new)
        result = self._translate(source, obj, record)
        if not source.record.provisional:
            # Its delete asked for before it came back goes first (the record is then
            # written again): compared before that, an equal spec would write nothing.
            await self.records.deleted_first(source.record, record)
            if not self.records.same(source.record, record, result.spec):
                async with limit:
                    await self.records.write(source.record, record, result.spec)
            return
        failed = partial(self.retries.fail, oid, now=True)
        if not creating and self.records.handed(source.record, record) == result.spec:
            # Handed over already (translated again, say, for a twin made meanwhile): its
            # write is under way, or retried now after a failure.
            self.records.write_later(source.record, record, failed)
            return
        # A record being written may become what this translation says only by another
        # write after that one: never taken back to what it held before.
        writing = self.records.writing(source.record, record)
        if self.records.same(source.record, record, result.spec) and not (creating or writing):
            # Back to what the record holds, after another spec was handed over and not
            # written: the data plane still has that other one.
            self.records.revert(source.record, record)
            return
        # The data plane renders from the translation at once; the record (the durable copy)
        # is written a moment later, in the background (TenantRecords.write_later). A failed
        # write is retried; a restart waits for tenants to resync before its first publish,
        # so a record lost in a crash is rewritten before it is missed.
        self.records.provisional(source.record, record, result.spec)
        sent = result.spec
        if creating:
            # The new twins' nodePorts are chosen already: Envoy gets the route and its
            # clusters while the tenant API server creates them, not after.
            moved = False
            try:
                async with limit:
                    for desired in creating:
                        if await self.caches.twins.create(self.kube, desired):
                            moved = True
                            # Others may have been translated with the ports chosen meanwhile.
                            original = desired["metadata"]["labels"][twins.TWIN_OF]
                            self._dirty |= self.index.users(SERVICES, (ns, original))
                            self._wake.set()
            except Exception:
                # Envoy has the route with ports chosen for a twin that was not made: take
                # them back (that backend is pending again) until the retry makes it.
                retreat = self._translate(source, obj, record)
                if retreat.spec != sent:
                    self.records.provisional(source.record, record, retreat.spec)
                raise
            if moved:
                result = self._translate(source, obj, record)
                if result.spec != sent:
                    self.records.provisional(source.record, record, result.spec)
        if self.records.same(source.record, record, result.spec) and not writing:
            self.records.revert(source.record, record)  # only its twins were missing
            return
        self.records.write_later(source.record, record, failed)

    def _record_gone(self) -> None:
        """A record was deleted in the background: the Tenant record's count says so (its
        writes coalesce), and an object waiting for a place under the tenant's limits may
        have one now."""
        if self.health.synced[0] is True:
            self.health.sync_succeeded(self.records.held(ROUTE))
        if self.limits.room_for_waiting(self.policy.limits):
            self._wake.set()
