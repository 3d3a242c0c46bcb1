"""Layer 4 end to end: tenant Services of type LoadBalancer, served by Envoy on an address of
their own from the pool, TCP and UDP, through tenant nodes to pods."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from functools import partial

import pytest
from kubefleet.fleet import State

from kubelbd.kube import Kube
from kubelbd.objects import DEPLOYMENTS, EVENTS, PODS, SERVICES, Obj
from kubelbd.records.names import LOADBALANCERS

from .support import (
    RECORD_STATUS_TIMEOUT,
    FleetHandle,
    conditions,
    echo_deployment,
    eventually,
    http_get,
    namespace_in,
    run_fleet,
    start_kubelbd,
    stop_kubelbd,
    tcp_echo,
    udp_echo,
)

pytestmark = pytest.mark.e2e

PORTS = [
    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
    {"name": "raw", "containerPort": 9000, "protocol": "TCP"},
    {"name": "dgram", "containerPort": 9000, "protocol": "UDP"},
]


def lb_service(name: str, ports: list[Obj], **spec: object) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": dict(spec.pop("annotations", {}) or {})},  # type: ignore[call-overload]
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": ports, **spec},
    }


@pytest.fixture
async def ns(fleet: FleetHandle) -> AsyncIterator[str]:
    """The same fresh namespace in every tenant."""
    async with namespace_in(fleet, "l4") as name:
        yield name


async def deploy(
    kube: Kube, ns: str, name: str, ports: list[Obj], replicas: int = 2, **spec: object
) -> None:
    await kube.create(DEPLOYMENTS, echo_deployment(name, replicas, PORTS), ns)
    await kube.create(SERVICES, lb_service(name, ports, **spec), ns)


async def lb_address(kube: Kube, ns: str, name: str) -> str:
    """The address kubelbd wrote into the tenant Service's status."""

    async def check() -> str:
        svc = await kube.get(SERVICES, name, ns)
        ingress = (svc.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        assert ingress and ingress[0].get("ip"), svc.get("status")
        return str(ingress[0]["ip"])

    return await eventually(check, what=f"an address on Service {ns}/{name}")


async def echoes(host: str, port: int, payload: bytes = b"ping\x00\xff") -> bool:
    got = await tcp_echo(host, port, payload)
    assert got == payload, got
    return True


async def udp_echoes(host: str, port: int) -> bool:
    got = await udp_echo(host, port, b"datagram")
    assert got == b"datagram", got
    return True


async def test_tcp_udp_and_multiple_ports_through_a_pool_address(
    fleet: FleetHandle, ns: str
) -> None:
    kube, mgmt = fleet.kube["alpha"], fleet.kube["mgmt"]
    ports = [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
        {"name": "raw", "port": 9000, "protocol": "TCP"},
        {"name": "dgram", "port": 9000, "protocol": "UDP"},
    ]
    await deploy(kube, ns, "multi", ports)
    addr = await lb_address(kube, ns, "multi")
    assert addr.startswith("127.0.200."), addr
    await eventually(lambda: echoes(addr, 9000), what="TCP echo through Envoy")
    await eventually(lambda: udp_echoes(addr, 9000), what="UDP echo through Envoy")

    async def http() -> bool:
        status, body, _ = await http_get(f"http://{addr}:80/l4")
        assert status == 200 and body["namespace"] == ns and body["pod"].startswith("multi-")
        return True

    await eventually(http, what="HTTP through the TCP listener")
    record = await mgmt.get(LOADBALANCERS, f"{ns}.multi", "tenant-alpha")
    assert record["status"]["address"] == addr
    assert {(p["port"], p["protocol"], p["nodePort"]) for p in record["spec"]["ports"]} == {
        (p["port"], p["protocol"], p["nodePort"])
        for p in (await kube.get(SERVICES, "multi", ns))["spec"]["ports"]
    }


async def test_two_tenants_on_the_same_port_do_not_collide(fleet: FleetHandle, ns: str) -> None:
    ports = [{"name": "raw", "port": 9000, "protocol": "TCP"}]
    await deploy(fleet.kube["alpha"], ns, "same", ports)
    await deploy(fleet.kube["beta"], ns, "same", ports)
    a = await lb_address(fleet.kube["alpha"], ns, "same")
    b = await lb_address(fleet.kube["beta"], ns, "same")
    assert a != b
    await eventually(lambda: echoes(a, 9000), what="alpha's echo")
    await eventually(lambda: echoes(b, 9000), what="beta's echo")


async def test_proxy_protocol_and_client_ip_affinity(fleet: FleetHandle, ns: str) -> None:
    kube = fleet.kube["alpha"]
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    # Local: a node only sends to its own pod, so the pod's node is the node Envoy chose.
    await deploy(
        kube, ns, "sticky", ports, replicas=3, sessionAffinity="ClientIP",
        externalTrafficPolicy="Local", annotations={"kubelb.io/proxy-protocol": "v2"},
    )  # fmt: skip
    addr = await lb_address(kube, ns, "sticky")

    async def proxied() -> Obj:
        status, body, _ = await http_get(f"http://{addr}:80/pp")
        assert status == 200, body
        assert body.get("proxyProtocol", {}).get("version") == 2, body
        return dict(body)

    body = await eventually(proxied, what="a PROXY v2 header at the backend")
    assert body["proxyProtocol"]["source"].startswith("127.0.0.1:")
    assert body["proxyProtocol"]["destination"] == f"{addr}:80"

    # ClientIP affinity: each client address always lands on the same tenant node, and
    # different client addresses are spread over the nodes (ring hash of the source address).
    # With Local traffic, a node whose pod is not ready yet refuses until Envoy's health check
    # notices: first every node's pod, then every client answered once.
    async def on_every_node() -> bool:
        pods, _ = await kube.list(PODS, ns, labelSelector="app=sticky")
        ready = {
            p["spec"].get("nodeName")
            for p in pods
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (p.get("status") or {}).get("conditions") or [])
        }  # fmt: skip
        assert ready == {"node-1", "node-2", "node-3"}, ready
        return True

    await eventually(on_every_node, what="a ready sticky pod on every node")

    # Every replica's Envoy hashes over the nodes its own health checks passed: until each
    # has passed all three, two replicas (both listening on the pool address) map a client to
    # different nodes.
    async def healthy_everywhere() -> bool:
        for r in fleet.layout.replica_set:
            _, text, _ = await http_get(f"http://127.0.0.1:{r.admin_port}/clusters")
            flags = [
                x.split("::")
                for x in str(text).splitlines()
                if x.startswith(f"l4/alpha/{ns}/sticky/") and "::health_flags::" in x
            ]
            healthy = {f[1].rpartition(":")[0] for f in flags if f[-1] == "healthy"}
            assert healthy == {"127.0.1.1", "127.0.1.2", "127.0.1.3"}, (r.name, flags)
        return True

    await eventually(healthy_everywhere, what="every node healthy in every Envoy")
    clients = [f"127.0.0.{i}" for i in range(11, 31)]
    for client in clients:

        async def answered(client: str = client) -> bool:
            status, body, _ = await http_get(f"http://{addr}:80/pp", source=client)
            assert status == 200, body
            return True

        await eventually(answered, what=f"an answer for client {client}")
    chosen: dict[str, str] = {}
    for client in clients:
        nodes = set()
        for _ in range(4):
            status, body, _ = await http_get(f"http://{addr}:80/pp", source=client)
            assert status == 200, body
            assert body["proxyProtocol"]["source"].startswith(f"{client}:"), body
            nodes.add(body["node"])
        assert len(nodes) == 1, (client, nodes)
        chosen[client] = nodes.pop()
    assert len(set(chosen.values())) > 1, chosen


