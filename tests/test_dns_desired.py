"""Which names are published for which record (kubelbd.dns.desired, pure): a Route's served
hosts at the public address, a LoadBalancer's names at its addresses, one owner per name by
the earliest claim on kubelbd's clock, and a reason for every name a record asked for and does
not get."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubelbd.dns.desired import Desired, DesiredNames, lb_key, route_key
from kubelbd.dns.records import Endpoint
from kubelbd.ir.http import IR
from kubelbd.records import parse
from kubelbd.records.types import LBRecord

from .records import route

PUBLIC = "198.51.100.7"


def desired(*args: Any) -> Desired:
    """A pass from nothing: what the names are, with no earlier pass kept."""
    return DesiredNames().update(*args)


def lb(tenant: str, name: str, names: list[str], recorded: str, **dns: Any) -> LBRecord:
    namespace, _, service = name.partition(".")
    spec = parse.lb_spec(
        {
            "source": {"kind": "Service", "namespace": namespace, "name": service,
                       "uid": f"uid-{name}", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "ports": [{"port": 5432, "protocol": "TCP", "nodePort": 30432}],
            "sessionAffinity": "None", "proxyProtocol": "",
            "dns": {"hostnames": names, **dns},
        }
    )  # fmt: skip
    return LBRecord(tenant, name, spec, 1, recorded)


def rule(host: str) -> dict[str, Any]:
    backend = {"service": "web", "port": "80", "nodePort": 30080}
    return {"host": host, "paths": [{"path": "/", "pathType": "Prefix", "backends": [backend]}]}


def test_served_hosts_are_published_at_the_public_address_with_the_routes_ttl() -> None:
    r = route("a", "default.shop", [rule("shop.example.test"), rule("*.w.example.test")],
              dns={"ttl": 7})  # fmt: skip
    ir = IR(served={r.id: ["shop.example.test", "*.w.example.test", "*"]})
    out = desired({r.id: r}, ir, {}, {}, PUBLIC, 60)
    res = "route/tenant-a/default.shop"
    assert out.endpoints == {
        route_key(r.id): [
            Endpoint("*.w.example.test", "A", (PUBLIC,), 7, res),
            Endpoint("shop.example.test", "A", (PUBLIC,), 7, res),
        ]
    }
    assert out.refused == {}


def test_a_load_balancer_is_published_at_its_addresses_and_its_names_go_to_status() -> None:
    rec = lb("a", "default.db", ["db.example.test"], "2026-01-01T00:00:00Z")
    targets = {rec.id: ["192.0.2.1", "2001:db8::1"]}
    out = desired({}, IR(), {rec.id: rec}, targets, PUBLIC, 60)
    res = "loadbalancer/tenant-a/default.db"
    assert out.endpoints[lb_key(rec.id)] == [
        Endpoint("db.example.test", "A", ("192.0.2.1",), 60, res),
        Endpoint("db.example.test", "AAAA", ("2001:db8::1",), 60, res),
    ]
    assert out.names[lb_key(rec.id)] == ["db.example.test"]
    # Not served (no address yet): nothing published, no name for the status.
    none = desired({}, IR(), {rec.id: rec}, {}, PUBLIC, 60)
    assert none.endpoints == {} and none.names == {lb_key(rec.id): []}


def test_a_name_behind_a_hostname_address_is_a_cname() -> None:
    rec = lb("a", "default.db", ["db.example.test"], "2026-01-01T00:00:00Z")
    out = desired({}, IR(), {rec.id: rec}, {rec.id: ["lb.cloud.test"]}, PUBLIC, 60)
    assert [(e.rtype, e.targets) for e in out.endpoints[lb_key(rec.id)]] == [
        ("CNAME", ("lb.cloud.test",))
    ]


def test_the_earliest_claim_owns_a_name_across_tenants_and_kinds() -> None:
    older = lb("b", "default.db", ["shared.example.test"], "2026-01-01T00:00:00Z")
    r = route("a", "default.shop", [rule("shared.example.test")], created="2026-02-01T00:00:00Z")
    ir = IR(served={r.id: ["shared.example.test"]})
    out = desired({r.id: r}, ir, {older.id: older}, {older.id: ["192.0.2.1"]}, PUBLIC, 60)
    assert [e.targets for e in out.endpoints[lb_key(older.id)]] == [("192.0.2.1",)]
    assert route_key(r.id) not in out.endpoints
    lost = out.refused[route_key(r.id)]
    assert (lost.reason, lost.warn) == ("NameHeldByOtherTenant", True)
    assert "shared.example.test" in lost.message and "default.db" not in lost.message
    # A backdated tenant timestamp changes nothing: only kubelbd's own clock counts.
    young = lb("b", "default.db", ["shared.example.test"], "2026-03-01T00:00:00Z")
    flipped = desired({r.id: r}, ir, {young.id: young}, {young.id: ["192.0.2.1"]}, PUBLIC, 60)
    assert route_key(r.id) in flipped.endpoints
    assert flipped.refused[lb_key(young.id)].reason == "NameHeldByOtherTenant"


def test_two_objects_of_one_tenant_wanting_one_name_the_older_has_it() -> None:
    first = lb("a", "default.one", ["db.example.test"], "2026-01-01T00:00:00Z")
    second = lb("a", "default.two", ["db.example.test"], "2026-01-02T00:00:00Z")
    targets = {first.id: ["192.0.2.1"], second.id: ["192.0.2.2"]}
    out = desired({}, IR(), {first.id: first, second.id: second}, targets, PUBLIC, 60)
    assert list(out.endpoints) == [lb_key(first.id)]
    assert out.refused[lb_key(second.id)].reason == "NameInUse"
    assert out.names[lb_key(second.id)] == []


def test_a_name_under_another_tenants_wildcard_is_not_taken_from_it() -> None:
    r = route("a", "default.w", [rule("*.w.example.test")], created="2026-01-01T00:00:00Z")
    ir = IR(served={r.id: ["*.w.example.test"]})
    thief = lb("b", "default.db", ["db.w.example.test"], "2026-02-01T00:00:00Z")
    out = desired({r.id: r}, ir, {thief.id: thief}, {thief.id: ["192.0.2.9"]}, PUBLIC, 60)
    assert lb_key(thief.id) not in out.endpoints
    assert out.refused[lb_key(thief.id)].reason == "NameHeldByOtherTenant"


def test_a_host_not_allowed_or_lost_to_another_tenant_is_a_reason() -> None:
    problem = {"reason": "HostNotAllowed", "message": "host 'no.test' is outside"}
    refused = route("a", "default.x", [rule("ok.example.test")], problems=[problem])
    lost = route("a", "default.y", [rule("held.example.test")])
    ir = IR(
        served={refused.id: ["ok.example.test"]},
        conflicts={lost.id: [("held.example.test", "b")]},
    )
    out = desired({refused.id: refused, lost.id: lost}, ir, {}, {}, PUBLIC, 60)
    assert out.refused[route_key(refused.id)].reason == "NameNotAllowed"
    assert route_key(refused.id) in out.endpoints  # its allowed host is still published
    assert out.refused[route_key(lost.id)].reason == "NameHeldByOtherTenant"
    assert "held.example.test" in out.refused[route_key(lost.id)].message


def test_without_a_public_address_routes_publish_nothing() -> None:
    r = route("a", "default.shop", [rule("shop.example.test")])
    assert (
        desired({r.id: r}, IR(served={r.id: ["shop.example.test"]}), {}, {}, "", 60).endpoints == {}
    )


def test_a_load_balancers_claim_on_a_name_dates_from_when_it_asked_for_it() -> None:
    """A Service stored long ago that asks for a name today asks today (dns.claims, stamped
    by the tenant side on kubelbd's clock), so it cannot take a name another tenant has."""
    r = route("b", "default.shop", [rule("shop.example.test")], created="2026-02-01T00:00:00Z")
    ir = IR(served={r.id: ["shop.example.test"]})
    old = lb("a", "default.db", ["shop.example.test"], "2020-01-01T00:00:00Z",
             claims={"shop.example.test": "2026-03-01T00:00:00.000000Z"})  # fmt: skip
    out = desired({r.id: r}, ir, {old.id: old}, {old.id: ["192.0.2.1"]}, PUBLIC, 60)
    assert route_key(r.id) in out.endpoints and lb_key(old.id) not in out.endpoints
    assert out.refused[lb_key(old.id)].reason == "NameHeldByOtherTenant"


def test_no_name_below_another_tenants_wildcard_hides_a_name_it_answers_for() -> None:
    """`a.shop.example.test` would make `shop.example.test` an empty name, which the DNS
    wildcard `*.example.test` no longer answers: an older wildcard of another tenant keeps
    it; the tenant's own wildcard, or a younger one, does not."""
    w = route("c", "default.w", [rule("*.example.test")], created="2026-01-01T00:00:00Z")
    deep = route("e", "default.deep", [rule("a.shop.example.test")], created="2026-02-01T00:00:00Z")
    exact = route("e", "default.exact", [rule("shop.example.test")], created="2026-02-01T00:00:00Z")
    ir = IR(served={w.id: ["*.example.test"], deep.id: ["a.shop.example.test"],
                    exact.id: ["shop.example.test"]})  # fmt: skip
    routes = {w.id: w, deep.id: deep, exact.id: exact}
    out = desired(routes, ir, {}, {}, PUBLIC, 60)
    assert out.refused[route_key(deep.id)].reason == "NameHeldByOtherTenant"
    assert route_key(deep.id) not in out.endpoints
    # Its own exact host is routed to it, wildcard or not: published.
    assert route_key(exact.id) in out.endpoints and route_key(exact.id) not in out.refused
    own = route("c", "default.deep", [rule("a.shop.example.test")], created="2026-02-01T00:00:00Z")
    mine = desired({w.id: w, own.id: own}, IR(served={w.id: ["*.example.test"],
                   own.id: ["a.shop.example.test"]}), {}, {}, PUBLIC, 60)  # fmt: skip
    assert route_key(own.id) in mine.endpoints


def test_routes_of_one_tenant_sharing_a_host_are_all_published() -> None:
    first = route("a", "default.one", [rule("shop.example.test")], created="2026-01-01T00:00:00Z")
    second = route("a", "default.two", [rule("shop.example.test")], created="2026-01-02T00:00:00Z")
    ir = IR(served={first.id: ["shop.example.test"], second.id: ["shop.example.test"]})
    out = desired({first.id: first, second.id: second}, ir, {}, {}, PUBLIC, 60)
    assert out.refused == {}
    assert out.endpoints[route_key(first.id)] == out.endpoints[route_key(second.id)]


def test_a_gateway_routes_names_are_published_at_its_gateways_and_meet_ingress_hosts() -> None:
    """A Gateway API route's hostnames go to the addresses of the Gateways serving them; a
    name both an Ingress and an HTTPRoute of two tenants serve goes to the earlier claim, as
    between two Ingresses (the Gateway's own address still serves it: DNS is where they
    meet)."""
    older = route("a", "default.shop", [rule("shop.example.test")],
                  claims={"shop.example.test": "2026-01-01T00:00:00.000000Z"})  # fmt: skip
    newer = route("b", "apps.shop.httproute", [rule("shop.example.test"), rule("api.example.test")],
                  claims={"shop.example.test": "2026-02-01T00:00:00.000000Z",
                          "api.example.test": "2026-02-01T00:00:00.000000Z"})  # fmt: skip
    ir = IR(served={older.id: ["shop.example.test"]})
    gateway_hosts = {
        newer.id: {"shop.example.test": ["127.0.200.1"],
                   "api.example.test": ["127.0.200.1", "127.0.200.2"]},
    }  # fmt: skip
    out = desired({r.id: r for r in (older, newer)}, ir, {}, {}, PUBLIC, 60, gateway_hosts)
    res = "route/tenant-b/apps.shop.httproute"
    assert out.endpoints[route_key(newer.id)] == [
        Endpoint("api.example.test", "A", ("127.0.200.1", "127.0.200.2"), 60, res)
    ]
    assert out.endpoints[route_key(older.id)][0].targets == (PUBLIC,)
    refused = out.refused[route_key(newer.id)]
    assert refused.reason == "NameHeldByOtherTenant" and "shop.example.test" in refused.message


HOSTS = ["a.test", "x.a.test", "y.x.a.test", "*.a.test", "*.x.a.test", "b.test", "*.test"]
LB_NAMES = ["x.a.test", "db.a.test", "b.test", "z.x.a.test"]


@st.composite
def _step(draw: st.DrawFn) -> tuple[str, str, str, list[str], str]:
    """One change: (kind, tenant, name, hosts or names, created)."""
    kind = draw(st.sampled_from(["route", "lb", "gone"]))
    tenant = draw(st.sampled_from(["a", "b", "c"]))
    name = f"default.{draw(st.sampled_from(['one', 'two', 'three']))}"
    pool = HOSTS if kind == "route" else LB_NAMES
    hosts = draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
    created = f"2026-01-{draw(st.integers(1, 9)):02d}T00:00:00Z"
    return kind, tenant, name, hosts, created


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_step(), min_size=1, max_size=25), public=st.sampled_from([PUBLIC, ""]))
def test_a_pass_that_keeps_the_last_ones_answers_as_a_fresh_one(
    steps: list[tuple[str, str, str, list[str], str]], public: str
) -> None:
    """DesiredNames decides again only the names a change touches: after any sequence of
    changes (hosts moving between tenants, wildcards coming and going over other names, a
    LoadBalancer losing its address), its answer is the one a pass from nothing gives."""
    book = DesiredNames()
    before = Desired()
    routes: dict[str, Any] = {}
    hosts_of: dict[str, list[str]] = {}
    lbs: dict[str, LBRecord] = {}
    targets: dict[str, list[str]] = {}
    ir = IR()
    gateway_hosts: dict[str, dict[str, list[str]]] = {}
    for step, (kind, tenant, name, hosts, created) in enumerate(steps):
        rid = f"{tenant}/{name}"
        if kind == "route":
            routes[rid] = route(tenant, name, [rule(h) for h in hosts], created=created)
            hosts_of[rid] = hosts
        elif kind == "lb":
            lbs[rid] = lb(tenant, name, hosts, created)
            targets[rid] = ["192.0.2.1"] if hosts and created < "2026-01-08" else []
        else:
            routes.pop(rid, None)
            lbs.pop(rid, None)
        # The IR serves a route's hosts but b.test while tenant a holds it: a route's served
        # hosts and conflicts move with another route's change, its own record unchanged.
        held = any(r.startswith("a/") and "b.test" in hosts_of[r] for r in routes)
        lost = {r for r in routes
                if held and "b.test" in hosts_of[r] and not r.startswith("a/")}  # fmt: skip
        served = {r: [h for h in hosts_of[r] if h != "b.test" or r not in lost] for r in routes}
        conflicts = {r: [("b.test", "a")] for r in lost if r.startswith("b/")}
        # Tenant c's routes are Gateway API routes too (but for b.test), at an address that
        # moves with the LoadBalancers present.
        address = ["127.0.200.2" if lbs else "127.0.200.1"]
        at = {r: {h: address for h in hosts_of[r] if h != "b.test"}
              for r in routes if r.startswith("c/")}  # fmt: skip
        if step % 2:  # as the model does, an unchanged value is the very same object
            served = {r: same(ir.served.get(r), hs) for r, hs in served.items()}
            conflicts = {r: same(ir.conflicts.get(r), c) for r, c in conflicts.items()}
            at = {r: same(gateway_hosts.get(r), h) for r, h in at.items()}
        ir, gateway_hosts = IR(served=served, conflicts=conflicts), at
        args = (dict(routes), ir, dict(lbs), dict(targets), public, 60, gateway_hosts)
        out = book.update(*args)
        assert _answers(out) == _answers(desired(*args))
        # A record not named affected keeps its very list of endpoints (the DNS publisher
        # looks at the named ones only), and its names and refusal.
        if before.affected is not None or out.affected is not None:
            assert out.affected is not None
            for key in (before.endpoints.keys() | out.endpoints.keys()) - out.affected:
                assert out.endpoints.get(key) is before.endpoints.get(key)
            for key in (before.names.keys() | out.names.keys()) - out.affected:
                assert out.names.get(key) == before.names.get(key)
            for key in (before.refused.keys() | out.refused.keys()) - out.affected:
                assert out.refused.get(key) == before.refused.get(key)
        before = out


