"""hack/bench names: what one change costs the DNS stages, offline (no fleet).

`--routes` Route records over two tenants (the memory bench's, each with one served host)
are worked out once; then `--changes` times a new route comes and goes, each a pass of its
own, and every pass is timed in each stage kubelbd runs after Envoy applied a change:
`DesiredNames.update` (in a worker thread in kubelbd), the RFC 2136 publisher's part of it
(`DNSPublisher._scope` then `_settle`, on the event loop; no server: the outcomes are the
plan's refusals, as if the server took every change) and the DNSEndpoint writer's
(`_take` then `_settle` on an informer cache that holds what it wants, on the event loop).
A whole pass of each, from nothing, is the reference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from kubelbd.dataplane.dns import DNSENDPOINT_PROVIDER, DNSPublisher, DNSSettings
from kubelbd.dataplane.dnsendpoints import DNSEndpointWriter
from kubelbd.dns.desired import Desired, DesiredNames
from kubelbd.dns.records import plan
from kubelbd.ir.http import IR
from kubelbd.ir.status import DNSState
from kubelbd.kube.informer import Informer
from kubelbd.objects import key
from kubelbd.records.types import RouteRecord

from .memory import record
from .stats import percentile

PUBLIC = "198.51.100.7"
ZONE = "bench.test"  # the memory bench's hosts are all in it


class Pass:
    """One pass through the three stages, each timed."""

    def __init__(self) -> None:
        self.book = DesiredNames()
        self.rfc2136 = DNSPublisher(DNSSettings(server="127.0.0.1:53", zone=ZONE), _ignore)
        self.writer = DNSEndpointWriter(
            cast(Any, None), DNSSettings(provider=DNSENDPOINT_PROVIDER), _ignore, _uid
        )
        self.cache: dict[str, Any] = {}
        self.informer = cast(
            Informer,
            SimpleNamespace(
                cache=self.cache, synced=SimpleNamespace(is_set=lambda: True), served=True,
                last_error=None,
            ),
        )  # fmt: skip
        self.took: dict[str, list[float]] = {"desired": [], "rfc2136": [], "dnsendpoint": []}
        self.untimed = 0.0  # the bench's own part of a timed step

    def run(self, routes: dict[str, RouteRecord], ir: IR) -> None:
        wanted = self._timed(
            self.took["desired"], lambda: self.book.update(routes, ir, {}, {}, PUBLIC, 60)
        )
        self._timed(self.took["rfc2136"], lambda: self._rfc2136(wanted))
        self._timed(self.took["dnsendpoint"], lambda: self._dnsendpoint(wanted))

    def _timed(self, into: list[float], step: Callable[[], Any]) -> Any:
        self.untimed, start = 0.0, time.perf_counter()
        out = step()
        into.append(time.perf_counter() - start - self.untimed)
        return out

    def _rfc2136(self, wanted: Desired) -> None:
        p = self.rfc2136
        p.want(wanted.endpoints, wanted.affected)
        this = p._scope(p._wanted, {})
        outcome = dict(this.kept)
        for r in plan(ZONE, this.endpoints, this.owned).refused:
            outcome[r.endpoint.name] = DNSState(False, r.problem.reason, r.problem.message)
        p._outcomes = outcome
        p._settle(p._wanted, outcome, this.again, this.gone)

    def _dnsendpoint(self, wanted: Desired) -> None:
        w = self.writer
        w.want(wanted.endpoints, wanted.affected)
        records, _ = w._next_pass()
        # The informer holds what the writer wants (as once written and watched): its part
        # of the time is the watch's, not the writer's.
        paused = time.perf_counter()
        for k in w._objects if records is None else records:
            if (obj := w._objects.get(k)) is not None:
                self.cache[key(obj)] = obj
        self.untimed += time.perf_counter() - paused
        w._settle(self.informer, records)


def _ignore(keys: set[Any]) -> None:
    pass


def _uid(k: tuple[str, str]) -> str:
    return f"uid-{k[1]}"


def run(n: int, changes: int) -> None:
    routes = {r.id: r for r in map(record, range(n))}
    served = {rid: [r.spec["rules"][0]["host"]] for rid, r in routes.items()}
    p = Pass()
    p.run(dict(routes), IR(served=dict(served)))
    whole = {stage: took[0] for stage, took in p.took.items()}
    for took in p.took.values():
        took.clear()
    for i in range(changes):
        new = record(n + i)
        p.run({**routes, new.id: new}, IR(served={**served, new.id: [f"new{i}.bench.test"]}))
        p.run(dict(routes), IR(served=dict(served)))
    print(f"-- {n} routes, {changes} changes (each a pass when it came, one when it went)")
    print("| stage | whole pass ms | a change's pass: median ms | p99 ms |\n|---|---|---|---|")
    for stage, took in p.took.items():
        print(
            f"| {stage} | {whole[stage] * 1000:.1f} | {statistics.median(took) * 1000:.2f} | "
            f"{percentile(took, 99) * 1000:.2f} |"
        )
