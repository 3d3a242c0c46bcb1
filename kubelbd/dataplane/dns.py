"""DNS in the data plane: every host Envoy serves is published, and nothing else.

The hosts come from the IR once Envoy reported a publish applied (the status reporter's
pass): a host is in them only while it is owned, allowed and served, so a name follows its
route exactly. The leader publishes (kubelbd.dns.rfc2136: one update per change, each with
prerequisites so that a name kubelbd does not own is never touched); it starts every term,
and then every RECONCILE seconds, from a zone transfer, so a host that went away while no
kubelbd ran is removed too. Every Route whose hosts are published says so in its
DNSPublished condition (kubelbd.ir.status.DNSState).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import anyio

from ..dns.desired import Key
from ..dns.records import Change, Delete, Endpoint, OwnedRecord, canonical, plan
from ..dns.records import Key as RecordSet
from ..dns.rfc2136 import RFC2136, Done, NotOurs, Outcome, Refused, Unreachable
from ..ir.status import DNSState
from ..retry import Backoff

log = logging.getLogger(__name__)

#: a full reconcile against a zone transfer this often, besides every term's first
RECONCILE = 300.0
TIMEOUT = 5.0
PENDING = DNSState(False, "Publishing", "waiting for the DNS server")
NOT_SERVED = DNSState(False, "NotServed", "nothing of this record is served: no name is published")


#: --dns-provider: kubelbd updates a server itself (RFC 2136), or writes external-dns's
#: DNSEndpoint objects for an external-dns the operator runs (dataplane/dnsendpoints.py)
RFC2136_PROVIDER = "rfc2136"
DNSENDPOINT_PROVIDER = "dnsendpoint"
PROVIDERS = (RFC2136_PROVIDER, DNSENDPOINT_PROVIDER)


@dataclass(frozen=True)
class DNSSettings:
    server: str = ""  # host:port; empty (and provider rfc2136): kubelbd publishes no names
    zone: str = ""
    key_name: str = ""
    key_secret: str = ""
    algorithm: str = "hmac-sha256"
    ttl: int = 60
    owner: str = "kubelbd"
    provider: str = RFC2136_PROVIDER

    @property
    def enabled(self) -> bool:
        return self.provider == DNSENDPOINT_PROVIDER or bool(self.server)


class NamesPublisher:
    """What the two ways of publishing (--dns-provider) share: the names wanted now, a term
    that starts only once it knows them, the records' states and who hears of a change."""

    #: a wanted record's DNSPublished before the first pass says more
    pending = PENDING

    def __init__(self, settings: DNSSettings, on_states: Callable[[set[Key]], None]) -> None:
        self.settings = settings
        self._on_states = on_states  # these records' DNSPublished changed
        self._wanted: dict[Key, list[Endpoint]] = {}
        #: record sets whose create found someone else's records, until the next transfer
        self._not_ours: dict[RecordSet, NotOurs] = {}
        self.states: dict[Key, DNSState] = {}
        self._wake = anyio.Event()
        #: set by the first `want` of a term: before it, every name kubelbd owns would look
        #: unwanted, and a start or a failover would withdraw them all
        self._known = anyio.Event()

    def state(self, key: Key) -> DNSState:
        """The record's DNSPublished as far as publishing goes: published, or why not."""
        if key not in self._wanted:
            return NOT_SERVED
        return self.states.get(key, self.pending)

    def new_term(self) -> None:
        """Leadership (again): wait for this term's word on what Envoy serves."""
        self._known = anyio.Event()

    def want(
        self, wanted: dict[Key, list[Endpoint]], affected: Collection[Key] | None = None
    ) -> None:
        """The names of what Envoy serves now (after it applied a publish; dns.desired).
        `affected`: the records whose endpoints may differ from the last `want`'s (None: any
        record's)."""
        self._known.set()
        if self._take(wanted, affected):
            self._wake.set()

    def _take(self, wanted: dict[Key, list[Endpoint]], affected: Collection[Key] | None) -> bool:
        """Keep `wanted`; whether the loop has anything new to do."""
        if wanted == self._wanted:
            return False
        self._wanted = wanted
        return True

    def _restate(
        self,
        keys: Iterable[Key] | None,
        current: Collection[Key],
        state_of: Callable[[Key], DNSState],
    ) -> None:
        """The states of these records worked out again (None: of every record in
        `current`, and only theirs kept); a record not in `current` dropped; the changed
        ones reported (identity compared first: one shared state, a server's failure, stands
        for every record). Every other record keeps its state object: every state worked out
        and compared again after every change was tens of milliseconds of the event loop at
        10,000 records."""
        before = self.states
        states: dict[Key, DNSState] = {} if keys is None else dict(before)
        changed: set[Key] = set()
        if keys is None:
            keys = current
            changed.update(before.keys() - current)
        for key in keys:
            if key not in current:
                if states.pop(key, None) is not None:
                    changed.add(key)
                continue
            state = states[key] = state_of(key)
            if (b := before.get(key)) is not state and b != state:
                changed.add(key)
        self.states = states
        if changed:
            self._on_states(changed)


