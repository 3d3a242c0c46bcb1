"""One tenant's records in the management cluster, as this tenant task wrote them.

The tenant task compares each new translation with what it wrote (the stored spec, as read
back at start-up: a record in an older shape compares unequal and is rewritten in today's),
writes only what changed, and hands every record to the data plane the moment it has it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, cast

from ..hub import RecordSink
from ..kube import Kube
from ..kube.client import precise_timestamp
from ..records.claims import with_claims, with_name_claims
from ..records.names import KINDS, ROUTE, RecordKind, namespace_of
from ..records.objects import record_object
from ..records.types import LoadBalancerSpec, RouteRecord, RouteSpec, SpecT

log = logging.getLogger(__name__)

RecordKey = tuple[str, str]  # (record kind, name)


class TenantRecords:
    def __init__(self, tenant: str, mgmt: Kube, sink: RecordSink) -> None:
        self.tenant = tenant
        self.mgmt = mgmt
        self.sink = sink
        self.written: dict[RecordKey, Any] = {}  # spec as stored
        self.recorded: dict[RecordKey, str] = {}  # when the management cluster stored it
        self._handed: dict[RecordKey, RouteSpec] = {}  # provisional, not written (yet)
        #: handed to the data plane but not written (yet): withdrawn even if never written
        self.unwritten: set[RecordKey] = set()

    async def load(self, kinds: Iterable[RecordKind]) -> None:
        written, recorded = {}, {}
        for kind in kinds:
            items, _ = await self.mgmt.list(kind.resource, namespace_of(self.tenant))
            for o in items:
                k = (kind.kind, o["metadata"]["name"])
                written[k] = o.get("spec") or {}
                recorded[k] = str(o["metadata"].get("creationTimestamp") or "")
        self.written, self.recorded = written, recorded

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
        return bool(self.written.get((kind.kind, name)) == spec)

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

    def count(self, kind: RecordKind) -> int:
        return sum(1 for k, _ in self.written if k == kind.kind)

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
        return len({n for k, n in (*self.written, *self.unwritten) if k == kind.kind})

    def provisional(self, kind: RecordKind, name: str, spec: RouteSpec) -> None:
        """Served already, before it is written (see RecordKind.provisional)."""
        self.sink.provisional(RouteRecord(self.tenant, name, spec))
        self.unwritten.add((kind.kind, name))
        self._handed[(kind.kind, name)] = spec

    async def write(self, kind: RecordKind, name: str, spec: RouteSpec | LoadBalancerSpec) -> None:
        start = time.perf_counter()
        written = await self.mgmt.apply(
            kind.resource, record_object(kind.kind, self.tenant, name, spec)
        )
        self.unwritten.discard((kind.kind, name))
        self._handed.pop((kind.kind, name), None)
        self.written[(kind.kind, name)] = cast(Any, spec)
        self.recorded.setdefault(
            (kind.kind, name), str(written["metadata"].get("creationTimestamp") or "")
        )
        self.sink.written(kind, written)
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

    async def delete(self, kind: RecordKind, name: str) -> None:
        self.sink.deleted(kind, self.tenant, name)
        await self.mgmt.delete(kind.resource, name, namespace_of(self.tenant))
        self.unwritten.discard((kind.kind, name))
        self._handed.pop((kind.kind, name), None)
        self.written.pop((kind.kind, name), None)
        self.recorded.pop((kind.kind, name), None)
