"""Nothing is lost: restarts of kubelbd, Envoy or a tenant API server, and node failures,
keep every route served. Traffic runs in the background and every failure is counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from kubefleet.lb import config_dir

from kubelbd.kube import Kube
from kubelbd.objects import INGRESSES, NAMESPACES
from kubelbd.records.names import ROUTES, TENANTS

from .support import (
    RECORD_STATUS_TIMEOUT,
    FleetHandle,
    Traffic,
    backend,
    bounce_controllers,
    conditions,
    create_namespace,
    delete_namespace,
    deploy_app,
    eventually,
    ingress_obj,
    lb_get,
    ready_pods,
    rule,
    run_fleet,
    start_kubelbd,
    stop_kubelbd,
    traffic,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e


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
        await stop_kubelbd()
        # A change made while kubelbd is down is picked up when it comes back.
        late = f"{unique('late')}.example.test"
        await kube.create(
            INGRESSES, ingress_obj("late", [rule(late, ("/", "Prefix", backend("steady")))]), ns
        )
        status, _ = await lb_get(lay, h)
        assert status == 200, "Envoy must keep serving while kubelbd is down"
        await start_kubelbd()
        await until_served(lay, late)
        await until_served(lay, h)
    assert t.ok > 0
    assert t.failures == [], t.failures[:5]
    after, _ = await mgmt.list(ROUTES)
    names_after = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in after}
    assert ("tenant-alpha", f"{ns}.steady") in names_after
    assert ("tenant-alpha", f"{ns}.late") in names_after
    # Every record whose Ingress still stands survived the restart (other tests' Ingresses
    # may have gone meanwhile, with their namespaces: their records go with them).
    lost = []
    for r in before:
        where = (r["metadata"]["namespace"], r["metadata"]["name"])
        if where in names_after:
            continue
        tenant = where[0].removeprefix("tenant-")
        source = r["spec"]["source"]
        if tenant in fleet.kube and await standing(fleet.kube[tenant], source):
            lost.append(where)
    assert lost == [], lost


async def standing(kube: Kube, source: dict[str, str]) -> bool:
    """Whether a record's Ingress exists and is not on its way out."""
    namespace = await kube.get_or_none(NAMESPACES, source["namespace"])
    if namespace is None or namespace["metadata"].get("deletionTimestamp"):
        return False
    obj = await kube.get_or_none(INGRESSES, source["name"], source["namespace"])
    return obj is not None and not obj["metadata"].get("deletionTimestamp")


