"""Which names kubelbd should publish, for which record, and which it must not (pure).

From what Envoy serves: a Route's served hosts (the IR decided them: owned, allowed, not
lost to another tenant) at the public address, a wildcard host as a wildcard record; a
Gateway API route's hostnames at the addresses of the Gateways serving them; a
LoadBalancer's names (its Service's annotation, or its automatic name) at the addresses it
is served at. A catch-all (no host) has no name.

One name, one owner. Routes and LoadBalancers of every tenant meet here, so this is where a
name two records want is given to one: the earliest claim by kubelbd's own clock (a Route's
claim of the host, a LoadBalancer's record creation), as the IR gives hosts to Routes. A
LoadBalancer's name under another record's wildcard host counts as that host, so a tenant
cannot take clients of a name another tenant serves by a wildcard. A record that loses a name
is told why (DNSPublished False); so is one whose host is not allowed or held by another
tenant, though nothing is published for those hosts in any case.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from ..ir.http import IR
from ..ir.status import DNSState
from ..records.names import LOADBALANCER, ROUTE, namespace_of
from ..records.problems import problems_of
from ..records.types import LBRecord, ProblemSpec, RouteRecord, fixed_width
from .records import Endpoint, RType

Key = tuple[str, str]
"""A record whose names are published: (record kind, record id)."""

_Claim = tuple[tuple[str, str], Key]  # ((when, tiebreak), key): the smallest wins


@dataclass
class Desired:
    #: per record, the record sets to publish (the names it owns, no others)
    endpoints: dict[Key, list[Endpoint]] = field(default_factory=dict)
    #: per record, why some of its names are not published, whatever the server says
    refused: dict[Key, DNSState] = field(default_factory=dict)
    #: per record, the names to write into the tenant object's status, once published
    names: dict[Key, list[str]] = field(default_factory=dict)
    #: the records whose entries above may differ from the last pass's, those gone included
    #: (None: any record's may): what the names' consumers look at again, not every record
    affected: frozenset[Key] | None = None


def route_key(rid: str) -> Key:
    return (ROUTE.kind, rid)


def lb_key(rid: str) -> Key:
    return (LOADBALANCER.kind, rid)


@lru_cache(maxsize=4096)
def record_type(target: str) -> RType:
    try:
        return "A" if ipaddress.ip_address(target).version == 4 else "AAAA"
    except ValueError:
        return "CNAME"


def _endpoints(name: str, targets: Sequence[str], ttl: int, resource: str) -> list[Endpoint]:
    """A and AAAA for addresses; a CNAME for a name (alone: a CNAME has no neighbours)."""
    by_type: dict[RType, list[str]] = {}
    for t in targets:
        by_type.setdefault(record_type(t), []).append(t)
    if "CNAME" in by_type and len(by_type) == 1:
        return [Endpoint(name, "CNAME", (by_type["CNAME"][0],), ttl, resource)]
    return [
        Endpoint(name, rtype, tuple(sorted(set(values))), ttl, resource)
        for rtype, values in sorted(by_type.items())
        if rtype != "CNAME"
    ]


def _ancestors(name: str) -> list[tuple[int, str]]:
    """(depth, wildcard) of every wildcard host that would cover `name` (depth 0) or one of
    its ancestors (the depth of that ancestor below `name`)."""
    labels = name.split(".")
    return [(depth, "*." + ".".join(labels[depth + 1 :])) for depth in range(len(labels) - 1)]


#: what a Route's wants are worked out from: the record, its spec and when it was recorded
#: (records compare by id and generation: a provisional one keeps generation 0 while its spec
#: moves, and one recorded again is generation 1 again, its claims younger), its served
#: hosts, a Gateway API route's hostnames at their Gateways' addresses, the hosts another
#: tenant holds
_RouteInputs = tuple[
    RouteRecord,
    object,
    str,
    tuple[str, ...],
    Mapping[str, Sequence[str]] | None,
    Sequence[tuple[str, str]] | None,
]
#: a LoadBalancer's: the record, its spec, when it was recorded and the addresses it is
#: served at
_LBInputs = tuple[LBRecord, object, str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _Want:
    """A record wants a name: by this claim, published as these record sets."""

    claim: _Claim
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class _Wants:
    """What one record asks of DNS, and what it was worked out from."""

    inputs: tuple[object, ...]
    #: by name, sorted; pairs, not a dict: one per record, and a record wants one name or
    #: two (a dict of one is 232 bytes, these 112)
    names: tuple[tuple[str, _Want], ...]
    problems: Sequence[ProblemSpec]
    conflicts: Sequence[tuple[str, str]] | None
    #: its own names (a Service's, an automatic one), which go into its status once published
    own: Sequence[str]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """Who publishes a name, as what, and who asked for it and lost (whether to another
    tenant)."""

    #: a dict, looked up by each record wanting the name: routes of one tenant sharing a
    #: host (Ingress merges them) all publish it, and a tenant may have thousands on one
    published: dict[Key, tuple[Endpoint, ...]]
    lost: Mapping[Key, bool]


_NONE_LOST: Mapping[Key, bool] = MappingProxyType({})


class DesiredNames:
    """Which names to publish, worked out again from one pass to the next so that a pass
    costs what changed, not the fleet: at 3,000 routes a whole pass takes a tenth of a
    second, and DNS waited behind it (rate-limited so as not to starve the event loop) for
    half a second per change. A record whose inputs are the ones of the last pass (the same
    objects: the model replaces records, never changes them) keeps its wants; only the names
    a changed record wants or wanted, or that a changed wildcard covers, are decided again,
    and only the records wanting those names get new answers."""

    def __init__(self) -> None:
        #: the public address and TTL the answers are for (None: start from nothing)
        self._settings: tuple[str, int] | None = None
        self._reset()

    def _reset(self) -> None:
        self._records: dict[Key, _Wants] = {}
        self._wanting: dict[str, dict[Key, _Want]] = {}  # per name, every record wanting it
        self._wildcards: dict[str, dict[Key, _Claim]] = {}  # per served wildcard host
        self._outcomes: dict[str, _Outcome] = {}
        self._out = Desired()
        #: per route id, the objects its wants were last worked out from, as they were found
        #: (the record, its served hosts, its hosts at Gateways, its conflicts): the sweep
        #: skips a route whose four are the very same objects
        self._seen: dict[str, tuple[object, object, object, object]] = {}
        self._lb_ids: set[str] = set()  # the LoadBalancers with wants
        self._fresh = True  # nothing worked out since the reset: every record is affected

    def update(
        self,
        routes: Mapping[str, RouteRecord],
        ir: IR,
        lbs: Mapping[str, LBRecord],
        lb_targets: Mapping[str, Sequence[str]],
        public_address: str,
        ttl: int,
        gateway_hosts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    ) -> Desired:
        """What to publish now; the Desired returned is not changed later. `lb_targets`: per
        LoadBalancer, where Envoy serves it (only those Envoy serves); `ttl`: the fleet's
        default; `gateway_hosts`: per Gateway API route, its served hostnames and the Gateway
        addresses each is served at (ir.gateway), which meet the Ingress hosts here, one owner
        per name as for them. A pass that fails leaves nothing half done: what it had
        changed of the last pass's answers and of what it saw is dropped, and the next pass
        starts from nothing."""
        with self._starting_over_on_failure():
            if self._settings != (public_address, ttl):
                self._reset()  # every record's endpoints change
                self._settings = (public_address, ttl)
            gateway_hosts = gateway_hosts or {}
            records, seen = self._records, self._seen
            # The sweep that finds what changed is the one part that takes every record: kept
            # to lookups and identity checks for each (the model replaces a record, its served
            # hosts and its conflicts when they change, never changes them): building each
            # route's inputs and comparing them was 20-50 ms a pass at 10,000 routes, in a
            # worker thread that holds the interpreter while the event loop serves a change.
            # Objects not the same are compared by their content, as before.
            served_at: Mapping[str, list[str]] = ir.served if public_address else {}
            conflicts_of = ir.conflicts
            changed: dict[Key, _Wants | None] = {}
            for rid, route in routes.items():
                objects = (route, served_at.get(rid), gateway_hosts.get(rid), conflicts_of.get(rid))
                last = seen.get(rid)
                if (
                    last is not None and last[0] is route and last[1] is objects[1]
                    and last[2] is objects[2] and last[3] is objects[3]
                ):  # fmt: skip
                    continue
                seen[rid] = objects
                key = route_key(rid)
                _, served, at, conflicts = objects
                inputs = (route, route.spec, route.recorded, tuple(served or ()), at, conflicts)
                old = records.get(key)
                if old is None or old.inputs != inputs:
                    changed[key] = _route_wants(key, inputs, public_address, ttl)
            for rid, rec in lbs.items():
                key = lb_key(rid)
                targets = tuple(lb_targets.get(rid) or ())
                old = records.get(key)
                lb_inputs = (rec, rec.spec, rec.recorded, targets)
                if old is None or old.inputs != lb_inputs:
                    changed[key] = _lb_wants(key, lb_inputs, ttl)
            if len(records) + sum(1 for k in changed if k not in records) != len(routes) + len(lbs):
                # Some went: the routes among them by a set difference of ids (every route with
                # wants has been seen), not a walk over every record.
                for rid in seen.keys() - routes.keys():
                    del seen[rid]
                    changed[route_key(rid)] = None
                changed.update((lb_key(rid), None) for rid in self._lb_ids - lbs.keys())
            self._lb_ids = set(lbs)
            dirty: set[str] = set()
            wildcards: set[str] = set()
            for key, new in changed.items():
                old = records.pop(key, None)
                if old is not None:
                    self._forget(key, old, dirty, wildcards)
                if new is not None:
                    records[key] = new
                    self._learn(key, new, dirty, wildcards)
            if wildcards:  # the names a changed wildcard covers are decided again too
                dirty.update(
                    name for name in self._wanting
                    if any(w in wildcards for _, w in _ancestors(name))
                )  # fmt: skip
            # Who gets new answers: the changed records, and every record wanting a name decided
            # again (a record stops wanting a name only by changing).
            affected = set(changed)
            for name in dirty:
                if name in self._wanting:
                    self._outcomes[name] = self._decide(name)
                    affected.update(self._wanting[name])
                else:
                    self._outcomes.pop(name, None)
            for key in affected:
                self._answer(key)
            out = self._out
            every, self._fresh = self._fresh, False
            return Desired(
                dict(out.endpoints), dict(out.refused), dict(out.names),
                None if every else frozenset(affected),
            )  # fmt: skip

    @contextmanager
    def _starting_over_on_failure(self) -> Iterator[None]:
        """A pass that fails leaves nothing half done: the next starts from nothing."""
        try:
            yield
        except BaseException:
            self._settings = None
            raise

    def _forget(self, key: Key, old: _Wants, dirty: set[str], wildcards: set[str]) -> None:
        for name, _ in old.names:
            dirty.add(name)
            wanting = self._wanting[name]
            del wanting[key]
            if not wanting:
                del self._wanting[name]
            if name in self._wildcards:
                wildcards.add(name)
                claims = self._wildcards[name]
                claims.pop(key, None)
                if not claims:
                    del self._wildcards[name]

    def _learn(self, key: Key, new: _Wants, dirty: set[str], wildcards: set[str]) -> None:
        for name, want in new.names:
            dirty.add(name)
            self._wanting.setdefault(name, {})[key] = want
            if key[0] == ROUTE.kind and name.startswith("*."):
                wildcards.add(name)
                self._wildcards.setdefault(name, {})[key] = want.claim

    def _decide(self, name: str) -> _Outcome:
        """One owner for `name`: the earliest claim, unless an older wildcard of another
        tenant keeps it. A LoadBalancer's name it serves, and any name below one it serves
        (which would become an empty name the wildcard no longer answers for), stay with
        that wildcard. A Route's own exact host under a wildcard is routed to that Route, so
        its name is too."""
        covering = [
            (depth, min(claims.values()))
            for depth, wildcard in _ancestors(name)
            if (claims := self._wildcards.get(wildcard))
        ]
        lost: dict[Key, bool] = {}
        kept: list[tuple[_Claim, _Want]] = []
        for key, want in self._wanting[name].items():
            claim = want.claim
            if any(
                _tenant(w[1]) != _tenant(key) and w < claim
                and (depth > 0 or key[0] == LOADBALANCER.kind)
                for depth, w in covering
            ):  # fmt: skip
                lost[key] = True
            else:
                kept.append((claim, want))
        published: dict[Key, tuple[Endpoint, ...]] = {}
        if kept:
            kept.sort(key=lambda c: c[0])
            (_, winner), first = kept[0]
            if first.endpoints:
                published[winner] = first.endpoints
            for (_, key), _want in kept[1:]:
                if (
                    first.endpoints and key[0] == winner[0] == ROUTE.kind
                    and _tenant(key) == _tenant(winner)
                ):  # fmt: skip
                    # Routes of one tenant share a host (Ingress merges them): the name is
                    # published for all of them, by the first.
                    published[key] = first.endpoints
                else:
                    lost[key] = _tenant(winner) != _tenant(key)
        return _Outcome(published, lost or _NONE_LOST)

    def _answer(self, key: Key) -> None:
        """`key`'s endpoints, refusal and names from the outcomes of the names it wants."""
        out = self._out
        wants = self._records.get(key)
        if wants is None:
            out.endpoints.pop(key, None)
            out.refused.pop(key, None)
            out.names.pop(key, None)
            return
        endpoints: list[Endpoint] = []
        taken: list[tuple[str, bool]] = []
        for name, _ in wants.names:
            outcome = self._outcomes[name]
            endpoints.extend(outcome.published.get(key, ()))
            if key in outcome.lost:
                taken.append((name, outcome.lost[key]))
        if endpoints:
            out.endpoints[key] = endpoints
        else:
            out.endpoints.pop(key, None)
        refused = _refusal(taken, wants.problems, wants.conflicts)
        if refused is None:
            out.refused.pop(key, None)
        else:
            out.refused[key] = refused
        if wants.own:
            published = {e.name for e in endpoints}
            out.names[key] = [n for n in wants.own if n in published]
        else:
            out.names.pop(key, None)


