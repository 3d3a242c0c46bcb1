"""The names the data plane publishes in DNS, and each record's DNS state for its status.

DNS follows what Envoy serves: the names are worked out again (dns.desired.DesiredNames, from
what changed) after Envoy reported a publish applied, at most every NAMES_INTERVAL and for at
most NAMES_SHARE of the time, in a worker thread on a snapshot of the model. Who publishes
them (--dns-provider) is decided here and nowhere else: kubelbd itself over RFC 2136
(dataplane.dns), or external-dns, from the DNSEndpoints kubelbd writes (dataplane.dnsendpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

import anyio

from ..dns.desired import Desired, DesiredNames, Key
from ..ir.http import IR
from ..ir.status import DNSState
from ..kube import Kube
from ..records.types import LBRecord, RouteRecord
from .dns import DNSENDPOINT_PROVIDER, DNSPublisher, DNSSettings, combined
from .dnsendpoints import DNSEndpointWriter

#: the names are worked out at most this often (a burst of publishes is one pass), and for at
#: most this share of the time: a pass holds the interpreter while it runs (in a worker
#: thread, it still shares the GIL with the event loop). A pass costs what changed (~1.5 ms
#: for one change at 3,000 routes), the first of a term every record (0.1 s at 3,000)
NAMES_INTERVAL = 0.05
NAMES_SHARE = 0.05

#: per LoadBalancer, where Envoy serves it
Targets = dict[str, list[str]]


@dataclass(frozen=True)
class Served:
    """What Envoy serves, as the names are worked out from it. The dicts are copies: the
    model replaces the lists and records it holds, never changes them, so a shallow copy is
    a snapshot the worker thread can read while the event loop goes on."""

    routes: dict[str, RouteRecord]
    ir: IR
    lbs: dict[str, LBRecord]
    targets: Targets
    #: per Gateway API route, its served hostnames and the Gateway addresses of each
    gateway_hosts: Mapping[str, Mapping[str, Sequence[str]]]


class Names:
    """The names wanted now (`wanted`), who publishes them (`publisher`, None without DNS),
    and what a record's status says of them (`state`)."""

    def __init__(
        self,
        mgmt: Kube,
        settings: DNSSettings | None,
        public_address: str,
        changed: Callable[[set[Key]], None],
        uid: Callable[[Key], str | None],
    ) -> None:
        """`changed`: the records whose DNS state moved; `uid`: a stored record's uid (the
        DNSEndpoints name their owner by it; None for a route served before it is written)."""
        self.publisher: DNSPublisher | DNSEndpointWriter | None = None
        if settings is not None and settings.enabled:
            if settings.provider == DNSENDPOINT_PROVIDER:
                self.publisher = DNSEndpointWriter(mgmt, settings, changed, uid)
            else:
                self.publisher = DNSPublisher(settings, changed)
        self.public_address = public_address
        self.wanted = Desired()  # the names of what Envoy serves, as last applied
        self._book = DesiredNames()  # works them out again from what changed
        self._changed = changed
        self._inputs: object = None
        self._due = anyio.Event()  # Envoy applied a publish: the names may have moved

    def due(self) -> None:
        """Envoy applied a publish: the names are worked out again (soon, not now)."""
        self._due.set()

    def refused(self, key: Key) -> bool:
        return key in self.wanted.refused

    def state(self, key: Key) -> DNSState | None:
        """What the record's DNSPublished condition says (None: kubelbd publishes no names)."""
        if self.publisher is None:
            return None
        server = self.publisher.state(key)
        # The names go into the object's status once the server has them, even when another
        # name of the object was refused.
        names = tuple(self.wanted.names.get(key, ())) if server.published else ()
        return replace(combined(server, self.wanted.refused.get(key)), names=names)

    async def run(
        self, now: Callable[[], tuple[int, Targets]], served: Callable[[Targets], Served]
    ) -> None:
        """Worked out at most every NAMES_INTERVAL, and less often when a pass is long
        (NAMES_SHARE; on the leader): done before every status report, a pass over every
        route held up the statuses of a stream of changes by seconds. What it changes in a
        record's DNS state is reported as it is found. `now`: the model's generation (it
        moves whenever the model may have changed) and the LoadBalancers' targets; only when
        they moved is a snapshot taken (`served`) and the names worked out again."""
        while True:
            await self._due.wait()
            self._due = anyio.Event()
            start = time.perf_counter()
            generation, targets = now()
            inputs = (generation, sorted((rid, tuple(t)) for rid, t in targets.items()))
            if inputs != self._inputs:
                self._inputs = inputs
                await self._update(served(targets))
            took = time.perf_counter() - start
            await anyio.sleep(max(NAMES_INTERVAL, took / NAMES_SHARE))

    async def _update(self, served: Served) -> None:
        """In a worker thread: a term's first pass takes every route, a third of a second
        at 3,000 on a loaded fleet, and on the event loop it held up every change that came
        meanwhile (the p99 of a route change)."""
        if self.publisher is None:
            return
        wanted = await anyio.to_thread.run_sync(partial(
            self._book.update, served.routes, served.ir, served.lbs, served.targets,
            self.public_address, self.publisher.settings.ttl, served.gateway_hosts,
        ))  # fmt: skip
        before, self.wanted = self.wanted, wanted
        self.publisher.want(wanted.endpoints, wanted.affected)
        # A record's names, or why some are refused, moved: its status says so. Only the
        # records the pass answered again can have moved (every record's, compared, was
        # milliseconds of the event loop a pass at 10,000 routes).
        keys: Iterable[Key]
        if wanted.affected is not None:
            keys = wanted.affected
        else:
            keys = before.names.keys() | wanted.names.keys()
            keys |= before.refused.keys() | wanted.refused.keys()
        self._changed({
            key for key in keys
            if before.names.get(key) != wanted.names.get(key)
            or before.refused.get(key) != wanted.refused.get(key)
        })  # fmt: skip
