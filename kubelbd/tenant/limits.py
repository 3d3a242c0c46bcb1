"""A tenant's limits (the operator's policy, records/policy.py): how many Routes,
LoadBalancers and certificates it may have served.

Oldest first: an object that has its record (written, or handed to the data plane) keeps it;
new objects are admitted in the order the tenant made them while there is room, and the
others get no record: a Warning Event `LimitExceeded` on the object (through the status
board, as any status) and a wait until a record goes or the limit is raised. Lowering a
limit evicts nothing. Certificates past the limit are left out of the Route that would add
them, with a problem, so the hosts of those other Routes hold keep theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hub import StatusBoard
from ..objects import Obj, split_key
from ..records.names import LOADBALANCER, ROUTE, RecordKind
from ..records.policy import Limits
from ..records.problems import Problem, Translation
from ..records.status import Event, SourceStatus
from ..sources.base import Source
from .caches import ObjectId, TenantCaches
from .records import TenantRecords


def _by_kind(limits: Limits) -> dict[RecordKind, int | None]:
    return {ROUTE: limits.routes, LOADBALANCER: limits.load_balancers}


class TenantLimits:
    def __init__(
        self,
        tenant: str,
        records: TenantRecords,
        sources: Mapping[str, Source],
        board: StatusBoard,
    ) -> None:
        self.tenant = tenant
        self.records = records
        self.sources = sources
        self.board = board
        #: objects of ours past a limit: no record, waiting for room
        self.waiting: set[ObjectId] = set()

    def _kind(self, oid: ObjectId) -> RecordKind:
        return self.sources[oid[0]].record

    def admit(self, batch: set[ObjectId], limits: Limits, caches: TenantCaches) -> set[ObjectId]:
        """The batch without new objects past the limits (and with waiting ones, while there
        is room for them)."""
        for kind, limit in _by_kind(limits).items():
            if limit is None:
                self.waiting = {o for o in self.waiting if self._kind(o) != kind}
                continue
            # Gone while waiting: nothing to admit.
            self.waiting = {
                o for o in self.waiting
                if self._kind(o) != kind or o[1] in caches.cache(self.sources[o[0]].resource)
            }  # fmt: skip
            room = max(limit - self.records.held(kind), 0)
            if room:
                batch = batch | {o for o in self.waiting if self._kind(o) == kind}
            new = sorted(self._new(batch, kind, caches), key=lambda n: (n[0], n[1]))
            for _, oid, obj, source in new[room:]:
                batch = batch - {oid}
                if oid not in self.waiting:
                    self.waiting.add(oid)
                    message = (
                        f"the tenant may have {limit} {kind.kind}s served; this one waits "
                        "until an older one goes or the limit is raised"
                    )
                    self._refuse(source, obj, "LimitExceeded", message)
            self.waiting -= {oid for _, oid, _, _ in new[:room]}
        return batch

    def _new(
        self, batch: set[ObjectId], kind: RecordKind, view: TenantCaches
    ) -> list[tuple[str, ObjectId, Obj, Source]]:
        """Objects of ours in the batch with no record of `kind` yet, with the time their
        tenant made them (ordering a tenant's own objects among themselves only)."""
        out = []
        for oid in batch:
            source = self.sources[oid[0]]
            ns, name = split_key(oid[1])
            if source.record != kind or self.records.known(kind, source.record_name(ns, name)):
                continue
            obj = view.cache(source.resource).get(oid[1])
            if obj is not None and source.is_ours(obj, view):
                out.append((str(obj["metadata"].get("creationTimestamp") or ""), oid, obj, source))
        return out

    def room_for_waiting(self, limits: Limits) -> bool:
        """Whether an object waits where there is room now (a record went)."""
        return any(
            limit is None or self.records.held(kind) < limit
            for kind, limit in _by_kind(limits).items()
            if any(self._kind(o) == kind for o in self.waiting)
        )

    def _refuse(self, source: Source, obj: Obj, reason: str, message: str) -> None:
        """An object of ours that gets no record: its status says why (no address), and an
        Event and a log line name it."""
        meta = obj["metadata"]
        status = SourceStatus(
            source.kind, meta["namespace"], meta["name"], str(meta.get("uid", "")),
            events=(Event("Warning", reason, message),),
            # A tenant's API server may say anything here: a generation that is not one is none.
            generation=g if isinstance(g := meta.get("generation"), int) else 0,
        )  # fmt: skip
        self.board.want(self.tenant, status)

    def certificates(self, record: str, result: Translation[Any], limit: int | None) -> None:
        """Route `record`'s certificates past the limit left out of its translation, with a
        problem: those other Routes hold already keep theirs."""
        tls = result.spec.get("tls")
        if limit is None or not tls:
            return
        ns = result.spec["source"]["namespace"]
        held = self.records.certificates(except_record=record)
        kept, refused = [], []
        for entry in tls:
            cert = (ns, entry["secretName"])
            if cert in held or len(held) < limit:
                held.add(cert)
                kept.append(entry)
            else:
                refused.append(entry["secretName"])
        if not refused:
            return
        problem = Problem(
            "LimitExceeded",
            f"the tenant may have {limit} certificates; not served: {', '.join(refused[:5])}",
        )
        result.problems.append(problem)
        result.spec["problems"] = [*result.spec.get("problems", []), problem.spec()]
        if kept:
            result.spec["tls"] = kept
        else:
            del result.spec["tls"]