def _route_wants(key: Key, inputs: _RouteInputs, public_address: str, ttl: int) -> _Wants:
    """What a Route asks of DNS: its served hosts at the public address, a Gateway API
    route's at its Gateways' addresses."""
    route, _, _, served, at, conflicts = inputs
    hosts_at: dict[str, Sequence[str]] = {h: (public_address,) for h in served if h and h != "*"}
    hosts_at.update(at or {})
    r_ttl = route.spec.get("dns", {}).get("ttl", ttl)
    resource = f"route/{namespace_of(route.tenant)}/{route.name}"
    names = {
        host: _Want(
            ((route.claim_key(host)[0], key[1]), key),
            tuple(_endpoints(host, targets, r_ttl, resource)),
        )
        for host, targets in hosts_at.items()
    }
    own = route.spec.get("dns", {}).get("hostnames", [])
    return _Wants(inputs, _by_name(names), route.spec.get("problems", []), conflicts, own)


def _lb_wants(key: Key, inputs: _LBInputs, ttl: int) -> _Wants:
    """What a LoadBalancer asks of DNS: its names at the addresses it is served at (none
    while it is served nowhere), each claimed from when it asked for it."""
    rec, _, _, targets = inputs
    dns = rec.spec.get("dns", {})
    names = {}
    if targets and dns.get("hostnames"):
        resource = f"loadbalancer/{namespace_of(rec.tenant)}/{rec.name}"
        for name in dns["hostnames"]:
            since = (dns.get("claims") or {}).get(name) or rec.recorded
            claim = (fixed_width(since) if since else "9999", key[1]), key
            endpoints = _endpoints(name, targets, dns.get("ttl", ttl), resource)
            names[name] = _Want(claim, tuple(endpoints))
    return _Wants(
        inputs, _by_name(names), rec.spec.get("problems", []), None,
        dns.get("hostnames", []),
    )  # fmt: skip


