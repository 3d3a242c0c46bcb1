"""Status after Envoy applied: the one place the data plane's statuses leave from.

After each publish this task waits until Envoy's admin interface reports the new file
versions applied, asks the data plane for the Reports of everything the publish touched
(computed by the pure kubelbd.ir.status), and hands them on: the record's status to a
StatusWriter (dedup, backoff, forgetting), the tenant object's to the StatusBoard, from
which each tenant task writes its own. Status is for people, traffic is for clients: the
wait lets Envoy apply the change without these writes competing for the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

import anyio

from .. import metrics
from ..hub import StatusBoard
from ..ir.status import Report
from ..kube import Kube
from ..kube.client import timestamp
from ..kube.status_writer import StatusWriter
from ..records import conditions
from ..records.conditions import Transitions, fingerprint, transitions
from ..records.names import LOADBALANCER, ROUTE, RecordKind
from ..records.objects import status_object
from .arrivals import Arrival

log = logging.getLogger(__name__)

STATUS_DELAY = 0.05
#: a record's status is written this long after it changes, with whatever changed meanwhile:
#: a new route's "applied" and, soon after, "published in DNS" are one write, and a burst of
#: 1,000 new routes leaves the tenants' own statuses (what their users wait for) the CPU
#: first (StatusWriter's settle)
RECORD_SETTLE = 2.0
#: and, while tenant objects' statuses are still to be written (a burst), up to this much
#: longer: the management API server's CPU goes to nothing the tenants wait for meanwhile
#: (StatusWriter's yield_to)
RECORD_YIELD = 15.0
APPLY_TIMEOUT = 30.0
#: field managers, one per kind of record (each owns the status fields it writes; a
#: LoadBalancer's allocation has a manager of its own, see l4.py)
MANAGERS = {ROUTE.kind: "kubelbd-dataplane", LOADBALANCER.kind: "kubelbd-dataplane-report"}

Reports = Callable[[set[str], set[str], bool], list[Report]]


class StatusReporter:
    def __init__(
        self,
        mgmt: Kube,
        board: StatusBoard,
        wait_applied: Callable[[float], Awaitable[bool]],
        reports: Reports,
        conditions: Callable[[RecordKind, str], Transitions | None] = lambda *_: None,
        carried: Callable[[RecordKind, str], bytes | None] = lambda *_: None,
    ) -> None:
        self.mgmt = mgmt
        self.board = board
        self._wait_applied = wait_applied
        self._reports = reports
        self._conditions = conditions  # as the record carried them when last seen
        #: the status a record carried when last seen (`carried_fingerprint`)
        self._carried = carried
        self.writer = StatusWriter(
            "records", settle=RECORD_SETTLE, yield_to=board.busy, yield_max=RECORD_YIELD
        )
        self._routes: set[str] = set()
        self._lbs: set[str] = set()
        self._published = anyio.Event()
        #: the transitions of the conditions last written, by record
        self._previous: dict[str, Transitions] = {}
        #: changes in the files published, waiting for Envoy to apply them (watch-to-applied)
        self._arrivals: list[Arrival] = []

    def due(
        self, routes: Iterable[str] = (), lbs: Iterable[str] = (), arrivals: Iterable[Arrival] = ()
    ) -> None:
        """These records' status may have changed with the files just published, which hold
        the changes that arrived at `arrivals`."""
        self._routes.update(routes)
        self._lbs.update(lbs)
        self._arrivals.extend(arrivals)
        if self._routes or self._lbs or self._arrivals:
            self._published.set()

    def pending(self) -> bool:
        """Statuses or latencies waiting to be reported."""
        return bool(self._routes or self._lbs or self._arrivals)

    def written(self, kind: RecordKind, record_id: str) -> Transitions | None:
        """The transitions of the conditions last written for a record, if any."""
        return self._previous.get(f"{kind.kind}/{record_id}")

    def forget(self, kind: RecordKind, record_id: str) -> None:
        self.writer.forget(f"{kind.kind}/{record_id}")
        self._previous.pop(f"{kind.kind}/{record_id}", None)

    async def run(self) -> None:
        while True:
            await self._published.wait()
            await anyio.sleep(STATUS_DELAY)
            self._published = anyio.Event()
            # What is due now was published by now: the wait is for these publishes (those
            # that come meanwhile are the next round's).
            arrivals, self._arrivals = self._arrivals, []
            routes, lbs = self._routes, self._lbs
            self._routes, self._lbs = set(), set()
            applied = await self._wait_applied(APPLY_TIMEOUT)
            if applied:
                now = time.monotonic()
                for kind, at in arrivals:
                    metrics.applied_after(kind, now - at)
                # Due again meanwhile: their newer state is reported once Envoy has it.
                routes, lbs = routes - self._routes, lbs - self._lbs
            else:
                self._routes |= routes
                self._lbs |= lbs
                self._arrivals[:0] = arrivals  # still waiting for Envoy
                log.warning(
                    "Envoy has not applied the published files within %.0f s; %d statuses"
                    " say Pending until it does", APPLY_TIMEOUT, len(routes) + len(lbs),
                )  # fmt: skip
                self._published.set()  # and wait again
            for report in self._reports(routes, lbs, applied):
                self._want(report)

    def _want(self, report: Report) -> None:
        key = f"{report.kind.kind}/{report.id}"
        # A record not written yet (a route served from its translation, generation 0) has
        # no status to write: writing it would be refused, or say an older generation saw
        # this. Its confirmation makes it due again (DataPlane's on_confirmed).
        if report.status.get("observedGeneration") != 0:
            wanted = fingerprint(report.status)
            # What the record carries already is not written again by a writer that has
            # written nothing for it (a new term's, a restarted kubelbd's): every record's
            # status applied again each term was 10,000 server-side applies at 10,000 routes,
            # on a management API server that was already timing status applies out.
            if self._carried(report.kind, report.id) == wanted:
                self.writer.observed(key, wanted)
            self.writer.want(key, wanted, partial(self._write, key, report))
        if report.source is not None:
            self.board.want(report.tenant, report.source)

    async def _write(self, key: str, report: Report) -> None:
        previous = self._previous.get(key)
        if previous is None:
            previous = self._conditions(report.kind, report.id)
        stamped = conditions.stamp(report.status["conditions"], previous, timestamp())
        status = {**report.status, "conditions": stamped}
        kind = report.kind
        written = await self.mgmt.apply(
            kind.resource,
            status_object(kind.kind, report.tenant, report.name, status),
            subresource="status",
            field_manager=MANAGERS[kind.kind],
        )
        self._previous[key] = transitions((written.get("status") or {}).get("conditions"))
