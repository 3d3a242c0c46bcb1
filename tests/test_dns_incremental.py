"""kubelbd.dataplane.dns: a publishing pass plans only the names touched since the last one.

At 10,000 routes, planning every name and spelling out every record's state again after each
change was 60-80 ms of kubelbd's CPU a change, 30 ms of it on the event loop. What a pass
plans now is the part of the whole plan at the names whose endpoints came, went or changed
(and those the server failed at); the property below holds it to the whole plan.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kubelbd.dataplane.dns import DNSPublisher, DNSSettings, _Pass
from kubelbd.dns.records import (
    Create,
    Delete,
    Endpoint,
    Key,
    OwnedRecord,
    Plan,
    RType,
    plan,
)
from kubelbd.ir.status import DNSState

ZONE = "example.test"
SETTINGS = DNSSettings(server="127.0.0.1:53", zone=ZONE, key_name="k", key_secret="c2VjcmV0")


def publisher() -> DNSPublisher:
    return DNSPublisher(SETTINGS, lambda changed: None)


def ep(name: str, target: str = "192.0.2.1", rtype: RType = "A") -> Endpoint:
    return Endpoint(name, rtype, (target,), 60, f"route/tenant-alpha/{name}")


def applied(owned: dict[Key, OwnedRecord], changes: Plan) -> dict[Key, OwnedRecord]:
    """What kubelbd owns once the server accepted every change (as the publisher tracks)."""
    out = dict(owned)
    for change in changes.changes:
        if isinstance(change, Delete):
            out.pop((change.record.name, change.record.rtype), None)
        else:
            e = change.endpoint
            out[(e.name, e.rtype)] = OwnedRecord(e.name, e.rtype, e.targets, e.ttl, e.resource)
    return out


Wanted = dict[tuple[str, str], list[Endpoint]]


def records(endpoints: list[Endpoint]) -> Wanted:
    """One record per endpoint, as DesiredNames hands them over (record -> its endpoints)."""
    return {("Route", f"t/{e.name}/{e.rtype}/{e.targets}"): [e] for e in endpoints}


def handed(p: DNSPublisher, wanted: Wanted, owned: dict[Key, OwnedRecord]) -> _Pass:
    """A pass's part, with the records handed over as `want` gets them from DesiredNames:
    those whose list is not the very one the last pass had (tests/test_dns_desired.py holds
    DesiredNames to naming every other)."""
    last = p._planned or {}
    if p._handed is not None:
        p._handed.update(k for k in last.keys() | wanted.keys() if last.get(k) is not wanted.get(k))
    return p._scope(wanted, owned)


def first_pass(p: DNSPublisher, wanted: Wanted, owned: dict[Key, OwnedRecord]) -> Plan:
    """A pass with no last pass (a term's first, after its zone transfer): every name."""
    this = p._scope(wanted, owned)
    assert this.kept == {}
    whole = plan(ZONE, this.endpoints, this.owned)
    p._outcomes = refusals(whole)
    p._settle(wanted, p._outcomes, this.again, this.gone)
    return whole


def refusals(planned: Plan) -> dict[str, DNSState]:
    """A plan's refusals as a pass's outcomes (the server accepting every change)."""
    return {
        r.endpoint.name: DNSState(False, r.problem.reason, r.problem.message)
        for r in planned.refused
    }


def test_a_pass_after_one_change_plans_that_name_only() -> None:
    p = publisher()
    wanted = records([ep(f"h{i}.{ZONE}") for i in range(1000)])
    owned = applied({}, first_pass(p, wanted, {}))
    assert len(owned) == 1000

    added = ep(f"new.{ZONE}")
    this = handed(p, {**wanted, **records([added])}, owned)
    endpoints, scope = this.endpoints, this.owned
    assert (endpoints, scope) == ([added], {})
    assert [type(c) for c in plan(ZONE, endpoints, scope).changes] == [Create]

    owned = applied(owned, plan(ZONE, endpoints, scope))
    fewer = dict(list(wanted.items())[1:])  # h0 and new went
    this = handed(p, fewer, owned)
    endpoints, scope = this.endpoints, this.owned
    assert endpoints == []
    assert set(scope) == {(f"h0.{ZONE}", "A"), (f"new.{ZONE}", "A")}
    deleted = plan(ZONE, endpoints, scope).changes
    assert sorted(c.record.name for c in deleted if isinstance(c, Delete)) == [
        f"h0.{ZONE}",
        f"new.{ZONE}",
    ]

    # Nothing changed: nothing planned, and the outcomes stay what they were.
    this = handed(p, fewer, owned)
    assert (this.endpoints, this.owned) == ([], {})
    # A record handed over with a new list of the same endpoints: its name is planned again
    # (and nothing comes of it).
    key = next(iter(fewer))
    assert handed(p, {**fewer, key: list(fewer[key])}, owned).endpoints == fewer[key]


def test_a_refusal_stays_with_its_name_until_that_name_changes() -> None:
    p = publisher()
    outside, fine = ep("shop.elsewhere.test"), ep(f"shop.{ZONE}")
    wanted = records([outside, fine])
    first_pass(p, wanted, {})
    assert p._outcomes["shop.elsewhere.test"].reason == "OutsideZone"

    extra = records([ep(f"more.{ZONE}")])
    kept = handed(p, {**wanted, **extra}, {}).kept
    assert kept["shop.elsewhere.test"].reason == "OutsideZone"

    # The refused endpoint itself went: its outcome goes with it.
    kept = handed(p, {**records([fine]), **extra}, {}).kept
    assert "shop.elsewhere.test" not in kept


def test_a_name_the_server_failed_at_is_planned_again_on_the_next_pass() -> None:
    p = publisher()
    wanted = records([ep(f"a.{ZONE}"), ep(f"b.{ZONE}")])
    first_pass(p, wanted, {})
    p._retry = {f"b.{ZONE}"}  # the server refused b's create
    this = handed(p, wanted, {(f"a.{ZONE}", "A"): owned(f"a.{ZONE}")})
    assert this.endpoints == [ep(f"b.{ZONE}")]


def owned(name: str) -> OwnedRecord:
    return OwnedRecord(name, "A", ("192.0.2.1",), 60, f"route/tenant-alpha/{name}")


_LABELS = ["a", "b", "A", "b.", "*.w", "c"]


@st.composite
def _endpoint(draw: st.DrawFn) -> Endpoint:
    label = draw(st.sampled_from(_LABELS))
    zone = draw(st.sampled_from([ZONE, ZONE, "other.test"]))
    name = f"{label.rstrip('.')}.{zone}" + ("." if label.endswith(".") else "")
    rtype: RType = draw(st.sampled_from(["A", "AAAA", "CNAME"]))
    target = {
        "A": draw(st.sampled_from(["192.0.2.1", "192.0.2.2"])),
        "AAAA": "2001:db8::1",
        "CNAME": f"t.{ZONE}",
    }[rtype]
    return Endpoint(name, rtype, (target,), draw(st.sampled_from([30, 60])), "route/t/x")


@st.composite
def _owned(draw: st.DrawFn) -> dict[Key, OwnedRecord]:
    out = {}
    for label in draw(st.lists(st.sampled_from(["a", "b", "c", "gone"]), max_size=4)):
        name = f"{label}.{ZONE}"
        rtype: RType = draw(st.sampled_from(["A", "AAAA"]))
        target = "192.0.2.9" if rtype == "A" else "2001:db8::9"
        out[(name, rtype)] = OwnedRecord(name, rtype, (target,), 60, "route/t/old")
    return out


@settings(max_examples=300, deadline=None)
@given(
    universe=st.lists(st.lists(_endpoint(), min_size=1, max_size=2), max_size=10),
    draw=st.data(),
    owned_before=_owned(),
)
def test_a_pass_plans_the_whole_plans_part_for_the_names_it_touches(
    universe: list[list[Endpoint]], draw: st.DataObject, owned_before: dict[Key, OwnedRecord]
) -> None:
    """Records (a list of endpoints each, endpoints shared between records too) of two
    passes are drawn from one ordered universe, as DesiredNames updates a record in its
    place: a record of both passes is handed over as the very same list, or as a new one
    (of the same endpoints, or of others)."""
    keys = [("Route", f"t/r{i}") for i in range(len(universe))]
    pick = st.lists(st.booleans(), min_size=len(universe), max_size=len(universe))
    w1 = {k: es for k, es, keep in zip(keys, universe, draw.draw(pick), strict=True) if keep}
    w2: Wanted = {}
    for i, (k, es, keep) in enumerate(zip(keys, universe, draw.draw(pick), strict=True)):
        if keep:
            how = draw.draw(st.sampled_from(["same", "rotated", "other"]))
            if how == "same":
                w2[k] = es
            elif how == "rotated":  # a new list of the same endpoints
                w2[k] = [*es[1:], es[0]]
            else:  # other endpoints: those of another record of the universe
                w2[k] = list(universe[(i + 1) % len(universe)])
    p = publisher()
    owned = applied(owned_before, first_pass(p, w1, owned_before))

    this = handed(p, w2, owned)
    kept = this.kept
    part = plan(ZONE, this.endpoints, this.owned)
    whole = plan(ZONE, list(dict.fromkeys(e for k in sorted(w2) for e in w2[k])), owned)

    assert sorted(map(repr, part.changes)) == sorted(map(repr, whole.changes))
    reasons = {n: s.reason for n, s in kept.items()}
    reasons.update({r.endpoint.name: r.problem.reason for r in part.refused})
    assert reasons == {r.endpoint.name: r.problem.reason for r in whole.refused}

    # And the records' states, partly kept from the first pass, are what a first pass
    # works out from the whole plan.
    p._settle(w2, {**kept, **refusals(part)}, this.again, this.gone)
    fresh = publisher()
    fresh._settle(w2, refusals(whole), None, set())
    assert p.states == fresh.states


def settled(p: DNSPublisher, wanted: Wanted) -> None:
    """A pass's own part: what it plans again, then the records' states (no name here is
    refused, and the server accepts everything)."""
    this = handed(p, wanted, {})
    p._settle(wanted, this.kept, this.again, this.gone)


def test_an_unchanged_record_keeps_its_state_and_only_changes_are_reported() -> None:
    reported: list[set[tuple[str, str]]] = []
    p = DNSPublisher(SETTINGS, reported.append)
    wanted = {("Route", f"t/r{i}"): [ep(f"h{i}.{ZONE}")] for i in range(100)}
    settled(p, wanted)
    first = dict(p.states)
    assert len(reported[-1]) == 100

    # The next pass: one record's endpoints replaced, the others the very same lists.
    wanted2 = {**wanted, ("Route", "t/r7"): [ep(f"h7.{ZONE}", "192.0.2.2")]}
    settled(p, wanted2)
    assert reported[-1] == {("Route", "t/r7")}
    assert all(p.states[k] is first[k] for k in wanted if k != ("Route", "t/r7"))
    assert "192.0.2.2" in p.states[("Route", "t/r7")].message

    # An equal list that is a new object is worked out again, and reported only if its
    # state changed (it did not).
    wanted3 = {**wanted2, ("Route", "t/r8"): [ep(f"h8.{ZONE}")]}
    settled(p, wanted3)
    assert len(reported) == 2
    assert p.states[("Route", "t/r8")] is not first[("Route", "t/r8")]
    assert p.states[("Route", "t/r8")] == first[("Route", "t/r8")]


def test_a_record_that_moved_to_another_name_and_went_is_forgotten_at_both() -> None:
    """The records wanting each name are kept from pass to pass: a record's old names must
    let go of it when it moves, or a later pass touching them would look for a record that
    is gone."""
    reported: list[set[tuple[str, str]]] = []
    p = DNSPublisher(SETTINGS, reported.append)
    r, other = ("Route", "t/r"), ("Route", "t/other")
    settled(p, {r: [ep(f"a.{ZONE}")]})
    settled(p, {r: [ep(f"b.{ZONE}")]})  # moved to b
    settled(p, {})  # and went
    assert reported[-1] == {r} and p.states == {}
    settled(p, {other: [ep(f"a.{ZONE}")]})  # a is touched again, by another record
    assert reported[-1] == {other}
    assert set(p.states) == {other} and p.states[other].published
