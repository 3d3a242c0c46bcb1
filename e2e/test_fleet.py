"""The local fleet behaves like real clusters: NodePorts on every node, endpoints that follow
scaling and node failures, and tenants that do not see each other."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kubelbd.kube import Kube
from kubelbd.objects import DEPLOYMENTS, NODES, PODS, SERVICES

from .support import (
    FleetHandle,
    create_namespace,
    delete_namespace,
    deploy_echo,
    echo_deployment,
    eventually,
    http_get,
    ready_pods,
    run_fleet,
    service,
    tcp_echo,
    udp_echo,
    unique,
)

pytestmark = pytest.mark.e2e


async def answering_pods(ip: str, port: int, rounds: int = 9) -> set[str]:
    """Pods that answered `rounds` fresh connections to one node IP:nodePort."""
    seen = set()
    for _ in range(rounds):
        status, body, _ = await http_get(f"http://{ip}:{port}/probe")
        assert status == 200, body
        seen.add(body["pod"])
    return seen


async def wait_ready_pods(kube: Kube, ns: str, app: str, n: int) -> set[str]:
    async def check() -> set[str]:
        pods = await ready_pods(kube, ns, app)
        assert len(pods) == n, pods
        return pods

    return await eventually(check, what=f"{n} ready {app} pods")


async def wait_answers(ip: str, port: int, pods: set[str]) -> None:
    async def check() -> bool:
        got = await answering_pods(ip, port)
        assert got == pods, f"{ip}:{port} answered from {sorted(got)}, want {sorted(pods)}"
        return True

    await eventually(check, what=f"{ip}:{port} to answer from {sorted(pods)}")


@pytest.fixture
async def alpha_ns(fleet: FleetHandle) -> AsyncIterator[str]:
    ns = unique("fleet")
    await create_namespace(fleet.kube["alpha"], ns)
    yield ns
    await delete_namespace(fleet.kube["alpha"], ns)


async def test_nodeport_answers_on_every_node_with_all_pods(
    fleet: FleetHandle, alpha_ns: str
) -> None:
    kube = fleet.kube["alpha"]
    svc = await deploy_echo(kube, alpha_ns, "echo", replicas=3, svc_type="NodePort")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    pods = await wait_ready_pods(kube, alpha_ns, "echo", 3)
    for ip in fleet.node_ips("alpha"):
        await wait_answers(ip, node_port, pods)
    status, body, headers = await http_get(
        f"http://127.0.1.1:{node_port}/some/path?q=1",
        host="echo.example",
        headers={"X-Test": "yes"},
    )
    assert status == 200
    assert body["path"] == "/some/path?q=1"
    assert body["host"] == "echo.example"
    assert body["method"] == "GET"
    assert body["namespace"] == alpha_ns
    assert body["headers"]["X-Test"] == ["yes"]
    assert body["node"] in {"node-1", "node-2", "node-3"}
    assert headers["X-Pod"] == body["pod"]


async def test_endpoints_follow_scaling(fleet: FleetHandle, alpha_ns: str) -> None:
    kube = fleet.kube["alpha"]
    svc = await deploy_echo(kube, alpha_ns, "scaled", replicas=3, svc_type="NodePort")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    await wait_ready_pods(kube, alpha_ns, "scaled", 3)
    for replicas in (1, 2, 3):
        await kube.patch(DEPLOYMENTS, "scaled", {"spec": {"replicas": replicas}}, alpha_ns)
        pods = await wait_ready_pods(kube, alpha_ns, "scaled", replicas)
        await wait_answers("127.0.1.2", node_port, pods)


async def test_stopped_node_stops_answering(fleet: FleetHandle, alpha_ns: str) -> None:
    kube = fleet.kube["alpha"]
    svc = await deploy_echo(kube, alpha_ns, "nodes", replicas=3, svc_type="NodePort")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    pods = await wait_ready_pods(kube, alpha_ns, "nodes", 3)
    on_node3 = set()
    for p in pods:
        if (await kube.get(PODS, p, alpha_ns))["spec"]["nodeName"] == "node-3":
            on_node3.add(p)
    await run_fleet("stop", "node-3", "alpha")
    try:
        with pytest.raises(OSError):
            await http_get(f"http://127.0.1.3:{node_port}/")
        node = await kube.get(NODES, "node-3")
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready != "True"
        await wait_ready_pods(kube, alpha_ns, "nodes", 3 - len(on_node3))
        await wait_answers("127.0.1.1", node_port, pods - on_node3)
    finally:
        await run_fleet("start", "node-3", "alpha")
    await wait_ready_pods(kube, alpha_ns, "nodes", 3)
    await wait_answers("127.0.1.3", node_port, pods)


async def test_tcp_and_udp_echo_through_nodeports(fleet: FleetHandle, alpha_ns: str) -> None:
    kube = fleet.kube["alpha"]
    ports = [
        {"name": "raw", "containerPort": 9000, "protocol": "TCP"},
        {"name": "dgram", "containerPort": 9000, "protocol": "UDP"},
    ]
    await kube.create(DEPLOYMENTS, echo_deployment("l4", 2, ports), alpha_ns)
    svc_ports = [
        {"name": "raw", "port": 9000, "protocol": "TCP"},
        {"name": "dgram", "port": 9000, "protocol": "UDP"},
    ]
    svc = await kube.create(SERVICES, service("l4", svc_ports, "NodePort"), alpha_ns)
    by_name = {p["name"]: p["nodePort"] for p in svc["spec"]["ports"]}
    payload = b"\x00\x01not http at all\r\n\xff"

    async def tcp() -> bool:
        got = await tcp_echo("127.0.1.1", by_name["raw"], payload)
        assert got == payload, got
        return True

    async def udp() -> bool:
        got = await udp_echo("127.0.1.2", by_name["dgram"], b"datagram")
        assert got == b"datagram", got
        return True

    await eventually(tcp, what="TCP echo through the NodePort")
    await eventually(udp, what="UDP echo through the NodePort")


async def test_tenants_do_not_interfere(fleet: FleetHandle) -> None:
    ns = unique("twin")
    alpha, beta = fleet.kube["alpha"], fleet.kube["beta"]
    await create_namespace(alpha, ns)
    await create_namespace(beta, ns)
    try:
        # Same namespace, same names and the same nodePort in both clusters.
        a = await deploy_echo(alpha, ns, "twin", replicas=3, svc_type="NodePort")
        port = a["spec"]["ports"][0]["nodePort"]
        await beta.create(DEPLOYMENTS, echo_deployment("twin", 2), ns)
        svc_ports = [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": port}]
        await beta.create(SERVICES, service("twin", svc_ports, "NodePort"), ns)
        alpha_pods = await wait_ready_pods(alpha, ns, "twin", 3)
        beta_pods = await wait_ready_pods(beta, ns, "twin", 2)
        for cluster, pods in (("alpha", alpha_pods), ("beta", beta_pods)):
            for ip in fleet.node_ips(cluster):
                await wait_answers(ip, port, pods)
    finally:
        await delete_namespace(alpha, ns)
        await delete_namespace(beta, ns)
