"""Gateway API end to end (HTTP): the GatewayClass kubelbd keeps in a tenant is Accepted; a
Gateway gets an address of its own from the pool and Envoy listens there on the listener's
real port; an HTTPRoute attached to it is served there by its hostnames, paths and header
matches, with weights, and says so in status.parents; a route for another Gateway's listener
or a hostname the listener does not take is not; deleting the route stops it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kubelbd.objects import Obj
from kubelbd.sources.gatewayapi import GATEWAY_CLASSES, GATEWAYS, HTTPROUTES

from .support import (
    FleetHandle,
    conditions,
    deploy_app,
    eventually,
    http_get,
    lb_addr,
    namespace_in,
    unique,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def ns(fleet: FleetHandle) -> AsyncIterator[str]:
    async with namespace_in(fleet, "gw", ["alpha"]) as name:
        yield name


def gateway(name: str, listeners: list[Obj]) -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"gatewayClassName": "kubelb", "listeners": listeners},
    }


def http_route(name: str, gw: str, hostnames: list[str], rules: list[Obj], **ref: Any) -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": [{"name": gw, **ref}], "hostnames": hostnames, "rules": rules},
    }


def backend(name: str, weight: int = 1) -> Obj:
    return {"name": name, "port": 80, "weight": weight}


async def get(url: str, host: str, **headers: str) -> tuple[int, Any]:
    status, body, _ = await http_get(url, host=host, headers=headers)
    return status, body


async def test_a_gateway_serves_its_routes_at_its_own_address(fleet: FleetHandle, ns: str) -> None:
    kube = fleet.kube["alpha"]

    async def class_accepted() -> bool:
        cls = await kube.get(GATEWAY_CLASSES, "kubelb")
        assert conditions(cls).get("Accepted", {}).get("status") == "True", cls.get("status")
        return True

    await eventually(class_accepted, what="the GatewayClass kubelb Accepted")
    for app in ("app", "v2"):
        await deploy_app(kube, ns, app)
    await kube.create(
        GATEWAYS,
        gateway("gw", [{"name": "http", "port": 80, "protocol": "HTTP"},
                       {"name": "other", "port": 8081, "protocol": "HTTP",
                        "hostname": "only.example.test"},
                       {"name": "raw", "port": 9000, "protocol": "TCP"}]),
        ns,
    )  # fmt: skip

    async def programmed() -> str:
        gw = await kube.get(GATEWAYS, "gw", ns)
        status = gw.get("status") or {}
        assert conditions(gw).get("Programmed", {}).get("status") == "True", status
        by_name = {x["name"]: x for x in status.get("listeners", [])}
        raw = {c["type"]: c for c in by_name["raw"]["conditions"]}
        assert raw["Accepted"]["status"] == "False", by_name["raw"]
        return str(status["addresses"][0]["value"])

    address = await eventually(programmed, 60, what="the Gateway Programmed with an address")
    host = f"{unique('shop')}.example.test"
    rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
         "backendRefs": [backend("app")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"},
                      "headers": [{"name": "X-Version", "value": "2"}]}],
         "backendRefs": [backend("v2")]},
    ]  # fmt: skip
    await kube.create(HTTPROUTES, http_route("shop", "gw", [host], rules), ns)
    url = f"http://{address}:80"

    async def served() -> bool:
        status, body = await get(f"{url}/v2/x", host, **{"X-Version": "2"})
        assert status == 200 and body["pod"].startswith("v2-"), (status, body)
        status, body = await get(f"{url}/v2/x", host)
        assert status == 200 and body["pod"].startswith("app-"), (status, body)
        return True

    await eventually(served, 60, what=f"{host} served at {address}:80")
    assert (await get(f"{url}/", f"other-{host}"))[0] == 404  # not a host of the route
    # Only on the Gateway's own address: the shared Ingress listener does not know it.
    assert (await get(f"http://{lb_addr(fleet.layout)}/", host))[0] == 404

    async def reported() -> bool:
        route = await kube.get(HTTPROUTES, "shop", ns)
        [parent] = (route.get("status") or {}).get("parents") or [{}]
        conds = {c["type"]: c for c in parent.get("conditions", [])}
        assert parent.get("controllerName") == "kubelb.io/gateway-controller", parent
        assert conds["Accepted"]["status"] == "True" and conds["ResolvedRefs"]["status"] == "True"
        gw = await kube.get(GATEWAYS, "gw", ns)
        counts = {x["name"]: x["attachedRoutes"] for x in gw["status"]["listeners"]}
        # The route names no listener: it attaches to every one that takes its hostname.
        assert counts == {"http": 1, "other": 0, "raw": 0}, counts
        return True

    await eventually(reported, what="status.parents and attachedRoutes")
    await kube.delete(HTTPROUTES, "shop", ns)

    async def gone() -> bool:
        assert (await get(f"{url}/", host))[0] == 404
        return True

    await eventually(gone, what="the route withdrawn with its HTTPRoute")