@dataclass(frozen=True)
class _Pass:
    """What one publishing pass plans, and which records' states it may change."""

    endpoints: list[Endpoint]
    owned: dict[RecordSet, OwnedRecord]  # what kubelbd owns at those names
    kept: dict[str, DNSState]  # the other names' outcomes, as the last passes left them
    again: set[Key] | None  # the records to work out again (None: every record)
    gone: set[Key]  # the records wanted by the last pass and no longer


class DNSPublisher(NamesPublisher):
    """The leader's RFC 2136 publishing. A pass plans only the names whose endpoints changed
    since the last pass (and those the server failed): every name, at 10,000 routes, was
    30-50 ms of planning and 30 ms more of working out every record's state on the event
    loop, after every change. A zone transfer (every term's first pass, then every
    RECONCILE) plans every name again, so what changed behind kubelbd's back is mended."""

    def __init__(self, settings: DNSSettings, on_states: Callable[[set[Key]], None]) -> None:
        super().__init__(settings, on_states)
        self.client = RFC2136(
            settings.server, settings.zone, settings.key_name, settings.key_secret,
            settings.algorithm, settings.owner, TIMEOUT,
        )  # fmt: skip
        #: what the last pass planned from (None: the next pass plans every name)
        self._planned: dict[Key, list[Endpoint]] | None = None
        #: by name, why the last passes did not publish it (refused, or the server's answer)
        self._outcomes: dict[str, DNSState] = {}
        #: names the server failed at (refused, unreachable): planned again on every pass
        self._retry: set[str] = set()
        #: by name (as spelt, and canonically), the records wanting it, as of the last pass:
        #: those whose state a name planned again may change
        self._keys_at: dict[str, set[Key]] = {}
        #: the records whose endpoints may have changed since the last pass began (`want`'s
        #: `affected`, gathered; None: any record's)
        self._handed: set[Key] | None = None

    def _take(self, wanted: dict[Key, list[Endpoint]], affected: Collection[Key] | None) -> bool:
        if not super()._take(wanted, affected):
            return False
        if affected is None:
            self._handed = None
        elif self._handed is not None:
            self._handed.update(affected)
        return True

    async def run(self) -> None:
        """The leader's loop: a zone transfer, then the changes, until the next wake. A term
        starts once it knows what Envoy serves (the term's first status pass)."""
        await self._known.wait()
        owned: dict[RecordSet, OwnedRecord] | None = None
        backoff = Backoff(initial=1, maximum=30)
        next_reconcile = 0.0
        while True:
            wait = RECONCILE
            if owned is None or anyio.current_time() >= next_reconcile:
                answer = await self.client.owned()
                if isinstance(answer, dict):
                    owned, next_reconcile = answer, anyio.current_time() + RECONCILE
                    self._not_ours = {}  # the zone as it is now: ask again
                    self._planned = None  # and plan every name against it
                else:
                    owned = None
                    self._server_problem(answer)
                    wait = backoff.next()
            if owned is not None:
                failed = await self._publish(owned)
                wait = (
                    backoff.next() if failed else min(wait, next_reconcile - anyio.current_time())
                )
                if not failed:
                    backoff.reset()
            with anyio.move_on_after(max(wait, 0.0)):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _publish(self, owned: dict[RecordSet, OwnedRecord]) -> bool:
        """Apply the plan for what is wanted now; returns whether the server failed us
        (a retry is due). `owned` follows every change the server accepted."""
        wanted = self._wanted
        this = self._scope(wanted, owned)
        outcome = this.kept
        # In a worker thread, on a copy of what is owned, off the event loop that serves
        # route changes meanwhile (every name: 17 ms at 3,000 once each endpoint's checks
        # are kept, 90 ms before).
        planned = await anyio.to_thread.run_sync(
            plan, self.settings.zone, this.endpoints, this.owned
        )
        retry: set[str] = set()
        for refusal in planned.refused:
            # A host outside the zone is the operator's choice of zone, not the tenant's
            # fault: a condition, no Warning Event. A name the zone cannot hold is a fault.
            warn = refusal.problem.reason != "OutsideZone"
            outcome[refusal.endpoint.name] = DNSState(
                False, refusal.problem.reason, refusal.problem.message, warn=warn
            )
        failed = False
        for change in planned.changes:
            key = _change_key(change)
            if key in self._not_ours:
                # Refused as someone else's since the last zone transfer: not asked again
                # on every pass (any change anywhere starts one), only after the next.
                outcome[key[0]] = _state_of(key[0], self._not_ours[key])
                continue
            try:
                result = await self.client.apply(change)
            except Exception as e:
                log.exception("dns: %s: unexpected failure", key[0])
                result = Refused(f"{type(e).__name__}: {e}")
            if isinstance(result, NotOurs):
                self._not_ours[key] = result
            if isinstance(result, Done):
                _track(owned, change)
                continue
            name = key[0]
            if isinstance(result, (Refused, Unreachable)):
                failed = True
                retry.add(name)
            log.warning("dns: %s %s: %s", type(change).__name__.lower(), name, _text(result))
            outcome[name] = _state_of(name, result)
        self._outcomes, self._retry = outcome, retry
        self._settle(wanted, outcome, this.again, this.gone)
        return failed

    def _scope(
        self, wanted: dict[Key, list[Endpoint]], owned: dict[RecordSet, OwnedRecord]
    ) -> _Pass:
        """What this pass plans (`_Pass`): the endpoints and owned record sets at the names
        touched since the last pass; the outcomes of the other names, which stay what they
        were; the records whose state may change. Every name when there is no last pass. A
        name is touched when a record wanting it came, went or has a new list of endpoints
        (among the records `want` was told of: DesiredNames keeps an unchanged record's
        very list, so checking them costs no endpoint's hash), or when the server failed at
        it. A name's plan depends only on what is wanted and owned at that name (its
        canonical spelling), so planning the touched ones alone gives their part of the
        whole. Endpoints are planned in the order of their records' keys (which of two
        spellings of a name is refused depends on it), every record's for a whole plan, and
        those of the records at the touched names (`_keys_at`) for a part: no walk over every
        record (those were 15-20 ms of the event loop a pass at 10,000 routes). Routes of one
        tenant sharing a host want the same record set: planned once."""
        last, self._planned = self._planned, wanted
        handed, self._handed = self._handed, set()
        if last is None or handed is None:
            self._keys_at = {}
            for key, es in wanted.items():
                self._index(key, es, True)
            every = list(dict.fromkeys(e for key in sorted(wanted) for e in wanted[key]))
            return _Pass(every, dict(owned), {}, None, set())
        moved: set[Endpoint] = set()
        renewed = []
        gone: set[Key] = set()
        for key in handed:
            old, new = last.get(key), wanted.get(key)
            if old is new:
                continue
            if old:
                moved.update(old)
                self._index(key, old, False)
            if new is None:
                gone.add(key)
                continue
            renewed.append(key)
            moved.update(new)
            self._index(key, new, True)
        touched = {n for e in moved for n in (e.name, canonical(e.name))} | self._retry
        # Every endpoint to plan is at a touched name in one of its spellings, and the index
        # has its record under both: the records at the touched names are all of theirs.
        again = set(renewed)
        for name in touched:
            again.update(self._keys_at.get(name, ()))
        endpoints = list(dict.fromkeys(
            e for key in sorted(again) for e in wanted[key]
            if e.name in touched or canonical(e.name) in touched
        ))  # fmt: skip
        scope = {k: r for k, r in owned.items() if k[0] in touched} if touched else {}
        kept = dict(self._outcomes)
        # An outcome is kept under an endpoint's own spelling of its name, or a change's
        # canonical one: both go where the name is planned again.
        for name in touched:
            kept.pop(name, None)
        for e in endpoints:
            kept.pop(e.name, None)
        return _Pass(endpoints, scope, kept, again, gone)

    def _index(self, key: Key, endpoints: list[Endpoint], wants: bool) -> None:
        """`key` wants (or no longer wants) the names of `endpoints`, in both spellings."""
        for e in endpoints:
            for name in (e.name, canonical(e.name)):
                keys = self._keys_at.get(name)
                if wants:
                    if keys is None:
                        keys = self._keys_at[name] = set()
                    keys.add(key)
                elif keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._keys_at[name]

    def _settle(
        self,
        wanted: dict[Key, list[Endpoint]],
        outcome: dict[str, DNSState],
        again: set[Key] | None,
        gone: set[Key],
    ) -> None:
        """Each record's DNSPublished from its names' outcomes; the changed ones reported.
        Only the records `again` (`_scope`: handed over anew, or wanting a name planned
        again; None: every record) are worked out, and those `gone` dropped."""

        def state_of(key: Key) -> DNSState:
            es = wanted[key]
            problems = [outcome[e.name] for e in es if e.name in outcome]
            if problems:
                return problems[0]
            names = {f"{e.name} {e.rtype} {' '.join(e.targets)}" for e in es}
            return DNSState(True, "Published", ", ".join(sorted(names)))

        self._restate(None if again is None else again | gone, wanted.keys(), state_of)

    def _server_problem(self, answer: Refused | Unreachable) -> None:
        log.warning("dns: zone transfer from %s: %s", self.settings.server, _text(answer))
        self._planned = None  # the next transfer's pass plans every name
        failed = _state_of("", answer)
        self._restate(None, self._wanted.keys(), lambda key: failed)


