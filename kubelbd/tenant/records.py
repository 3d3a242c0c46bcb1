"""One tenant's records in the management cluster, as this tenant task wrote them.

The tenant task compares each new translation with what it wrote (the stored spec, as read
back at start-up: a record in an older shape compares unequal and is rewritten in today's),
writes only what changed, and hands every record to the data plane the moment it has it.

A provisional record (a Route, served from its translation at once) is written in the
background (`write_later`): a reconcile pass never waits for the management API server, so
under a burst of new objects each is served as soon as it is translated, not after the
records of every object translated before it are written. Writes of one record never overlap:
a newer translation handed over while one is written is written after it, and a delete waits
for the write in flight (`settled`).

A record whose object went is withdrawn from the data plane at once and deleted in the
background too (`delete_later`): a pass over a namespace's thousands of deleted Ingresses
waited for each record's delete, and an object created meanwhile waited minutes for the next
pass. The order stays that of the requests: a delete waits for the write in flight when it
was asked for, and a write asked for after it waits for the delete; a delete whose object came
back and was handed over again meanwhile is not made (the write replaces the record).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

import anyio
import anyio.abc

from ..hub import RecordSink
from ..kube import ApiError, Kube
from ..kube.client import precise_timestamp
from ..kube.status_writer import YIELD_POLL
from ..objects import Obj
from ..records.claims import with_claims, with_name_claims
from ..records.names import KINDS, ROUTE, RecordKind, namespace_of
from ..records.objects import record_object
from ..records.types import LoadBalancerSpec, RouteRecord, RouteSpec, SpecT

log = logging.getLogger(__name__)

RecordKey = tuple[str, str]  # (record kind, name)

#: how long a provisional record waits before it is written: the write costs the management
#: API server and etcd as much CPU as Envoy needs to apply the change, and on a busy machine
#: writing it at once delays the traffic it records
RECORD_DELAY = 0.05
#: background record writes in flight at once, per tenant
WRITES_IN_FLIGHT = 8
#: while tenant objects' statuses are still to be written (a burst of new objects), a
#: record's write waits up to this long for them: the route is served from its translation
#: meanwhile, and the management API server's CPU (a record costs it twice what the tenant
#: status costs the tenant's) goes to what the tenants' users wait for
RECORD_YIELD = 10.0


#: seconds the first load waits for the data plane's records (`load`)
LISTED_WAIT = 20.0


def _read(obj: Obj) -> Obj:
    """What `load` reads of a record, kept page by page as it is listed: the rest (its
    managedFields and status, more than half of it) is freed before the next page comes."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "creationTimestamp") if k in meta}
    return {"metadata": kept, "spec": obj.get("spec")}


