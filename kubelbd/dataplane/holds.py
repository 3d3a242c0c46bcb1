"""Make before break: a served route's change that sends to a backend Envoy has no cluster
for yet is held until that backend answers.

A Service a route did not use before has a NodePort (often a twin kubelbd has just made) that
the tenant's kube-proxy still has to program; a route switched to it at once answers 503
until then (measured: bursts of 29-49 in ~45 ms at a switch under load). So the change's new
clusters go to Envoy first (`Model.prepare`) while the route keeps sending where it did; the
new backend is probed through its NodePort (dataplane.probe) until it answers and Envoy has
applied the clusters (and warmed them: active health checks run first); then the change is
applied. A backend that never answers holds the change `TIMEOUT` at most (logged, then
applied: the tenant asked for it). A new route, a deleted one, and a change whose backends
Envoy already has are never held; a newer version of a held route replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from ..ir.http import Cluster, Delta, Model
from ..records.types import RouteRecord
from ..retry import Backoff

log = logging.getLogger(__name__)

#: how long a change waits at most for its new backends
TIMEOUT = 10.0
#: between two probes of a backend that does not answer yet: soon at first (a kube-proxy
#: programs a new NodePort within tens of milliseconds), then at most this often
FIRST_INTERVAL = 0.005
INTERVAL = 0.05
#: probes in flight at once, of every tenant (each opens a connection to every node of the
#: backend's tenant: a tenant switching many routes to backends that never answer would
#: otherwise have kubelbd open connections by the thousand)
PROBES = 16

Probe = Callable[[Cluster], Awaitable[bool]]
#: waits until Envoy has applied this publish (by number) and warmed these clusters
EnvoyHas = Callable[[int, set[str]], Awaitable[None]]


@dataclass
class _Hold:
    record: RouteRecord
    clusters: set[str]  # its clusters Envoy had none of
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: set once the cluster file with its clusters is published: that publish's number
    published: anyio.Event = field(default_factory=anyio.Event)
    seq: int = 0
    ready: bool = False


class Holds:
    def __init__(self, probe: Probe, envoy_has: EnvoyHas, wake: Callable[[], None]) -> None:
        self._probe = probe
        self._envoy_has = envoy_has
        self._wake = wake
        self._holds: dict[str, _Hold] = {}
        self._let_go: list[RouteRecord] = []  # released: to unprepare once applied
        self._task_group: TaskGroup | None = None
        self._probing = anyio.Semaphore(PROBES)

    def start(self, task_group: TaskGroup) -> None:
        """Where the probes run (the data plane's task group)."""
        self._task_group = task_group

    def record(self, rid: str) -> RouteRecord | None:
        """The held version of a route (the newest the tenant side gave), if held."""
        held = self._holds.get(rid)
        return held.record if held is not None else None

    def confirm(self, record: RouteRecord) -> bool:
        """A held version came back written (its generation): kept as the one to apply."""
        held = self._holds.get(record.id)
        if held is None:
            return False
        held.record = record
        return True

    def take(
        self, model: Model, upserts: dict[str, RouteRecord], deletes: Iterable[str]
    ) -> tuple[dict[str, RouteRecord], Delta]:
        """The upserts to apply now (the others held, and held ones now ready added), and the
        clusters prepared for the ones held."""
        delta = Delta()
        for rid in deletes:
            self._drop(rid, model, delta)
        apply = dict(upserts)
        for rid in [rid for rid in self._holds if rid in upserts]:
            self._drop(rid, model, delta)  # a newer version: it is looked at afresh
        pending = {c for held in self._holds.values() for c in held.clusters}
        for rid, record in upserts.items():
            if rid not in model.routes or self._task_group is None:
                continue  # nothing served yet: nothing to break
            new = model.new_clusters(record) | (model.clusters_of(record) & pending)
            if not new:
                continue
            del apply[rid]
            delta.clusters |= model.prepare(record).clusters
            held = self._holds[rid] = _Hold(record, new)
            log.debug("route %s: held until %s answers", rid, ", ".join(sorted(new)))
            pending |= new
            self._task_group.start_soon(self._watch, held, model)
        for rid, held in list(self._holds.items()):
            if held.ready:
                del self._holds[rid]
                apply[rid] = held.record
                self._let_go.append(held.record)
        return apply, delta

    def published(self, seq: int) -> None:
        """The files of the render that held changes are published (`seq`: the number of the
        publish now): Envoy is to apply it before they are released."""
        for held in self._holds.values():
            if not held.published.is_set():
                held.seq = seq
                held.published.set()

    def applied(self, model: Model) -> Delta:
        """After the model applied what `take` gave: the prepared clusters of the changes
        released let go (those a route now sends to stay)."""
        delta = Delta()
        for record in self._let_go:
            delta.clusters |= model.unprepare(record).clusters
        self._let_go = []
        return delta

    def _drop(self, rid: str, model: Model, delta: Delta) -> None:
        """A held change deleted or replaced: its probes stop, its prepared clusters go
        (before a newer version of it is prepared under the same name)."""
        held = self._holds.pop(rid, None)
        if held is not None:
            held.scope.cancel()
            delta.clusters |= model.unprepare(held.record).clusters

    async def _probed(self, cluster: Cluster) -> bool:
        async with self._probing:
            return await self._probe(cluster)

    async def _watch(self, held: _Hold, model: Model) -> None:
        """Probe the held change's new backends until each answers and Envoy has them, or
        TIMEOUT; then let the next render apply it."""
        rid = held.record.id
        with held.scope:
            with anyio.move_on_after(TIMEOUT) as waiting:
                for name in sorted(held.clusters):
                    backoff = Backoff(initial=FIRST_INTERVAL, maximum=INTERVAL)
                    while True:
                        cluster = model.ir.clusters.get(name)
                        if cluster is not None and await self._probed(cluster):
                            break
                        await anyio.sleep(backoff.next())
                await held.published.wait()
                await self._envoy_has(held.seq, held.clusters)
            if waiting.cancelled_caught:
                log.warning(
                    "route %s: backend %s did not answer in %.0f s: its change is applied anyway",
                    rid, ", ".join(sorted(held.clusters)), TIMEOUT,
                )  # fmt: skip
            else:
                log.debug("route %s: %s answers: released", rid, ", ".join(sorted(held.clusters)))
            held.ready = True
            self._wake()