async def test_failures_are_reported_on_the_record_and_the_service(
    fleet: FleetHandle, ns: str
) -> None:
    kube, mgmt = fleet.kube["alpha"], fleet.kube["mgmt"]
    ports = [{"name": "sig", "port": 3868, "protocol": "SCTP"}, {"name": "raw", "port": 9000}]
    await deploy(kube, ns, "sctp", ports, loadBalancerIP="10.1.2.3")

    async def record_conditions() -> dict[str, Obj]:
        rec = await mgmt.get(LOADBALANCERS, f"{ns}.sctp", "tenant-alpha")
        conds = conditions(rec)
        assert conds.get("Accepted", {}).get("reason") == "UnsupportedProtocol", conds
        assert conds.get("Programmed", {}).get("reason") == "AddressNotInPool", conds
        return conds

    await eventually(
        record_conditions,
        timeout=RECORD_STATUS_TIMEOUT,
        what="conditions on the LoadBalancer record",
    )

    async def events() -> bool:
        found, _ = await kube.list(EVENTS, ns, fieldSelector="involvedObject.name=sctp")
        reasons = {e["reason"] for e in found}
        assert {"UnsupportedProtocol", "AddressNotInPool"} <= reasons, reasons
        return True

    await eventually(events, what="Events on the tenant Service")
    svc = await kube.get(SERVICES, "sctp", ns)
    assert not (svc.get("status") or {}).get("loadBalancer", {}).get("ingress")


async def test_requested_address_taken_and_released_on_delete(fleet: FleetHandle, ns: str) -> None:
    alpha, beta, mgmt = fleet.kube["alpha"], fleet.kube["beta"], fleet.kube["mgmt"]
    ports = [{"name": "raw", "port": 9000, "protocol": "TCP"}]
    await deploy(alpha, ns, "first", ports)
    addr = await lb_address(alpha, ns, "first")
    await deploy(beta, ns, "wants", ports, loadBalancerIP=addr)

    async def in_use() -> bool:
        rec = await mgmt.get(LOADBALANCERS, f"{ns}.wants", "tenant-beta")
        conds = conditions(rec)
        assert conds.get("Programmed", {}).get("reason") == "AddressInUse", conds
        return True

    await eventually(
        in_use, timeout=RECORD_STATUS_TIMEOUT, what="AddressInUse for the younger claim"
    )
    # Deleting the holder releases the address; the waiting Service then gets it.
    await alpha.delete(SERVICES, "first", ns)

    async def gone() -> bool:
        assert await mgmt.get_or_none(LOADBALANCERS, f"{ns}.first", "tenant-alpha") is None
        return True

    await eventually(gone, what="the record of the deleted Service to go")
    assert await lb_address(beta, ns, "wants") == addr
    await eventually(lambda: echoes(addr, 9000), what="beta now served on the released address")