def same(old: Any, new: Any) -> Any:
    return old if old == new and old is not None else new


def _answers(d: Desired) -> tuple[object, ...]:
    """A pass's answers, without which records it says it answered again."""
    return d.endpoints, d.refused, d.names


@pytest.mark.parametrize("moved", ["served", "conflicts", "gateway"])
def test_a_route_whose_record_stays_gets_new_answers_when_what_it_is_served_as_moves(
    moved: str,
) -> None:
    """The sweep skips a route whose record, served hosts, hosts at Gateways and conflicts
    are the very objects of the last pass; another route's change moves the last three
    without touching its record, and each must be looked at."""
    book = DesiredNames()
    r = route("a", "default.shop", [rule("x.example.test"), rule("y.example.test")])
    both = ["x.example.test", "y.example.test"]
    routes = {r.id: r}
    at = {r.id: {"y.example.test": ["127.0.200.1"]}}
    first = book.update(routes, IR(served={r.id: both}), {}, {}, PUBLIC, 60, at)
    served, conflicts = {r.id: both}, {}
    if moved == "served":
        served = {r.id: ["y.example.test"]}
    elif moved == "conflicts":
        conflicts = {r.id: [("held.example.test", "b")]}
    else:
        at = {r.id: {"y.example.test": ["127.0.200.2"]}}
    ir = IR(served=served, conflicts=conflicts)
    out = book.update(routes, ir, {}, {}, PUBLIC, 60, at)
    assert _answers(out) == _answers(desired(routes, ir, {}, {}, PUBLIC, 60, at))
    assert _answers(out) != _answers(first)
    assert out.affected == frozenset({route_key(r.id)})