def combined(server: DNSState, refused: DNSState | None) -> DNSState:
    """A record's DNSPublished: what the server did with its names, unless some name was
    never sent (dns.desired: not allowed, another's), which the record must hear about."""
    if refused is not None and (server.published or server.reason == NOT_SERVED.reason):
        return refused
    return server


def _change_key(change: Change) -> RecordSet:
    if isinstance(change, Delete):
        return (change.record.name, change.record.rtype)
    return (change.endpoint.name, change.endpoint.rtype)


def _track(owned: dict[RecordSet, OwnedRecord], change: Change) -> None:
    """The server applied `change`: what kubelbd owns now."""
    if isinstance(change, Delete):
        owned.pop((change.record.name, change.record.rtype), None)
        return
    e = change.endpoint
    owned[(e.name, e.rtype)] = OwnedRecord(e.name, e.rtype, e.targets, e.ttl, e.resource)


def _text(result: Outcome) -> str:
    return str(getattr(result, "detail", result))


def _state_of(name: str, result: Outcome) -> DNSState:
    if isinstance(result, NotOurs):
        return DNSState(
            False, "NameTaken",
            f"{name} is held by a record kubelbd does not own: left as it is", warn=True,
        )  # fmt: skip
    if isinstance(result, Refused):
        return DNSState(False, "UpdateRefused", f"the DNS server refused: {_text(result)}")
    return DNSState(False, "ServerUnreachable", f"the DNS server: {_text(result)}")