async def test_status_is_written_only_once_envoy_applied(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    ns, _ = served
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    # A wildcard host: its routes are in a shard's route table file, where this test can see
    # them published (an exact host's scope is served over ADS, envoy/scopes.py).
    h = f"*.{unique('held')}.example.test"
    await run_fleet("stop", "envoy")
    try:
        await kube.create(
            INGRESSES, ingress_obj("held", [rule(h, ("/", "Prefix", backend("steady")))]), ns
        )
        tables = config_dir(lay) / "rds"

        async def published() -> bool:
            await mgmt.get(ROUTES, f"{ns}.held", "tenant-alpha")
            return any(h.encode() in f.read_bytes() for f in tables.glob("shard.*.pb"))

        await eventually(published, what="the route written and in Envoy's files")
        # Envoy has not applied it: no address on the Ingress, and the Route is not
        # Programmed (watched for a few seconds: a status written without waiting for
        # Envoy would come within 100 ms).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            ingress = await kube.get(INGRESSES, "held", ns)
            assert not (ingress.get("status") or {}).get("loadBalancer", {}).get("ingress")
            route = await mgmt.get(ROUTES, f"{ns}.held", "tenant-alpha")
            assert conditions(route).get("Programmed", {}).get("status") != "True", route
            await asyncio.sleep(0.2)
    finally:
        await run_fleet("start", "envoy")

    async def programmed() -> bool:
        route = await mgmt.get(ROUTES, f"{ns}.held", "tenant-alpha")
        cond = conditions(route).get("Programmed", {})
        assert cond.get("status") == "True", cond
        assert cond.get("observedGeneration") == route["metadata"]["generation"], cond
        ingress = await kube.get(INGRESSES, "held", ns)
        assert ingress["status"]["loadBalancer"]["ingress"] == [{"ip": "127.0.0.1"}]
        return True

    await eventually(
        programmed,
        timeout=RECORD_STATUS_TIMEOUT,
        what="Programmed=True and the address once Envoy applied",
    )
    await until_served(lay, h)


async def test_envoy_restart_serves_every_route_again(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    _, h = served
    await run_fleet("stop", "envoy")
    try:
        with pytest.raises(OSError):
            await lb_get(fleet.layout, h)
    finally:
        await run_fleet("start", "envoy")  # a failure here must not leave Envoy held
    # Served again: the files on the volume, and the host scopes kubelbd serves the new
    # Envoy over ADS when it connects (envoy/scopes.py).
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
            await stop_kubelbd()
            await start_kubelbd()
            await until_served(lay, h)
        assert t.failures == [], t.failures[:5]
    finally:
        await run_fleet("start", "apiserver", "alpha")
        await bounce_controllers("alpha")

    async def connected() -> bool:
        obj = await mgmt.get(TENANTS, "alpha", "tenant-alpha")
        conds = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert conds["Connected"] == conds["Synced"] == "True", conds
        return True

    await eventually(connected, timeout=60, what="alpha connected and synced again")
    again = f"{unique('again')}.example.test"
    await kube.create(
        INGRESSES, ingress_obj("again", [rule(again, ("/", "Prefix", backend("steady")))]), ns
    )
    await until_served(lay, again)


async def test_a_stopped_node_fails_requests_only_until_it_leaves_rotation(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    """node-3 shuts down under load: its pods and the Node turn NotReady, then its ports close
    a second later. kubelbd takes the node out of every cluster; from then on no request
    fails, nor while the node comes back. Before that, a request can fail only if it was on
    a connection to node-3 (or spliced to one of its pods) when the node closed it: the same
    race as any server closing a kept connection, which no proxy may retry for a request it
    has sent. So at most two (one client: one request at a time, one close of node-3's ports,
    one of its pods), all before the node is out of the Tenant record."""
    _, h = served
    mgmt, lay = fleet.kube["mgmt"], fleet.layout

    async def addresses() -> list[str]:
        obj = await mgmt.get(TENANTS, "alpha", "tenant-alpha")
        return list(obj["status"]["nodeAddresses"])

    async with traffic(lay, h) as t:
        await run_fleet("stop", "node-3", "alpha")
        try:

            async def without_node3() -> bool:
                got = await addresses()
                assert got == ["127.0.1.1", "127.0.1.2"], got
                return True

            await eventually(without_node3, what="node-3 out of the Tenant record")
            out = time.monotonic()
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
    assert len(t.failures) <= 2, t.failures[:5]
    assert all(at <= out for at in t.failed_at), ("after node-3 left rotation", t.failures)


async def test_a_switch_to_a_service_whose_twin_is_new_fails_no_request(
    fleet: FleetHandle, served: tuple[str, str]
) -> None:
    """Under load, the Ingress's backend moves to a Service no route used before: kubelbd
    makes its NodePort twin; the route keeps sending to the old Service until the new twin's
    NodePort leads to a pod, and the old twin goes only once Envoy no longer sends to it.
    Not one request fails."""
    ns, h = served
    kube, lay = fleet.kube["alpha"], fleet.layout
    await deploy_app(kube, ns, "next", replicas=3)

    async def next_ready() -> bool:
        assert len(await ready_pods(kube, ns, "next")) == 3
        return True

    await eventually(next_ready, what="the new Service's pods ready")
    async with traffic(lay, h, clients=4) as t:
        await eventually(lambda: _some(t), what="traffic flowing")
        ing = await kube.get(INGRESSES, "steady", ns)
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"] = backend("next")
        await kube.patch(INGRESSES, "steady", {"spec": ing["spec"]}, ns)
        await until_served(lay, h, check=lambda body: body["pod"].startswith("next-"))
        switched = t.ok
        await eventually(lambda: _some(t, switched), what="traffic after the switch")
    assert t.failures == [], t.failures[:5]


async def _some(t: Traffic, after: int = 0) -> bool:
    assert t.ok > after + 20
    return True