def test_a_load_balancer_recorded_again_claims_its_names_from_then() -> None:
    """A record deleted and written again has the same id, generation and spec, but a later
    `recorded`, which dates its claims: an older claim of another tenant wins the name."""
    book = DesiredNames()
    r = route("a", "default.one", [rule("x.a.test")], created="2026-01-02T00:00:00Z")
    ir = IR(served={r.id: ["x.a.test"]})
    first = lb("b", "default.three", ["x.a.test"], "2026-01-01T00:00:00Z")
    args = ({r.id: r}, ir, {first.id: first}, {first.id: ["192.0.2.1"]}, PUBLIC, 60)
    assert lb_key(first.id) in book.update(*args).endpoints
    again = lb("b", "default.three", ["x.a.test"], "2026-01-03T00:00:00Z")
    args = ({r.id: r}, ir, {again.id: again}, {again.id: ["192.0.2.1"]}, PUBLIC, 60)
    out = book.update(*args)
    assert lb_key(again.id) not in out.endpoints
    assert route_key(r.id) in out.endpoints


def test_a_pass_that_fails_midway_leaves_the_next_one_to_start_from_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a failed pass changed of the last one's (what it saw, the wants it recorded) must
    not make the next pass skip the records it did not finish."""
    book = DesiredNames()
    r = route("a", "default.shop", [rule("x.example.test"), rule("y.example.test")])
    routes = {r.id: r}
    book.update(routes, IR(served={r.id: ["x.example.test"]}), {}, {}, PUBLIC, 60)
    ir = IR(served={r.id: ["x.example.test", "y.example.test"]})
    answer = DesiredNames._answer

    def fails(self: DesiredNames, key: Any) -> None:
        raise RuntimeError("midway")

    monkeypatch.setattr(DesiredNames, "_answer", fails)
    with pytest.raises(RuntimeError):
        book.update(routes, ir, {}, {}, PUBLIC, 60)
    monkeypatch.setattr(DesiredNames, "_answer", answer)
    out = book.update(routes, ir, {}, {}, PUBLIC, 60)
    assert _answers(out) == _answers(desired(routes, ir, {}, {}, PUBLIC, 60))
    assert out.affected is None
