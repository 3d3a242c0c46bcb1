"""DNS through external-dns (--dns-provider=dnsendpoint): the names kubelbd serves written as
DNSEndpoint objects (kubelbd.dns.endpoints) in the management cluster, for an external-dns the
operator runs with its `crd` source and whatever provider and registry it likes.

The same interface as dataplane.dns.DNSPublisher, so the data plane picks one of them in one
place: `want` (what Envoy serves, after it applied a publish), `state` (a record's
DNSPublished), `new_term` and `run` (the leader's loop). `client` is None: ACME DNS-01 needs a
server kubelbd updates itself, which this mode has not.

Only the leader writes (`run` runs in its term). Every term starts from a list of kubelbd's
DNSEndpoints (the informer's first list, by the managed-by label) and removes those no record
wants, including what was left while no kubelbd ran; then it follows the watch. A DNSEndpoint
without kubelbd's label is never written, and a name taken by one is the record's condition.
Writes are compare-then-write (create when absent, server-side apply when different), so a
new term or a repeated pass changes nothing that is right already; a failed write is retried
with backoff, in this loop only: routing never waits for it.

DNSPublished here says what kubelbd can know: True (ObservedByExternalDNS) once external-dns
has read the object's current generation (status.observedGeneration); False while it has not
(WaitingForExternalDNS), or when the write failed (the API's reason).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection

import anyio

from ..dns.desired import Key
from ..dns.endpoints import DNSENDPOINTS, dns_endpoint, observed, same
from ..dns.records import Endpoint
from ..ir.status import DNSState
from ..kube import ApiError, Kube
from ..kube.informer import Informer
from ..objects import MANAGED_BY, MANAGER, Obj, key, managed_by_us
from ..records.names import tenant_of
from ..retry import Backoff
from .dns import DNSSettings, NamesPublisher

log = logging.getLogger(__name__)

PENDING = DNSState(False, "Publishing", "writing the record's DNSEndpoint")
NOT_INSTALLED = DNSState(
    False, "DNSEndpointNotServed",
    "the management cluster does not serve externaldns.k8s.io/v1alpha1 DNSEndpoint: "
    "install external-dns's CRD (kubelbd asks again every 30 s)",
)  # fmt: skip


class DNSEndpointWriter(NamesPublisher):
    #: no DNS server of kubelbd's own: ACME DNS-01 is not built in this mode
    client = None
    pending = PENDING

    def __init__(
        self,
        mgmt: Kube,
        settings: DNSSettings,
        on_states: Callable[[set[Key]], None],
        owner_uid: Callable[[Key], str | None],
    ) -> None:
        super().__init__(settings, on_states)
        self.mgmt = mgmt
        self._owner_uid = owner_uid  # the record's uid, once it is stored (its owner)
        #: per record, the DNSEndpoint it wants (by the wanted endpoints and the owner's uid)
        self._objects: dict[Key, Obj] = {}
        #: per record, why its last write failed (until one succeeds)
        self._failed: dict[Key, DNSState] = {}

    def _take(self, wanted: dict[Key, list[Endpoint]], affected: Collection[Key] | None) -> bool:
        """A record's uid coming (a route written after it was served) changes its object
        too: the owner is added. Every record's object is made again (`affected` is not
        used: a uid comes without any)."""
        objects = {k: dns_endpoint(k[0], k[1], es, self._owner_uid(k)) for k, es in wanted.items()}
        if wanted == self._wanted and objects == self._objects:
            return False
        self._wanted, self._objects = wanted, objects
        return True

    def _event(self, kind: str, obj: Obj) -> None:
        self._wake.set()

    def _read(self, error: Exception | None) -> None:
        self._wake.set()  # listed (None) or not: either way the states may change

    async def run(self) -> None:
        """The leader's loop: a list (the informer's, every term), then a pass whenever a
        record's names or a DNSEndpoint change; a failed write is retried with backoff."""
        await self._known.wait()
        informer = Informer(
            self.mgmt, DNSENDPOINTS, self._event, on_error=self._read,
            label_selector=f"{MANAGED_BY}={MANAGER}",
        )  # fmt: skip
        backoff = Backoff(initial=1, maximum=30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(informer.run)
            while True:
                wait = math.inf
                if informer.synced.is_set() and await self._reconcile(informer):
                    wait = backoff.next()
                elif informer.synced.is_set():
                    backoff.reset()
                self._settle(informer)
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _reconcile(self, informer: Informer) -> bool:
        """Write what differs, delete what no record wants; returns whether a retry is due."""
        if not informer.served:
            return False  # the CRD is missing: the records say so (_settle), nothing to write
        self._wake = anyio.Event()  # what comes during the pass wakes the next one
        cache = informer.cache
        retry = False
        for k, want in list(self._objects.items()):
            have = cache.get(key(want))
            if have is not None and same(have, want):
                self._failed.pop(k, None)
                continue
            try:
                await self._write(have, want)
                self._failed.pop(k, None)
            except Taken as e:
                # Asked again on the backoff: its going brings no event to kubelbd's watch.
                self._failed[k] = DNSState(False, "DNSEndpointTaken", str(e), warn=True)
                retry = True
            except ApiError as e:
                log.warning("dns: DNSEndpoint %s: %s", key(want), e)
                invalid = e.status == 422  # the input, not the API: a retry changes nothing
                reason = "DNSEndpointInvalid" if invalid else "DNSEndpointWriteFailed"
                text = f"writing DNSEndpoint {key(want)}: {e}"
                self._failed[k] = DNSState(False, reason, text, warn=invalid)
                retry |= not invalid
            except ConnectionError as e:
                log.warning("dns: DNSEndpoint %s: %s", key(want), e)
                self._failed[k] = DNSState(False, "DNSEndpointWriteFailed", str(e))
                retry = True
        wanted = {key(o) for o in self._objects.values()}
        for name, have in list(cache.items()):
            if name in wanted or tenant_of(have) is None:
                continue  # wanted; or in no tenant's namespace: not kubelbd's making
            try:
                meta = have["metadata"]
                await self.mgmt.delete(
                    DNSENDPOINTS, meta["name"], meta["namespace"],
                    preconditions={"uid": meta.get("uid")},
                )  # fmt: skip
                log.info("dns: DNSEndpoint %s deleted: no record wants it", name)
            except (ApiError, ConnectionError) as e:
                log.warning("dns: cannot delete DNSEndpoint %s: %s", name, e)
                retry = True
        self._failed = {k: v for k, v in self._failed.items() if k in self._objects}
        return retry

    async def _write(self, have: Obj | None, want: Obj) -> None:
        """Create it, or apply what kubelbd wants over its own: never over another's object
        of the same name (it is not in the informer, which sees kubelbd's only)."""
        if have is None:
            try:
                await self.mgmt.create(DNSENDPOINTS, want)
                log.info("dns: DNSEndpoint %s created", key(want))
                return
            except ApiError as e:
                if e.status != 409:
                    raise
            existing = await self.mgmt.get_or_none(
                DNSENDPOINTS, want["metadata"]["name"], want["metadata"]["namespace"]
            )
            if existing is not None and not managed_by_us(existing):
                raise Taken(
                    f"DNSEndpoint {key(want)} exists and is not kubelbd's "
                    f"(no {MANAGED_BY}={MANAGER}): left as it is"
                )
            # kubelbd's own, made a moment ago (the watch has not brought it yet), or gone
            # again: the apply below makes it what it should be either way.
        await self.mgmt.apply(DNSENDPOINTS, want)
        log.info("dns: DNSEndpoint %s written", key(want))

    def _settle(self, informer: Informer) -> None:
        """Each record's DNSPublished from its DNSEndpoint as last seen; the changed ones
        reported."""
        states: dict[Key, DNSState] = {}
        unreadable = informer.last_error if not informer.synced.is_set() else None
        for k, want in self._objects.items():
            es = self._wanted.get(k, [])
            names = ", ".join(sorted({f"{e.name} {e.rtype} {' '.join(e.targets)}" for e in es}))
            have = informer.cache.get(key(want))
            if unreadable is not None:
                text = f"cannot list DNSEndpoints: {unreadable}"
                state = DNSState(False, "DNSEndpointsUnreadable", text)
            elif not informer.synced.is_set():
                state = PENDING
            elif not informer.served:
                state = NOT_INSTALLED
            elif k in self._failed:
                state = self._failed[k]
            elif have is None or not same(have, want):
                state = PENDING
            elif observed(have):
                state = DNSState(True, "ObservedByExternalDNS",
                                 f"external-dns read DNSEndpoint {key(want)}: {names}")  # fmt: skip
            else:
                generation = have["metadata"].get("generation")
                state = DNSState(
                    False, "WaitingForExternalDNS",
                    f"DNSEndpoint {key(want)} written ({names}); external-dns has not read "
                    f"generation {generation} yet",
                )  # fmt: skip
            states[k] = state
        self._report(states)


class Taken(Exception):
    """A DNSEndpoint by the record's name exists and kubelbd did not make it."""
