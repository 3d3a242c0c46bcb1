"""The operator's overview (kubelbd.overview) from a small fleet's stored records and Envoy's
admin answers (tests/fleet_records.py): what `kubelbd status|routes|why` and the status page
show is what the records say, and the certificate's own expiry."""

from __future__ import annotations

import dataclasses

from kubelbd.overview.build import overview
from kubelbd.overview.model import Overview
from kubelbd.overview.why import candidates, why

from .fleet_records import HOSTILE, SHOP, Fleet, fleet


def view(f: Fleet | None = None) -> Overview:
    f = f or fleet()
    return overview(f.snapshot, f.now)


def test_tenants_with_their_health_and_counts() -> None:
    by_name = {t.name: t for t in view().tenants}
    assert set(by_name) == {"alpha", "beta"}  # the misplaced record makes no tenant "gamma"
    alpha, beta = by_name["alpha"], by_name["beta"]
    assert alpha.healthy and alpha.node_addresses == ("127.0.1.1", "127.0.1.2")
    assert alpha.routes == 3
    assert not beta.healthy and beta.routes == 3
    assert [c.reason for c in beta.checks if c.ok is False] == ["Unreachable"]


def test_routes_with_hosts_state_and_certificate_expiry() -> None:
    f = fleet()
    routes = {r.id: r for r in overview(f.snapshot, f.now).routes}
    assert "gamma/x.elsewhere" not in routes  # in namespace default: nobody's
    states = {rid: r.state for rid, r in routes.items()}
    assert states == {
        "alpha/shop.web": "Serving",
        "alpha/apps.wild": "Serving",
        "alpha/apps.new": "Pending",
        "beta/x.steal": "NotServed",
        "beta/x.evil": "NotServed",
        "beta/x.broken": "Invalid",
    }
    (cert,) = routes["alpha/shop.web"].certificates
    assert cert.secret == "alpha/shop.web-tls" and cert.source == "tenant"
    assert cert.names == (SHOP,) and cert.expires == f.shop_expires and cert.days_left == 10
    assert routes["beta/x.steal"].hosts == (SHOP,) and routes["beta/x.steal"].served == ()


def test_a_missing_certificate_is_said_so() -> None:
    f = fleet()
    snap = dataclasses.replace(f.snapshot, certificates=[])
    (cert,) = next(r for r in overview(snap, f.now).routes if r.name == "shop.web").certificates
    assert cert.expires is None and "no Secret shop.web-tls" in cert.problem


def test_refusals_newest_first() -> None:
    got = [(r.since, r.kind, r.name, r.type) for r in view().refusals]
    assert got == [
        ("2026-01-02T00:00:05Z", "Tenant", "beta", "Connected"),
        ("2026-01-02T00:00:04Z", "Route", "x.evil", "Accepted"),
        ("2026-01-02T00:00:04Z", "Route", "x.evil", "Programmed"),
        ("2026-01-02T00:00:03Z", "Route", "x.steal", "Conflict"),
        ("2026-01-02T00:00:03Z", "Route", "x.steal", "Programmed"),
        ("", "Route", "x.broken", "Valid"),  # no time: the record itself does not parse
    ]


def test_envoy_facts_from_config_dump() -> None:
    envoy = view().envoy
    assert envoy is not None and envoy.reachable
    # the shard table's virtual hosts say whose; the front and HTTPS tables are ignored
    assert envoy.http_hosts == {SHOP: "alpha", "*.apps.example.com": "alpha"}
    assert envoy.https_hosts == {SHOP: "alpha/shop.web-tls"}


def test_why_a_served_host_names_owner_route_certificate_and_envoy() -> None:
    a = why(view(), "Shop.Example.com.")
    assert a.served and a.host == SHOP and a.matched == SHOP
    assert (a.owner, a.route, a.source) == ("alpha", "alpha/shop.web", "Ingress shop/web")
    assert a.certificate is not None and a.certificate.secret == "alpha/shop.web-tls"
    assert (a.envoy_http, a.envoy_https) == ("alpha", "alpha/shop.web-tls")
    assert a.claimants == ("alpha/shop.web", "beta/x.steal")
    assert a.reasons == ()  # the loser's refusals are its own business


def test_why_a_host_under_a_wildcard() -> None:
    a = why(view(), "a.apps.example.com")
    assert a.served and a.matched == "*.apps.example.com" and a.route == "alpha/apps.wild"
    assert why(view(), "a.b.apps.example.com").matched == ""  # one label only


def test_why_not_a_host_that_lost_or_waits_or_nobody_claims() -> None:
    ov = view()
    hostile = why(ov, HOSTILE)
    assert not hostile.served and hostile.claimants == ("beta/x.evil",)
    assert any("HostNotAllowed" in r for r in hostile.reasons)
    pending = why(ov, "new.example.com")
    assert not pending.served
    assert "Route alpha/apps.new waits for Envoy to apply it" in pending.reasons
    nobody = why(ov, "nothing.example.org")
    assert not nobody.served and nobody.claimants == ()
    assert nobody.reasons == (
        "no Route claims nothing.example.org (nor a wildcard or catch-all that would answer it)",
    )


def test_why_says_where_envoy_disagrees_with_the_records() -> None:
    f = fleet(envoy=[])  # Envoy reachable, holding nothing yet
    a = why(overview(f.snapshot, f.now), SHOP)
    assert a.served and a.envoy_http is None
    assert "Envoy's route tables do not hold it (not applied yet?)" in a.reasons
    assert f"Envoy's HTTPS listener has no certificate for {SHOP}" in a.reasons


def test_why_with_envoy_unreachable_or_not_asked() -> None:
    f = fleet(envoy=None)
    unreachable = dataclasses.replace(f.snapshot, envoy_configs=None)
    a = why(overview(unreachable, f.now), SHOP)
    assert a.served and "Envoy's admin could not be reached" in a.reasons[0]
    not_asked = dataclasses.replace(f.snapshot, envoy_asked=False, envoy_configs=None)
    ov = overview(not_asked, f.now)
    assert ov.envoy is None and why(ov, SHOP).reasons == ()


def test_candidates_most_specific_first() -> None:
    assert candidates("a.b.example") == ("a.b.example", "*.b.example", "*")
    assert candidates("localhost") == ("localhost", "*")
