"""`kubelbd status|routes|why` as the operator sees them, rendered from the small fleet's
overview (tests/fleet_records.py; loading it is the e2e tests' business: e2e/test_cli.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kubelbd.cli import inspect, main
from kubelbd.overview.build import overview
from kubelbd.overview.model import Overview

from .fleet_records import HOSTILE, SHOP, fleet


@pytest.fixture(autouse=True)
def small_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    f = fleet()

    def load(kubeconfig: str | None, envoy_admin: str, tenant: str | None = None) -> Overview:
        ov = overview(f.snapshot, f.now)
        if tenant is None:
            return ov
        return Overview(ov.generated, ov.tenants, tuple(r for r in ov.routes if r.tenant == tenant),
                        ov.load_balancers, ov.refusals, ov.envoy)  # fmt: skip

    monkeypatch.setattr(inspect, "load", load)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_status_lists_tenants_and_newest_refusals() -> None:
    code, out = run("status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TENANT", "HEALTH", "ROUTES", "LBS", "PROBLEMS"]
    assert lines[1].split()[:2] == ["alpha", "healthy"]
    assert lines[2].split()[:2] == ["beta", "UNHEALTHY"] and "Connected: Unreachable" in lines[2]
    assert "6 routes, 2 serving; 0 load balancers" in out
    refusals = out.split("Recent refusals (6 of 6):\n", 1)[1].splitlines()
    assert refusals[1].startswith("2026-01-02T00:00:05Z  beta")


def test_routes_of_one_tenant() -> None:
    code, out = run("routes", "alpha")
    assert code == 0
    rows = out.splitlines()[1:]
    assert [r.split()[1] for r in rows] == ["apps.new", "apps.wild", "shop.web"]
    assert "new.example.com(not served)" in rows[0] and "Pending" in rows[0]
    assert "alpha/shop.web-tls (tenant, expires" in rows[2] and "10d left" in rows[2]


def test_why_explains_and_exits_by_whether_served() -> None:
    code, out = run("why", SHOP)
    assert code == 0
    assert out.splitlines()[0] == f"{SHOP}: served by tenant alpha"
    assert "route:        alpha/shop.web (from Ingress shop/web)" in out
    assert "envoy:        HTTP for tenant alpha, HTTPS with alpha/shop.web-tls" in out
    assert "also claimed: beta/x.steal" in out
    code, out = run("why", HOSTILE)
    assert code == 1 and "NOT served" in out and "HostNotAllowed" in out


def test_json_output() -> None:
    code, out = run("why", "a.apps.example.com", "-o", "json")
    answer = json.loads(out)
    assert code == 0 and answer["owner"] == "alpha" and answer["matched"] == "*.apps.example.com"
    code, out = run("status", "-o", "json")
    status = json.loads(out)
    assert [t["healthy"] for t in status["tenants"]] == [True, False]
    assert status["envoy"]["https_hosts"] == {SHOP: "alpha/shop.web-tls"}


def test_no_control_character_a_tenant_wrote_reaches_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubelbd.overview.model import Refusal

    ov = overview(fleet().snapshot, fleet().now)
    hostile = "\x1b]0;pwned\x07\x1b[2Jgone\rover"
    refusal = Refusal("2026-01-01T00:00:00Z", "beta", "Route", "x.y", "Accepted", "Bad", hostile)
    shown = Overview(ov.generated, ov.tenants, ov.routes, ov.load_balancers, (refusal,), ov.envoy)
    monkeypatch.setattr(inspect, "load", lambda *a, **k: shown)
    code, out = run("status")
    assert code == 0
    assert not any(ch != "\n" and not ch.isprintable() for ch in out), repr(out)
    assert "\\x1b]0;pwned\\x07\\x1b[2Jgone\\rover" in out
