"""Records as they reach the data plane, from two places into one queue.

From a watch on every record (all there is after a restart, even with every tenant
unreachable), and straight from the tenant tasks (kubelbd.hub.RecordSink): the moment they
have translated an object (`provisional`, before the record is written), and again once it
is written. Duplicates are recognised by uid and generation; a record read back that does
not parse is refused with a log line and never reaches the model.

A provisional route is the tenant side's latest word: until the record that confirms it
comes, an older version of the record (a late event, our own status write on it) does not
replace it, and its deletion is not taken from the watch. If the tenant task stops before
writing it, it is reverted to what the API holds (`revert`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from ..hub import Dialled
from ..ir.nodes import exclusive
from ..objects import Obj
from ..records import parse
from ..records.conditions import Transitions, carried_fingerprint, transitions
from ..records.names import LOADBALANCER, ROUTE, TENANT, RecordKind, tenant_of
from ..records.types import RouteRecord, TenantRecord
from .arrivals import Arrival, Arrivals
from .l4 import LoadBalancers
from .refusals import Refusals

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """What changed since the last render."""

    upserts: dict[str, RouteRecord] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    tenants: list[TenantRecord] | None = None  # the whole tenant set, when it changed
    #: when each change in it (load balancers' included) reached the data plane
    arrivals: list[Arrival] = field(default_factory=list)


class Intake:
    def __init__(
        self,
        wake: Callable[[], None],
        current: Callable[[str], RouteRecord | None],
        l4: LoadBalancers,
        on_confirmed: Callable[[], None] = lambda: None,
        written: Callable[[str], Transitions | None] = lambda rid: None,
    ) -> None:
        self._wake = wake
        #: a Route's conditions as the status reporter last wrote them: what a record's own
        #: status write comes back as, kept once, not twice (6 MiB at 10,000 routes)
        self._written = written
        self._current = current  # the model's record of a route id
        self._on_confirmed = on_confirmed  # records in `confirmed` wait for the data plane
        self.l4 = l4
        self._upserts: dict[str, RouteRecord] = {}
        self._deletes: set[str] = set()
        self._tenants: dict[str, TenantRecord] = {}
        self._tenants_changed = True
        self._lost_addresses: dict[str, str] = {}
        #: route id -> (uid, record) as the API last had it
        self._api: dict[str, tuple[str, RouteRecord]] = {}
        #: routes whose latest version came from the tenant side and is not written yet
        self._provisional: set[str] = set()
        self.refused = Refusals()
        self._arrivals = Arrivals()
        #: records confirmed (written) without a change to render: the model takes them as
        #: they are (they carry the generation the status reports), and their status is due
        self.confirmed: dict[str, RouteRecord] = {}
        #: the transitions of the conditions each record carries, as last seen:
        #: lastTransitionTime survives restarts
        self.conditions: dict[str, Transitions] = {}
        #: the status each record carries, as last seen (`carried_fingerprint`): what a new
        #: term need not write again
        self.statuses: dict[str, bytes] = {}
        #: what Envoy's clusters dial (the data plane sets it once it published them)
        self.dialled = Dialled()
        #: set once the data plane's first list of the records is in (`listed`)
        self.all_listed = anyio.Event()
        #: (kind, record id) withdrawn on the tenant side's word (`deleted`) and neither
        #: deleted in the API since, as the watch tells, nor stored again: a tenant task that
        #: stopped before its background delete ran leaves such a record in the API, not
        #: served, and the next task must not take it for served (`withdrawn`)
        self._withdrawn: set[tuple[str, str]] = set()

    def uid(self, rid: str) -> str | None:
        """The uid of the route record as the API last had it (None: not stored yet)."""
        known = self._api.get(rid)
        return (known[0] or None) if known is not None else None

    def take(self) -> Batch:
        batch = Batch(
            self._upserts, self._deletes, arrivals=self._arrivals.take() + self.l4.arrivals.take()
        )
        self._upserts, self._deletes = {}, set()
        if self._tenants_changed:
            self._tenants_changed = False
            batch.tenants, lost = exclusive(self._tenants.values())
            for taken, keeper in sorted(lost.items()):
                if self._lost_addresses.get(taken) != keeper:
                    log.warning("tenant %s: node address %s is tenant %s's: not used",
                                *taken.split("/", 1), keeper)  # fmt: skip
            self._lost_addresses = lost
        return batch

    # ---- in-process (hub.RecordSink) --------------------------------------------------------

    def provisional(self, record: RouteRecord) -> None:
        self._provisional.add(record.id)
        self._deletes.discard(record.id)
        self._upserts[record.id] = record
        self._arrivals.arrived(ROUTE.kind, record.id)
        self._wake()

    def revert(self, kind: RecordKind, tenant: str, name: str) -> None:
        rid = f"{tenant}/{name}"
        if kind != ROUTE or rid not in self._provisional:
            return
        self._provisional.discard(rid)
        api = self._api.get(rid)
        if api is None:
            self._forget_route(rid)
        else:
            self._upserts[rid] = api[1]
            self._arrivals.arrived(ROUTE.kind, rid)
            self._wake()

    def written(self, kind: RecordKind, obj: Obj) -> None:
        if kind == ROUTE:
            self._route(obj, own_write=True)
        elif kind == LOADBALANCER:
            self._loadbalancer(obj)
        elif kind == TENANT:
            self._tenant(obj)

    async def listed(self) -> None:
        await self.all_listed.wait()

    def stored(self, kind: RecordKind, tenant: str, name: str) -> Any:
        rid = f"{tenant}/{name}"
        if kind == ROUTE:
            known = self._api.get(rid)
            return known[1].spec if known is not None else None
        if kind == LOADBALANCER:
            record = self.l4.records.get(rid)
            return record.spec if record is not None else None
        return None

    def deleted(self, kind: RecordKind, tenant: str, name: str) -> None:
        self._withdrawn.add((kind.kind, f"{tenant}/{name}"))
        if kind == ROUTE:
            self._forget_route(f"{tenant}/{name}")
        elif kind == LOADBALANCER:
            self.l4.delete(tenant, name)

    # ---- the watches -------------------------------------------------------------------------

    def on_route(self, kind: str, obj: Obj) -> None:
        parse.dispatch(kind, obj, self._route, self._delete_route)

    def on_tenant(self, kind: str, obj: Obj) -> None:
        if kind != "DELETED":
            self._tenant(obj)
            return
        name = tenant_of(obj)
        if name is not None and self._tenants.pop(name, None) is not None:
            self._tenants_changed = True
            self._arrivals.arrived(TENANT.kind, name)
            self._wake()

    def on_loadbalancer(self, kind: str, obj: Obj) -> None:
        parse.dispatch(kind, obj, self._loadbalancer, self._delete_loadbalancer)

    def withdrawn(self, kind: RecordKind, tenant: str) -> set[str]:
        prefix = f"{tenant}/"
        return {
            rid.removeprefix(prefix)
            for k, rid in self._withdrawn
            if k == kind.kind and rid.startswith(prefix)
        }

    def _loadbalancer(self, obj: Obj) -> None:
        tenant = tenant_of(obj)
        if self._withdrawn and tenant is not None:  # stored again
            self._withdrawn.discard((LOADBALANCER.kind, f"{tenant}/{obj['metadata']['name']}"))
        self.l4.upsert(obj)

    def _delete_loadbalancer(self, tenant: str, name: str, uid: str | None = None) -> None:
        self._withdrawn.discard((LOADBALANCER.kind, f"{tenant}/{name}"))
        self.l4.delete(tenant, name, uid)

    # ---- records -----------------------------------------------------------------------------

    def _route(self, obj: Obj, own_write: bool = False) -> None:
        """A route record from the watch, or (`own_write`) as the tenant side's write of it
        returned it."""
        meta = obj["metadata"]
        uid = meta.get("uid", "")
        tenant = tenant_of(obj)
        if tenant is None:
            return
        rid = f"{tenant}/{meta['name']}"
        if "status" in obj:
            seen = transitions((obj.get("status") or {}).get("conditions"))
            written = self._written(rid)
            self.conditions[rid] = written if written == seen else seen
            self.statuses[rid] = carried_fingerprint(obj.get("status"))
        generation = int(meta.get("generation") or 0)
        known = self._api.get(rid)
        if known is not None and known[0] == uid and known[1].generation >= generation:
            # Our own status write, or an event older than a record we already have. Or the
            # write of a provisional route handed back to what the record holds while another
            # version was being written (A, B, A): it changed nothing, so the generation did
            # not move, and it is the confirmation all the same. Only the write's own answer
            # says so: the tenant side writes a record's versions one after another, so none
            # is in flight then, where a watch event (say, our status write on A while B is
            # being written) would confirm A just before B lands.
            if own_write and rid in self._provisional and known[1].generation == generation:
                self._confirm(rid, uid, known[1])
            return
        rec = self.refused.parse(ROUTE.kind, rid, lambda: parse.route_record(obj))
        if rec is None:
            return
        self._withdrawn.discard((ROUTE.kind, rid))
        if self._confirm(rid, uid, rec):
            return
        self._api[rid] = (uid, rec)
        if rid in self._provisional:
            return  # an older version: the tenant side's newer one stays until written
        self._deletes.discard(rid)
        self._upserts[rid] = rec
        self._arrivals.arrived(ROUTE.kind, rid)
        self._wake()

    def _confirm(self, rid: str, uid: str, rec: RouteRecord) -> bool:
        """Whether the record as written is the version served: the confirmation of a
        provisional record, with the same content, now with a generation, which only the
        status needs (the model's indexes do not change). It keeps the spec it was handed,
        which the tenant side keeps too (one copy, not two: 2 KB a route)."""
        pending = self._upserts.get(rid) or self._current(rid)
        if pending is None or pending.spec != rec.spec:
            return False
        rec = replace(rec, spec=pending.spec)
        self._api[rid] = (uid, rec)
        self._provisional.discard(rid)
        self._deletes.discard(rid)
        if rid in self._upserts:
            self._upserts[rid] = rec
        else:
            self.confirmed[rid] = rec
        self._on_confirmed()
        return True

    def _delete_route(self, tenant: str, name: str, uid: str | None = None) -> None:
        """A record deleted in the API (from the watch)."""
        rid = f"{tenant}/{name}"
        self._withdrawn.discard((ROUTE.kind, rid))
        known = self._api.get(rid)
        if known is None:
            self.refused.forget(rid)  # a record refused, now deleted: nothing to refuse
        if uid is not None and (known is None or known[0] != uid):
            return  # not the record we know: deleted here already, perhaps made anew
        self._api.pop(rid, None)
        if rid in self._provisional:
            return  # a newer translation waits to be written: it stays served
        self._forget_route(rid)

    def _forget_route(self, rid: str) -> None:
        """The route is gone (the tenant side deleted it, or the API did)."""
        self._api.pop(rid, None)
        self._provisional.discard(rid)
        self.refused.forget(rid)
        self._upserts.pop(rid, None)
        self._deletes.add(rid)
        self.conditions.pop(rid, None)
        self.statuses.pop(rid, None)
        self._arrivals.arrived(ROUTE.kind, rid)
        self._wake()

    def _tenant(self, obj: Obj) -> None:
        name = str(obj["metadata"].get("name", ""))
        rec = self.refused.parse(TENANT.kind, name, lambda: parse.tenant_record(obj))
        if rec is not None and self._tenants.get(rec.name) != rec:
            self._tenants[rec.name] = rec
            self._tenants_changed = True
            self._arrivals.arrived(TENANT.kind, rec.name)
            self._wake()
