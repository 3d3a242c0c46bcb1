"""The fleet as the Gateway API conformance suite needs it: the suite's CRDs served in every
tenant, echo-basic pods running the real echo-basic behind their Service, and their logs read
through the API server (`kubectl logs`, as the suite's mirror tests do)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess

import pytest

from kubelbd.objects import DEPLOYMENTS, PODS, SERVICES, Obj

from .support import (
    FleetHandle,
    create_namespace,
    delete_namespace,
    echo_deployment,
    eventually,
    fleet_env,
    http_get,
    ready_pods,
    service,
    unique,
)

pytestmark = pytest.mark.e2e

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
IMAGE = "registry.k8s.io/gateway-api/echo-basic:v1.5.1"


async def test_every_tenant_serves_the_gateway_api_kinds_of_the_suites_release(
    fleet: FleetHandle,
) -> None:
    for tenant in fleet.tenants:
        kube = fleet.kube[tenant]
        crds = (await kube.request("GET", CRDS))["items"]
        gateway = {
            c["metadata"]["name"]: c["metadata"]["annotations"]
            for c in crds
            if c["spec"]["group"] == "gateway.networking.k8s.io"
        }
        assert {"gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io",
                "tcproutes.gateway.networking.k8s.io"} <= set(gateway), tenant  # fmt: skip
        stamps = {(a["gateway.networking.k8s.io/bundle-version"],
                   a["gateway.networking.k8s.io/channel"]) for a in gateway.values()}  # fmt: skip
        assert stamps == {("v1.6.3", "standard")}, tenant
        await kube.request("GET", "/apis/gateway.networking.k8s.io/v1/httproutes")


def _echo_basic(name: str) -> Obj:
    """support's echo Deployment, as the suite's base manifests have it: echo-basic's image, its
    identity from the downward API, no containerPorts (echo-basic's env decides)."""
    d = echo_deployment(name, replicas=2)
    [container] = d["spec"]["template"]["spec"]["containers"]
    container.pop("ports")
    container["image"] = IMAGE
    container["env"] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return d


async def test_echo_basic_pods_answer_behind_their_service_and_log_through_the_api(
    fleet: FleetHandle,
) -> None:
    kube = fleet.kube["alpha"]
    ns = unique("echo-basic")
    await create_namespace(kube, ns)
    try:
        await kube.create(DEPLOYMENTS, _echo_basic("infra-backend"), ns)
        svc = service("infra-backend", [{"port": 8080, "targetPort": 3000}], "NodePort")
        node_port = (await kube.create(SERVICES, svc, ns))["spec"]["ports"][0]["nodePort"]

        async def both_ready() -> bool:
            return len(await ready_pods(kube, ns, "infra-backend")) == 2

        await eventually(both_ready, timeout=60, what="both echo-basic pods Ready")
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        node = fleet.node_ips("alpha")[0]
        path = f"/{unique('mirror')}"

        async def echoed() -> bool:
            status, body, _ = await http_get(f"http://{node}:{node_port}{path}", host="x.test")
            return status == 200 and body["namespace"] == ns and body["path"] == path

        await eventually(echoed, what="echo-basic's JSON through the NodePort")
        pods, _ = await kube.list(PODS, ns, labelSelector="app=infra-backend")
        env = fleet_env(fleet.layout)
        stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        logs = ""
        for p in pods:
            argv = [
                env["KUBECTL"],
                f"--kubeconfig={env['KUBECONFIG_ALPHA']}",
                *("-n", ns, "logs", p["metadata"]["name"], "-c", "echo"),
                f"--since-time={stamp}",
            ]
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            logs += done.stdout
        assert f"Echoing back request made to {path} to client" in logs
    finally:
        await delete_namespace(kube, ns)
