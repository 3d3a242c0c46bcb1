"""Layer 4 in service mode: a management cluster Service of type LoadBalancer in front of
Envoy's allocated listener ports. No load balancer implementation runs in the fleet's
management cluster, so the test plays it by writing that Service's status.

kubelbd is restarted in service mode for this module (and back in pool mode afterwards)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from functools import partial

import pytest
from kubefleet import manifests
from kubefleet.layout import Layout

from kubelbd.objects import DEPLOYMENTS, SERVICES, Obj
from kubelbd.records.names import LOADBALANCERS

from .support import (
    FleetHandle,
    echo_deployment,
    eventually,
    kubelbd_as_component,
    namespace_in,
    tcp_echo,
)

pytestmark = pytest.mark.e2e

PORT_RANGE = (21000, 21099)


@pytest.fixture(scope="module")
def service_mode(fleet_layout: Layout) -> Iterator[subprocess.Popen[bytes]]:
    """The fleet's kubelbd, restarted with --l4-mode service for the tests of this module, as
    deploy/l4-service-mode/ deploys it (its RBAC: Services in the management cluster)."""

    def argv(fleet_argv: list[str]) -> list[str]:
        return [
            *fleet_argv,
            "--l4-mode=service",
            "--l4-listen-address=127.0.0.1",
            f"--l4-port-range={PORT_RANGE[0]}-{PORT_RANGE[1]}",
        ]

    with kubelbd_as_component(
        fleet_layout, manifests.L4_SERVICE_MODE, argv, "kubelbd-service-mode.log"
    ) as proc:
        yield proc


@pytest.fixture
async def ns(fleet: FleetHandle, service_mode: subprocess.Popen[bytes]) -> AsyncIterator[str]:
    """The same fresh namespace in every tenant; kubelbd must still run when the test ends."""
    async with namespace_in(fleet, "svcmode") as name:
        yield name
    assert service_mode.poll() is None, "kubelbd in service mode exited during the test"


def lb(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": [{"name": "raw", "port": 443, "targetPort": 9000, "protocol": "TCP"}],
        },
    }


async def test_service_mode_end_to_end(fleet: FleetHandle, ns: str) -> None:
    mgmt = fleet.kube["mgmt"]
    ports = [{"name": "raw", "containerPort": 9000, "protocol": "TCP"}]
    listener_ports = {}
    for tenant in ("alpha", "beta"):
        kube = fleet.kube[tenant]
        await kube.create(DEPLOYMENTS, echo_deployment("app", 2, ports), ns)
        await kube.create(SERVICES, lb("app"), ns)

    for tenant in ("alpha", "beta"):

        async def management_service(tenant: str = tenant) -> Obj:
            svc = await mgmt.get(SERVICES, f"lb-{ns}-app", f"tenant-{tenant}")
            assert svc["spec"]["type"] == "LoadBalancer"
            assert svc["spec"]["selector"] == {"app": "kubelbd"}
            return svc

        svc = await eventually(management_service, what=f"{tenant}'s management Service")
        (port,) = svc["spec"]["ports"]
        assert port["port"] == 443 and PORT_RANGE[0] <= port["targetPort"] <= PORT_RANGE[1]
        listener_ports[tenant] = port["targetPort"]
        # Envoy listens on the allocated port and forwards to the tenant's pods.
        await eventually(
            partial(_echoes, "127.0.0.1", port["targetPort"]), what=f"{tenant} via Envoy"
        )
    assert listener_ports["alpha"] != listener_ports["beta"]  # both use 443: no collision

    # Until the management cluster's LB assigns an address, the tenant waits for one.
    async def awaiting() -> bool:
        rec = await mgmt.get(LOADBALANCERS, f"{ns}.app", "tenant-alpha")
        status = rec.get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions", [])}
        assert conds.get("Programmed", {}).get("reason") == "AwaitingAddress", conds
        assert [p["listenerPort"] for p in status["listenerPorts"]] == [listener_ports["alpha"]]
        return True

    await eventually(awaiting, what="AwaitingAddress")
    # Play MetalLB: write the management Service's status; kubelbd passes it on.
    await mgmt.patch(
        SERVICES,
        f"lb-{ns}-app",
        {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.250.77"}]}}},
        "tenant-alpha",
        subresource="status",
    )

    async def passed_on() -> bool:
        svc = await fleet.kube["alpha"].get(SERVICES, "app", ns)
        ingress = svc["status"]["loadBalancer"].get("ingress") or []
        assert [i.get("ip") for i in ingress] == ["127.0.250.77"], svc["status"]
        return True

    await eventually(passed_on, what="the address in the tenant Service's status")

    # Deleting the tenant Service removes the management Service and frees the port.
    await fleet.kube["alpha"].delete(SERVICES, "app", ns)

    async def removed() -> bool:
        assert await mgmt.get_or_none(SERVICES, f"lb-{ns}-app", "tenant-alpha") is None
        return True

    await eventually(removed, what="the management Service to be deleted")


async def _echoes(host: str, port: int) -> bool:
    got = await tcp_echo(host, port, b"hello l4")
    assert got == b"hello l4", got
    return True
