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
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

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
        #: the record each wanted DNSEndpoint (`namespace/name`) is for
        self._record_of: dict[str, Key] = {}
        #: records whose object was made without their uid: made again on every `want`
        self._uidless: set[Key] = set()
        #: per record, why its last write failed (until one succeeds)
        self._failed: dict[Key, DNSState] = {}
        #: what the next pass looks at: the records whose object may have changed, the
        #: DNSEndpoints seen changed or no longer wanted (None: every record and object)
        self._due: _Due | None = None
        #: the DNSEndpoints' informer as the last states were worked out (synced, served,
        #: error): every record's state when that moves
        self._seen_informer: tuple[bool, bool, str] | None = None

    def _take(self, wanted: dict[Key, list[Endpoint]], affected: Collection[Key] | None) -> bool:
        """Make the objects of the records `affected` again (None: every record's), and of
        those whose uid was not known: a record's uid coming (a route written after it was
        served) adds the owner. Every record's object made again at each change was 0.13 s
        of the event loop at 10,000 records."""
        if affected is None:
            keys: Iterable[Key] = wanted.keys() | self._objects.keys()
            self._due = None
        else:
            keys = set(affected) | self._uidless
        moved = False
        for k in keys:
            es, old = wanted.get(k), self._objects.get(k)
            obj = None
            if es is not None:
                obj = self._made(k, es)
            else:
                self._uidless.discard(k)
            if obj == old:
                continue
            moved = True
            if old is not None:
                del self._objects[k], self._record_of[key(old)]
                self._note(objects={key(old)})
            if obj is not None:
                self._objects[k], self._record_of[key(obj)] = obj, k
            self._note(records={k})
        moved |= wanted != self._wanted
        self._wanted = wanted
        return moved

    def _made(self, k: Key, endpoints: list[Endpoint]) -> Obj:
        """`k`'s object, owned by the record's uid as it is now."""
        uid = self._owner_uid(k)
        (self._uidless.discard if uid else self._uidless.add)(k)
        return dns_endpoint(k[0], k[1], endpoints, uid)

    def _note(self, records: Iterable[Key] = (), objects: Iterable[str] = ()) -> None:
        """The next pass looks at these records and DNSEndpoints too."""
        if self._due is not None:
            self._due.records.update(records)
            self._due.objects.update(objects)

    def _event(self, kind: str, obj: Obj) -> None:
        self._note(objects={key(obj)})
        self._wake.set()

    def _read(self, error: Exception | None) -> None:
        self._due = None  # listed again (None) or not: every state may change
        self._wake.set()

    async def run(self) -> None:
        """The leader's loop: a list (the informer's, every term), then a pass whenever a
        record's names or a DNSEndpoint change; a failed write is retried with backoff."""
        await self._known.wait()
        self._due = None  # a term looks at everything first
        informer = Informer(
            self.mgmt, DNSENDPOINTS, self._event, on_error=self._read,
            label_selector=f"{MANAGED_BY}={MANAGER}",
        )  # fmt: skip
        backoff = Backoff(initial=1, maximum=30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(informer.run)
            while True:
                wait = math.inf
                # The records this pass looks at (None: all), and the DNSEndpoints.
                records, objects = self._next_pass()
                if informer.synced.is_set() and await self._reconcile(informer, records, objects):
                    wait = backoff.next()
                elif informer.synced.is_set():
                    backoff.reset()
                # And those whose write failed just now.
                self._settle(informer, None if records is None else records | self._failed.keys())
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _reconcile(
        self, informer: Informer, records: set[Key] | None, objects: set[str] | None
    ) -> bool:
        """Write what differs, delete what no record wants; returns whether a retry is due.
        Only these records and DNSEndpoints (None: all): comparing every record's object
        with its DNSEndpoint was a tenth of a second of the event loop after each change at
        10,000 records."""
        if not informer.served:
            return False  # the CRD is missing: the records say so (_settle), nothing to write
        self._wake = anyio.Event()  # what comes during the pass wakes the next one
        cache = informer.cache
        retry = False
        for k in list(self._objects) if records is None else records:
            want = self._objects.get(k)
            if want is None:
                continue  # no longer wanted while this pass wrote
            have = cache.get(key(want))
            if have is None:
                # Made with the record's uid as it is now: one deleted by the garbage
                # collector, its owner gone (a record stored again), is not made again with
                # the same dead owner over and over.
                want = self._objects[k] = self._made(k, self._wanted.get(k, []))
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
        for name in list(cache) if objects is None else objects:
            have = cache.get(name)
            if have is None or name in self._record_of or tenant_of(have) is None:
                continue  # gone; wanted; or in no tenant's namespace: not kubelbd's making
            try:
                meta = have["metadata"]
                await self.mgmt.delete(
                    DNSENDPOINTS, meta["name"], meta["namespace"],
                    preconditions={"uid": meta.get("uid")},
                )  # fmt: skip
                log.info("dns: DNSEndpoint %s deleted: no record wants it", name)
            except (ApiError, ConnectionError) as e:
                log.warning("dns: cannot delete DNSEndpoint %s: %s", name, e)
                self._note(objects={name})
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

    def _settle(self, informer: Informer, records: set[Key] | None) -> None:
        """Each record's DNSPublished from its DNSEndpoint as last seen; the changed ones
        reported. Only these records (None: every record), unless the informer's own state
        moved."""
        unreadable = informer.last_error if not informer.synced.is_set() else None
        now = (informer.synced.is_set(), informer.served, str(unreadable or ""))
        if now != self._seen_informer:
            self._seen_informer, records = now, None
        self._restate(
            records, self._objects.keys(),
            lambda k: self._state(k, self._objects[k], informer, unreadable),
        )  # fmt: skip

    def _next_pass(self) -> tuple[set[Key] | None, set[str] | None]:
        """The records and DNSEndpoints the pass starting now looks at (None: all)."""
        due, self._due = self._due, _Due()
        if due is None:
            return None, None
        return self._looked_at(due), due.objects

    def _looked_at(self, due: _Due) -> set[Key]:
        """The records a pass looks at: those `due`, those of the DNSEndpoints seen changed,
        and those whose write failed."""
        seen = {k for o in due.objects if (k := self._record_of.get(o)) is not None}
        return due.records | seen | self._failed.keys()

    def _state(
        self, k: Key, want: Obj, informer: Informer, unreadable: Exception | None
    ) -> DNSState:
        """One record's DNSPublished, from its DNSEndpoint as last seen."""
        es = self._wanted.get(k, [])
        names = ", ".join(sorted({f"{e.name} {e.rtype} {' '.join(e.targets)}" for e in es}))
        have = informer.cache.get(key(want))
        if unreadable is not None:
            return DNSState(
                False, "DNSEndpointsUnreadable", f"cannot list DNSEndpoints: {unreadable}"
            )
        if not informer.synced.is_set():
            return PENDING
        if not informer.served:
            return NOT_INSTALLED
        if k in self._failed:
            return self._failed[k]
        if have is None or not same(have, want):
            return PENDING
        if observed(have):
            return DNSState(True, "ObservedByExternalDNS",
                            f"external-dns read DNSEndpoint {key(want)}: {names}")  # fmt: skip
        generation = have["metadata"].get("generation")
        return DNSState(
            False, "WaitingForExternalDNS",
            f"DNSEndpoint {key(want)} written ({names}); external-dns has not read "
            f"generation {generation} yet",
        )  # fmt: skip


@dataclass
class _Due:
    """What the next pass looks at beyond the records whose write failed."""

    records: set[Key] = field(default_factory=set)  # whose object may have changed
    objects: set[str] = field(default_factory=set)  # DNSEndpoints seen changed or let go


class Taken(Exception):
    """A DNSEndpoint by the record's name exists and kubelbd did not make it."""
