"""Nothing is lost: restarts of kubelbd, Envoy or a tenant API server, and node failures,
keep every route served. Traffic runs in the background and every failure is counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from kubefleet.layout import Layout

from kubelbd.objects import INGRESSES
from kubelbd.records.names import ROUTES, TENANTS

from .support import (
    FleetHandle,
    backend,
    conditions,
    create_namespace,
    delete_namespace,
    deploy_app,
    eventually,
    ingress_obj,
    lb_get,
    rule,
    run_fleet,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e


class Traffic:
    """Requests to one host, back to back, on fresh connections; remembers every failure."""

    def __init__(self, layout: Layout, host: str) -> None:
        self.layout = layout
        self.host = host
        self.ok = 0
        self.failures: list[str] = []

    async def run(self) -> None:
        while True:
            try:
                status, body = await lb_get(self.layout, self.host, "/traffic", timeout=5)
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{_now()} {status} {str(body)[:100]}")
            except Exception as e:  # any failure counts
                self.failures.append(f"{_now()} {e!r}")
            await asyncio.sleep(0.02)


def _now() -> str:
    return time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"


@asynccontextmanager
async def traffic(layout: Layout, host: str) -> AsyncIterator[Traffic]:
    t = Traffic(layout, host)
    task = asyncio.create_task(t.run())
    try:
        yield t
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def served(fleet: FleetHandle) -> AsyncIterator[tuple[str, str]]:
    """(namespace, host) of an app in alpha served through Envoy."""
    ns = unique("res")
    kube = fleet.kube["alpha"]
    await create_namespace(kube, ns)
    await deploy_app(kube, ns, "steady", replicas=3)
    h = f"{unique('steady')}.example.test"
    await kube.create(
        INGRESSES, ingress_obj("steady", [rule(h, ("/", "Prefix", backend("steady")))]), ns
    )
    await until_served(fleet.layout, h)
    yield ns, h
    await delete_namespace(kube, ns)


async def test_kubelbd_restart_keeps_traffic_and_loses_nothing(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    ns, h = served
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    before, _ = await mgmt.list(ROUTES)
    async with traffic(lay, h) as t:
        await run_fleet("stop", "kubelbd")
        # A change made while kubelbd is down is picked up when it comes back.
        late = f"{unique('late')}.example.test"
        await kube.create(
            INGRESSES, ingress_obj("late", [rule(late, ("/", "Prefix", backend("steady")))]), ns
        )
        await asyncio.sleep(0)  # let traffic run while kubelbd is down
        status, _ = await lb_get(lay, h)
        assert status == 200, "Envoy must keep serving while kubelbd is down"
        await run_fleet("start", "kubelbd")
        await until_served(lay, late)
        await until_served(lay, h)
    assert t.ok > 0
    assert t.failures == [], t.failures[:5]
    after, _ = await mgmt.list(ROUTES)
    names_before = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in before}
    names_after = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in after}
    assert names_before <= names_after | {n for n in names_before if not n[1].startswith(ns)}
    assert ("tenant-alpha", f"{ns}.steady") in names_after and (
        "tenant-alpha",
        f"{ns}.late",
    ) in names_after


async def test_envoy_restart_serves_every_route_again(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    _, h = served
    await run_fleet("stop", "envoy")
    with pytest.raises(OSError):
        await lb_get(fleet.layout, h)
    await run_fleet("start", "envoy")
    # Served from the files on the volume, with no help from kubelbd needed.
    await until_served(fleet.layout, h, timeout=10)


async def test_tenant_apiserver_down_keeps_routes_even_across_kubelbd_restart(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    ns, h = served
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    await run_fleet("stop", "apiserver", "alpha")
    try:
        async with traffic(lay, h) as t:

            async def disconnected() -> bool:
                obj = await mgmt.get(TENANTS, "alpha", "tenant-alpha")
                conds = conditions(obj)
                assert conds["Connected"]["status"] == "False", conds
                assert conds["Connected"]["reason"] == "Unreachable", conds
                return True

            await eventually(disconnected, timeout=60, what="alpha Connected=False")
            await run_fleet("stop", "kubelbd")
            await run_fleet("start", "kubelbd")
            await until_served(lay, h)
        assert t.failures == [], t.failures[:5]
    finally:
        await run_fleet("start", "apiserver", "alpha")
        # client-go's reflectors back off up to 30 s after an outage; bounce the controllers
        # so the next test finds a cluster that creates pods right away.
        for component in ("controller-manager", "scheduler"):
            await run_fleet("stop", component, "alpha")
            await run_fleet("start", component, "alpha")

    async def connected() -> bool:
        obj = await mgmt.get(TENANTS, "alpha", "tenant-alpha")
        conds = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert conds == {"Connected": "True", "Synced": "True"}, conds
        return True

    await eventually(connected, timeout=60, what="alpha connected and synced again")
    again = f"{unique('again')}.example.test"
    await kube.create(
        INGRESSES, ingress_obj("again", [rule(again, ("/", "Prefix", backend("steady")))]), ns
    )
    await until_served(lay, again)


async def test_stopped_node_leaves_rotation_without_failed_requests(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    _, h = served
    mgmt, lay = fleet.kube["mgmt"], fleet.layout

    async def addresses() -> list[str]:
        obj = await mgmt.get(TENANTS, "alpha", "tenant-alpha")
        return list(obj["spec"]["nodeAddresses"])

    async with traffic(lay, h) as t:
        await run_fleet("stop", "node-3", "alpha")
        try:

            async def without_node3() -> bool:
                got = await addresses()
                assert got == ["127.0.1.1", "127.0.1.2"], got
                return True

            await eventually(without_node3, what="node-3 out of the Tenant record")
            seen = set()
            for _ in range(12):
                status, body = await lb_get(lay, h)
                assert status == 200
                seen.add(body["node"])
            assert "node-3" not in seen
        finally:
            await run_fleet("start", "node-3", "alpha")

        async def with_node3() -> bool:
            assert len(await addresses()) == 3
            return True

        await eventually(with_node3, what="node-3 back in the Tenant record")
    assert t.ok > 0
    assert t.failures == [], t.failures[:5]
