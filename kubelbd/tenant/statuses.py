"""Status back into the tenant: what the data plane decided each object should show.

The data plane puts a SourceStatus per object on the StatusBoard (where it is served, and
the Events that explain what is not); this task writes its own tenant's through the object's
Source, which knows where its kind keeps an address, and records each Event once per
generation of the object (once, for kinds without generations, such as Services). When a
record goes, the data plane sends a final status (no address, no Events): once written, the
object is forgotten here. Writes go through a StatusWriter: dedup, backoff, forgetting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ..hub import StatusBoard
from ..kube import Kube
from ..kube.events import Recorder
from ..kube.status_writer import StatusWriter
from ..objects import Obj
from ..records.conditions import same, stamp
from ..records.status import Event, SourceStatus
from ..sources.base import Source
from ..sources.gatewayapi import stamped, without_times

log = logging.getLogger(__name__)

#: the field manager of tenant object statuses written by server-side apply
STATUS_MANAGER = "kubelbd"


def tenant_object_status(want: Any, applied: Obj, now: str) -> Obj | None:
    """The status to apply to an object kubelbd keeps in the tenant (a source's
    `tenant_objects`, e.g. its GatewayClass), from the status the source wants (None: it
    wants none) and the object as the apply left it: each condition observed at the
    object's generation, its lastTransitionTime kept while its status holds; None when the
    object holds it already."""
    if not isinstance(want, dict):
        return None
    generation = applied.get("metadata", {}).get("generation")
    wanted: list[Any] = [
        {**c, "observedGeneration": generation} if generation is not None else dict(c)
        for c in want.get("conditions") or []
    ]
    status = applied.get("status")
    have: dict[str, Any] = status if isinstance(status, dict) else {}
    found = have.get("conditions")
    previous = [
        c
        for c in (found if isinstance(found, list) else [])
        if isinstance(c, dict)
        and all(isinstance(c.get(k), str) for k in ("type", "status", "reason", "message"))
    ]  # what the tenant may have made of it: only conditions that compare
    # Other fields as wanted (a policy's ancestors, observed by the source itself); each
    # condition in them keeps its lastTransitionTime while its status holds.
    rest = {k: v for k, v in want.items() if k != "conditions"}
    if same(wanted, previous) and all(
        without_times(have.get(k)) == without_times(v) for k, v in rest.items()
    ):
        return None
    out = {k: stamped(v, have.get(k), now) for k, v in rest.items()}
    if "conditions" in want:  # a kind whose status has none (a policy's) is given none
        out["conditions"] = stamp(wanted, previous, now)
    return out


Lookup = Callable[[Source, str, str], Obj | None]


class TenantStatuses:
    def __init__(
        self,
        tenant: str,
        kube: Kube,
        board: StatusBoard,
        sources: Sequence[Source],
        lookup: Lookup,
    ) -> None:
        self.tenant = tenant
        self.kube = kube
        self.board = board
        self._sources = {s.kind: s for s in sources}
        self._lookup = lookup  # the object in the tenant's cache
        self.recorder = Recorder(kube)
        self.writer = StatusWriter(f"tenant {tenant} objects")
        self._emitted: dict[str, set[tuple[str, int, Event]]] = {}

    async def run(self) -> None:
        """Take what the data plane wants for this tenant, for as long as the task runs."""
        self.board.subscribe(self.tenant, lambda: self.writer.idle.is_set())
        try:
            while True:
                await self.board.wait(self.tenant)
                for status in self.board.take(self.tenant):
                    self.want(status)
        finally:
            self.board.unsubscribe(self.tenant)

    def want(self, status: SourceStatus) -> None:
        source = self._sources.get(status.kind)
        if source is None:
            return
        self.writer.want(status.key, status, partial(self._apply, source, status))

    async def _apply(self, source: Source, status: SourceStatus) -> None:
        obj = self._lookup(source, status.namespace, status.name)
        if obj is None or obj["metadata"].get("uid") != status.uid:
            self._forget(status)
            return  # gone, or replaced: its own record brings its own status
        await self._write(source, status, obj)
        if status.final:
            self._forget(status)

    def _forget(self, status: SourceStatus) -> None:
        """Nothing more to write for this object (until a record brings a new status)."""
        self._emitted.pop(status.key, None)
        if status.final:
            self.writer.forget(status.key)
            self.board.done(self.tenant, status)

    async def _write(self, source: Source, status: SourceStatus, obj: Obj) -> None:
        patch = source.status_patch(obj, status)
        if patch is not None and patch.type == "apply":
            body = {"apiVersion": source.api_version, "kind": source.kind,
                    "metadata": {"name": status.name, "namespace": status.namespace},
                    **patch.body}  # fmt: skip
            await self.kube.apply(
                source.resource, body, subresource="status", field_manager=STATUS_MANAGER
            )
        elif patch is not None:
            await self.kube.patch(
                source.resource, status.name, patch.body, status.namespace, subresource="status"
            )
        events = {(status.uid, status.generation, e) for e in status.events}
        emitted = self._emitted.get(status.key, set())
        for _, _, event in sorted(events - emitted, key=lambda e: e[2].reason):
            level = logging.WARNING if event.type == "Warning" else logging.INFO
            log.log(level, "tenant %s: %s %s/%s: %s", self.tenant, source.kind.lower(),
                    status.namespace, status.name, event.message)  # fmt: skip
            await self.recorder.emit(
                {"apiVersion": source.api_version, "kind": source.kind, **obj},
                event.type,
                event.reason,
                event.message,
            )
        if events:
            self._emitted[status.key] = events
        else:  # most statuses have none: no empty set kept for each (2.3 MiB at 10,000)
            self._emitted.pop(status.key, None)