def _by_name(names: dict[str, _Want]) -> tuple[tuple[str, _Want], ...]:
    return tuple(sorted(names.items(), key=lambda n: n[0]))


def _refusal(
    taken: Sequence[tuple[str, bool]],
    problems: Sequence[ProblemSpec],
    conflicts: Sequence[tuple[str, str]] | None,
) -> DNSState | None:
    """Why some of a record's names are not published: lost to another record (`taken`:
    the name, whether another tenant has it), or (its own condition and Event say so
    already; DNSPublished repeats why) not allowed, or another tenant's host."""
    if taken:
        if any(other for _, other in taken):
            reason, whose = "NameHeldByOtherTenant", "held by another tenant"
        else:
            reason, whose = "NameInUse", "held by an older object of this tenant"
        listed = ", ".join(n for n, _ in taken)
        return DNSState(False, reason, f"{listed}: {whose}; not published", warn=True)
    not_allowed = [p.message for p in problems_of(problems) if p.reason == "HostNotAllowed"]
    if not_allowed:
        return DNSState(False, "NameNotAllowed", "; ".join(not_allowed) + "; not published")
    if conflicts:
        held = ", ".join(h for h, _ in conflicts)
        return DNSState(
            False, "NameHeldByOtherTenant", f"{held}: held by another tenant; not published"
        )
    return None


def _tenant(key: Key) -> str:
    return key[1].split("/", 1)[0]