async def test_allocations_survive_a_kubelbd_restart(fleet: FleetHandle, ns: str) -> None:
    kube = fleet.kube["alpha"]
    ports = [{"name": "raw", "port": 9000, "protocol": "TCP"}]
    names = ["keep-a", "keep-b"]
    for n in names:
        await deploy(kube, ns, n, ports)
    before = {n: await lb_address(kube, ns, n) for n in names}
    await stop_kubelbd()
    await start_kubelbd()
    # A new Service after the restart must not take an address already given out.
    await deploy(kube, ns, "after", ports)
    after = await lb_address(kube, ns, "after")
    assert after not in before.values()
    for n in names:
        assert await lb_address(kube, ns, n) == before[n]
        await eventually(partial(echoes, before[n], 9000), what=f"{n} still served")


async def test_dead_node_is_taken_out_of_rotation_by_health_checks(
    fleet: FleetHandle, ns: str
) -> None:
    kube = fleet.kube["alpha"]
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    # Local: each node sends only to its own pod, so which node Envoy picks decides everything
    # (with Cluster, the other nodes would still forward to the dead node's pod until the
    # node controller notices, which is the tenant cluster's business, not the LB's).
    await deploy(kube, ns, "hc", ports, replicas=3, externalTrafficPolicy="Local")
    addr = await lb_address(kube, ns, "hc")

    async def all_nodes() -> bool:
        seen = set()
        for _ in range(15):
            status, body, _ = await http_get(f"http://{addr}:80/")
            assert status == 200
            seen.add(body["node"])
        assert seen == {"node-1", "node-2", "node-3"}, seen
        return True

    await eventually(all_nodes, what="traffic on all three nodes")
    # SIGKILL: the Node stays Ready for the controller's grace period, so only Envoy's health
    # checks (and connect retries) keep traffic off it meanwhile.
    state = State.load(fleet.layout.state_file)
    assert state is not None
    os.kill(state.procs["alpha/node-3"].pid, signal.SIGKILL)
    try:
        admin = f"http://127.0.0.1:{fleet.layout.envoy_admin_port}/clusters"

        async def unhealthy() -> bool:
            _, text, _ = await http_get(admin)
            lines = [x for x in str(text).splitlines() if x.startswith(f"l4/alpha/{ns}/hc/")]
            flags = [x for x in lines if "127.0.1.3:" in x and "health_flags::" in x]
            assert any("failed_active_hc" in x for x in flags), [
                x for x in lines if "health_flags" in x or "127.0.1.3" in x
            ][:12]
            return True

        await eventually(unhealthy, timeout=20, what="node-3 failing Envoy's health check")
        for _ in range(20):
            status, body, _ = await http_get(f"http://{addr}:80/")
            assert status == 200 and body["node"] != "node-3"
    finally:
        await run_fleet("start", "node-3", "alpha")


async def test_udp_follows_the_tenants_ready_nodes(fleet: FleetHandle, ns: str) -> None:
    """Envoy has no UDP health check: a UDP cluster holds the tenant's Ready nodes, and a node
    that stops being Ready leaves it (and comes back with its readiness)."""
    kube = fleet.kube["alpha"]
    await deploy(kube, ns, "dns", [{"name": "dns", "port": 53, "targetPort": 9000,
                                    "protocol": "UDP"}], replicas=3)  # fmt: skip
    addr = await lb_address(kube, ns, "dns")
    await eventually(lambda: udp_echoes(addr, 53), what="UDP echo through Envoy")
    admin = f"http://127.0.0.1:{fleet.layout.envoy_admin_port}/clusters"

    async def udp_nodes() -> set[str]:
        _, text, _ = await http_get(admin)
        prefix = f"l4/alpha/{ns}/dns/"
        return {
            line.split("::")[1].rsplit(":", 1)[0]
            for line in str(text).splitlines()
            if line.startswith(prefix) and line.endswith("::weight::1")
        }

    async def nodes_are(want: set[str]) -> bool:
        got = await udp_nodes()
        assert got == want, got
        return True

    every = {"127.0.1.1", "127.0.1.2", "127.0.1.3"}
    await eventually(lambda: nodes_are(every), what="all three nodes in the UDP cluster")
    await run_fleet("stop", "node-3", "alpha")
    try:
        await eventually(
            lambda: nodes_are(every - {"127.0.1.3"}), timeout=60, what="node-3 out of UDP"
        )
        await eventually(lambda: udp_echoes(addr, 53), what="UDP echo without node-3")
    finally:
        await run_fleet("start", "node-3", "alpha")
    await eventually(lambda: nodes_are(every), timeout=60, what="node-3 back in the UDP cluster")