class TenantRecords:
    def __init__(
        self, tenant: str, mgmt: Kube, sink: RecordSink, busy: Callable[[], bool] = lambda: False
    ) -> None:
        self.tenant = tenant
        self.mgmt = mgmt
        self.sink = sink
        self._busy = busy  # statuses tenants wait for are still to be written
        self.written: dict[RecordKey, Any] = {}  # spec as stored (`_store`, `_unstore`)
        #: how many records of each kind `written` holds: `held` is asked after every pass,
        #: and counting them there was milliseconds a pass at 5,000 records a tenant
        self._stored: Counter[str] = Counter()
        self.recorded: dict[RecordKey, str] = {}  # when the management cluster stored it
        self._handed: dict[RecordKey, RouteSpec] = {}  # provisional, not written (yet)
        #: handed to the data plane but not written (yet): withdrawn even if never written
        self.unwritten: set[RecordKey] = set()
        #: records being written in the background -> set when that is over
        self._writing: dict[RecordKey, anyio.Event] = {}
        self._again: set[RecordKey] = set()  # handed anew while being written
        #: records being deleted in the background -> set when that is over
        self._deleting: dict[RecordKey, anyio.Event] = {}
        #: of those, records handed over again since their delete was asked for
        self._revived: set[RecordKey] = set()
        #: withdrawn from the data plane, and neither deleted from the API nor handed over
        #: or written since (a delete under way, or one that failed): never "the same"
        self._withdrawn: set[RecordKey] = set()
        #: writes waiting for the tenants' statuses (RECORD_YIELD)
        self.yielding: set[RecordKey] = set()
        self._limit = anyio.Semaphore(WRITES_IN_FLIGHT)
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The background writes' task (`write_later`), for as long as the tenant task runs."""
        async with anyio.create_task_group() as self._tg:
            task_status.started()
            await anyio.sleep_forever()

    async def load(self, kinds: Iterable[RecordKind]) -> None:
        written, recorded = {}, {}
        # After a restart both sides list every record; with the data plane's in first, the
        # tenant side keeps its parsed specs instead of copies of its own (20 MiB at 10,000
        # routes). Not for long: a data plane that cannot list must not hold up the tenant.
        with anyio.move_on_after(LISTED_WAIT):
            await self.sink.listed()
        withdrawn: set[RecordKey] = set()
        for kind in kinds:
            gone = self.sink.withdrawn(kind, self.tenant)
            items, _ = await self.mgmt.list(kind.resource, namespace_of(self.tenant), keep=_read)
            for o in items:
                name = o["metadata"]["name"]
                k = (kind.kind, name)
                spec = o.get("spec") or {}
                # Where the data plane has parsed the same record already, its equal copy is
                # kept, not a second one (2 KB a route).
                stored = self.sink.stored(kind, self.tenant, name)
                written[k] = stored if stored is not None and stored == spec else spec
                recorded[k] = str(o["metadata"].get("creationTimestamp") or "")
                if name in gone:
                    # An earlier task of this tenant withdrew it and stopped before deleting
                    # it: if its object is back with the same spec, it is served again.
                    withdrawn.add(k)
        self.written, self.recorded, self._withdrawn = written, recorded, withdrawn
        self._stored = Counter(kind for kind, _ in written)

    def with_claims(self, kind: RecordKind, name: str, spec: SpecT) -> SpecT:
        """A spec as it is written: with when kubelbd first saw each of a Route's hosts, or
        a LoadBalancer's DNS names, claimed (a claim handed to the data plane and not written
        yet keeps its time too: a record whose write is retried must not look newer on every
        try)."""
        previous = self._handed.get((kind.kind, name)) or self.written.get((kind.kind, name))
        before: Any = previous if isinstance(previous, dict) else None
        recorded, now = self.recorded.get((kind.kind, name), ""), precise_timestamp()
        raw: Any = spec  # one of the two spec types, as `kind` says
        stamp = with_claims if kind == ROUTE else with_name_claims
        return cast(SpecT, stamp(raw, before, recorded, now))

    def known(self, kind: RecordKind, name: str) -> bool:
        return (kind.kind, name) in self.written or (kind.kind, name) in self.unwritten

    def same(self, kind: RecordKind, name: str, spec: Any) -> bool:
        """Whether the record holds `spec`. Not one being deleted, or whose delete failed:
        it was withdrawn from the data plane, and its object is back (no longer ours and ours
        again, say): it must be handed over and written again."""
        key = (kind.kind, name)
        if key in self._deleting or key in self._withdrawn:
            return False
        return bool(self.written.get(key) == spec)

    def sources(self, kind: RecordKind) -> dict[str, tuple[str, str, str]]:
        """Record name -> (source kind, namespace, name) of every record of `kind` held."""
        out = {}
        for (k, name), spec in self.written.items():
            if k == kind.kind:
                source = (spec.get("source") or {}) if isinstance(spec, dict) else {}
                out[name] = (
                    str(source.get("kind", "")),
                    str(source.get("namespace", "")),
                    str(source.get("name", "")),
                )
        return out

    def certificates(self, except_record: str) -> set[tuple[str, str]]:
        """(namespace, Secret name) of every certificate the tenant's Routes are served with,
        as written or handed over, but for Route `except_record`'s."""
        out = set()
        specs = {**self.written, **self._handed}
        for (kind, name), spec in specs.items():
            if kind != ROUTE.kind or name == except_record or not isinstance(spec, dict):
                continue
            ns = str((spec.get("source") or {}).get("namespace", ""))
            out |= {(ns, str(t.get("secretName"))) for t in spec.get("tls") or []}
        return out

    def held(self, kind: RecordKind) -> int:
        """Records of `kind` written or handed to the data plane: what a limit counts."""
        only_handed = sum(1 for k in self.unwritten if k[0] == kind.kind and k not in self.written)
        return self._stored[kind.kind] + only_handed

    def _store(self, key: RecordKey, spec: Any) -> None:
        if key not in self.written:
            self._stored[key[0]] += 1
        self.written[key] = spec

    def _unstore(self, key: RecordKey) -> None:
        if key in self.written:
            del self.written[key]
            self._stored[key[0]] -= 1

    def provisional(self, kind: RecordKind, name: str, spec: RouteSpec) -> None:
        """Served already, before it is written (see RecordKind.provisional)."""
        self.sink.provisional(RouteRecord(self.tenant, name, spec))
        self.unwritten.add((kind.kind, name))
        self._handed[(kind.kind, name)] = spec
        self._withdrawn.discard((kind.kind, name))
        if (kind.kind, name) in self._deleting:
            self._revived.add((kind.kind, name))

    def handed(self, kind: RecordKind, name: str) -> RouteSpec | None:
        """The spec handed over (`provisional`) and not written yet."""
        return self._handed.get((kind.kind, name))

    def writing(self, kind: RecordKind, name: str) -> bool:
        """A background write of this record is under way (or waits to start)."""
        return (kind.kind, name) in self._writing

    def write_later(self, kind: RecordKind, name: str, failed: Callable[[Exception], None]) -> None:
        """Write the spec last handed over (`provisional`) in the background; `failed` is
        told when the API refuses it or cannot be reached (the object is then reconciled
        again later, which hands it over again)."""
        key = (kind.kind, name)
        if key in self._writing:
            self._again.add(key)
            return
        assert self._tg is not None, "TenantRecords.run is not running"
        self._writing[key] = anyio.Event()
        # Only a delete asked for before this write goes first: one asked for later waits
        # for this write (`delete_later`), and waiting for it here would be a deadlock.
        after = self._deleting.get(key)
        self._tg.start_soon(self._write_handed, kind, name, failed, after)

    async def settled(self, kind: RecordKind, name: str) -> None:
        """Until no background write of this record is under way."""
        done = self._writing.get((kind.kind, name))
        if done is not None:
            await done.wait()

    async def _write_handed(
        self,
        kind: RecordKind,
        name: str,
        failed: Callable[[Exception], None],
        after: anyio.Event | None,
    ) -> None:
        key = (kind.kind, name)
        try:
            await anyio.sleep(RECORD_DELAY)
            if after is not None:
                await after.wait()  # the record as it was goes first
            deadline = anyio.current_time() + RECORD_YIELD
            while True:
                async with self._limit:
                    # Polled: the tenants' status writers tell no one when they are done. A
                    # record taken back or deleted meanwhile waits no longer (a delete waits
                    # for this task to end).
                    while self._busy() and anyio.current_time() < deadline and key in self._handed:
                        self.yielding.add(key)
                        await anyio.sleep(YIELD_POLL)
                    self.yielding.discard(key)
                    self._again.discard(key)
                    spec = self._handed.get(key)
                    if spec is None:
                        return  # taken back, or deleted, meanwhile
                    await self.write(kind, name, spec)
                if key not in self._again:
                    return
        except (ApiError, ConnectionError) as e:
            failed(e)
        finally:
            self._again.discard(key)
            self.yielding.discard(key)  # cancelled while waiting
            self._writing.pop(key).set()

    async def write(self, kind: RecordKind, name: str, spec: RouteSpec | LoadBalancerSpec) -> None:
        start = time.perf_counter()
        written = await self.mgmt.apply(
            kind.resource, record_object(kind.kind, self.tenant, name, spec)
        )
        if self._handed.get((kind.kind, name), spec) == spec:
            # (else a newer spec was handed over meanwhile: it stays unwritten)
            self.unwritten.discard((kind.kind, name))
            self._handed.pop((kind.kind, name), None)
        self._store((kind.kind, name), spec)
        self.recorded.setdefault(
            (kind.kind, name), str(written["metadata"].get("creationTimestamp") or "")
        )
        self.sink.written(kind, written)
        self._withdrawn.discard((kind.kind, name))
        log.debug(
            "tenant %s: %s %s written in %.1f ms",
            self.tenant, kind.kind, name, (time.perf_counter() - start) * 1000,
        )  # fmt: skip

    def revert(self, kind: RecordKind, name: str) -> None:
        """Back to the stored record: the provisional one will not be written."""
        self._handed.pop((kind.kind, name), None)
        if (kind.kind, name) in self.unwritten:
            self.unwritten.discard((kind.kind, name))
            self.sink.revert(kind, self.tenant, name)

    def revert_unwritten(self) -> None:
        """Everything handed over and not written goes back to what the API holds (the task
        stops: nothing would write it any more)."""
        for kind_name, name in sorted(self.unwritten):
            self.sink.revert(KINDS[kind_name], self.tenant, name)
        self.unwritten.clear()
        self._handed.clear()

    def delete_later(
        self,
        kind: RecordKind,
        name: str,
        failed: Callable[[Exception], None],
        deleted: Callable[[], None] = lambda: None,
    ) -> None:
        """The object went: withdraw its record from the data plane now, and delete it in
        the background, after any write of it under way. `failed` is told when the API
        refuses or cannot be reached (the object is reconciled again later, which asks
        again); `deleted` once the record is gone."""
        key = (kind.kind, name)
        self.sink.deleted(kind, self.tenant, name)
        self._withdrawn.add(key)
        self._handed.pop(key, None)  # nothing handed over is written after it
        self._revived.discard(key)  # gone again: the latest word
        if key in self._deleting:
            return
        assert self._tg is not None, "TenantRecords.run is not running"
        self._deleting[key] = anyio.Event()
        # Only the write in flight now goes first: one asked for later waits for this
        # delete, and waiting for it here would have each wait for the other.
        before = self._writing.get(key)
        self._tg.start_soon(self._delete_later, kind, name, before, failed, deleted)

    async def _delete_later(
        self,
        kind: RecordKind,
        name: str,
        before: anyio.Event | None,
        failed: Callable[[Exception], None],
        deleted: Callable[[], None],
    ) -> None:
        key = (kind.kind, name)
        try:
            if before is not None:
                await before.wait()
            async with self._limit:
                if key in self._revived:
                    return  # its object is back: its write (after this) replaces the record
                await self.mgmt.delete(kind.resource, name, namespace_of(self.tenant))
            if key not in self._handed:
                # (else handed over again while the delete ran: its write, waiting for this
                # delete, is still to come, and a delete of it must still be asked for)
                self.unwritten.discard(key)
            self._withdrawn.discard(key)
            self._unstore(key)
            self.recorded.pop(key, None)
        except (ApiError, ConnectionError) as e:
            failed(e)
            return
        finally:
            self._revived.discard(key)
            self._deleting.pop(key).set()
        deleted()

    async def deleted_first(self, kind: RecordKind, name: str) -> None:
        """Until a background delete of this record asked for earlier is over: a write made
        directly (a record that is not provisional) must not land before it."""
        done = self._deleting.get((kind.kind, name))
        if done is not None:
            await done.wait()

    def deleting(self, kind: RecordKind, name: str) -> bool:
        """A background delete of this record is under way (or waits to start)."""
        return (kind.kind, name) in self._deleting

    async def delete(self, kind: RecordKind, name: str) -> None:
        self.sink.deleted(kind, self.tenant, name)
        # A write under way finishes first (else it could land after the delete and make the
        # record again); nothing handed over is written after it.
        self._handed.pop((kind.kind, name), None)
        await self.settled(kind, name)
        await self.mgmt.delete(kind.resource, name, namespace_of(self.tenant))
        self.unwritten.discard((kind.kind, name))
        self._unstore((kind.kind, name))
        self.recorded.pop((kind.kind, name), None)
