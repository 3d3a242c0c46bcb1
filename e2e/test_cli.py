"""`kubelbd status|routes|why` against the fleet, run as the operator runs them: a separate
process reading the management cluster (KUBECONFIG_MGMT) and Envoy's admin (ENVOY_ADMIN_ADDR)
from .fleet/fleet.env. An Ingress alpha serves, and the same host claimed later by beta."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from kubefleet.layout import ROOT, Layout

from kubelbd.objects import INGRESSES

from .support import (
    FleetHandle,
    backend,
    deploy_app,
    eventually,
    fleet_env,
    ingress_obj,
    namespace_in,
    rule,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def ns(fleet: FleetHandle) -> AsyncIterator[str]:
    async with namespace_in(fleet, "cli") as name:
        yield name


async def kubelbd(layout: Layout, *args: str) -> subprocess.CompletedProcess[str]:
    env = fleet_env(layout)
    where = ["--kubeconfig", env["KUBECONFIG_MGMT"], "--envoy-admin", env["ENVOY_ADMIN_ADDR"]]
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kubelbd", *args, *where],
        text=True, capture_output=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


async def test_routes_status_and_why_for_a_served_host(fleet: FleetHandle, ns: str) -> None:
    lay, alpha, beta = fleet.layout, fleet.kube["alpha"], fleet.kube["beta"]
    host = f"{unique('cli')}.example.test"
    await deploy_app(alpha, ns, "app")
    await alpha.create(
        INGRESSES, ingress_obj("app", [rule(host, ("/", "Prefix", backend("app")))]), ns
    )
    await until_served(lay, host)
    route = f"alpha/{ns}.app"

    async def routes_lists_it() -> bool:
        r = await kubelbd(lay, "routes", "alpha")
        assert r.returncode == 0, r.stderr
        lines = [line for line in r.stdout.splitlines() if f"{ns}.app" in line]
        assert len(lines) == 1 and host in lines[0] and "Serving" in lines[0], r.stdout
        return True

    await eventually(routes_lists_it, what=f"`kubelbd routes alpha` to show {host} serving")

    r = await kubelbd(lay, "why", host)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == f"{host}: served by tenant alpha"
    assert f"route:        {route} (from Ingress {ns}/app)" in r.stdout
    assert "certificate:  none (plain HTTP only)" in r.stdout
    assert "envoy:        HTTP for tenant alpha" in r.stdout  # Envoy's own tables agree

    r = await kubelbd(lay, "status")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("alpha ")]
    assert len(rows) == 1 and rows[0][1] == "healthy", r.stdout
    assert "Envoy admin: reachable" in r.stdout

    # beta claims the same host later: alpha keeps it, beta is told why, and so is the operator.
    await deploy_app(beta, ns, "app")
    await beta.create(
        INGRESSES, ingress_obj("app", [rule(host, ("/", "Prefix", backend("app")))]), ns
    )

    async def conflict_reported() -> bool:
        r = await kubelbd(lay, "status", "-o", "json")
        assert r.returncode == 0, r.stderr
        refusals = json.loads(r.stdout)["refusals"]
        assert any(
            f["tenant"] == "beta" and f["name"] == f"{ns}.app" and f["reason"] == "HostConflict"
            for f in refusals
        ), refusals
        return True

    await eventually(conflict_reported, what="beta's HostConflict among the refusals")
    r = await kubelbd(lay, "why", host)
    assert r.returncode == 0 and f"also claimed: beta/{ns}.app" in r.stdout, r.stdout

    nobody = f"{unique('nobody')}.nowhere.test"
    r = await kubelbd(lay, "why", nobody, "-o", "json")
    # the fleet's tenants may hold a catch-all: then it answers, and says so
    answer = json.loads(r.stdout)
    assert (r.returncode == 0) == (answer["owner"] is not None)
    assert answer["matched"] in ("", "*")
