"""Gateway API end to end: the GatewayClass kubelbd keeps in a tenant is Accepted; a Gateway
gets an address of its own from the pool and Envoy listens there on the listener's real port;
an HTTPRoute attached to it is served there by its hostnames, paths and header matches, with
weights, and says so in status.parents; a route for another Gateway's listener or a hostname
the listener does not take is not; deleting the route stops it. HTTPS listeners are served
with the tenant's Secret, chosen by SNI, follow its rotation and its deletion; filters change
headers and redirect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubefleet import certs

from kubelbd.objects import SECRETS, Obj
from kubelbd.records.names import copy_name, namespace_of
from kubelbd.sources.gatewayapi import GATEWAY_CLASSES, GATEWAYS, HTTPROUTES

from .support import (
    FleetHandle,
    conditions,
    deploy_app,
    eventually,
    http_get,
    https_request,
    lb_addr,
    namespace_in,
    tls_secret,
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
                       # A protocol kubelbd does not serve (an implementation-specific
                       # one, as Gateway API allows them): the Gateway serves the others.
                       {"name": "raw", "port": 9000, "protocol": "example.com/raw"}]),
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


def listener_conditions(gw: Obj, name: str) -> dict[str, Obj]:
    [listener] = [x for x in (gw.get("status") or {}).get("listeners", []) if x["name"] == name]
    return {c["type"]: c for c in listener["conditions"]}


async def test_https_listeners_are_served_with_the_tenants_secret_by_sni(
    fleet: FleetHandle, ns: str, tmp_path: Any
) -> None:
    kube = fleet.kube["alpha"]
    await deploy_app(kube, ns, "app")
    await deploy_app(kube, ns, "v2")
    shop = f"{unique('shop')}.example.test"
    first, second = certs.self_signed("*.example.test"), certs.self_signed(shop)
    await kube.create(SECRETS, tls_secret("any-cert", first), ns)
    await kube.create(SECRETS, tls_secret("shop-cert", second), ns)

    def tls(secret: str) -> Obj:
        return {"certificateRefs": [{"name": secret}]}

    await kube.create(
        GATEWAYS,
        gateway("gws", [{"name": "any", "port": 443, "protocol": "HTTPS", "tls": tls("any-cert")},
                        {"name": "shop", "port": 443, "protocol": "HTTPS", "hostname": shop,
                         "tls": tls("shop-cert")}]),
        ns,
    )  # fmt: skip
    await kube.create(
        HTTPROUTES, http_route("any", "gws", [], [{"backendRefs": [backend("app")]}],
                               sectionName="any"), ns,
    )  # fmt: skip
    await kube.create(
        HTTPROUTES, http_route("shop", "gws", [], [{"backendRefs": [backend("v2")]}],
                               sectionName="shop"), ns,
    )  # fmt: skip

    async def address() -> str:
        gw = await kube.get(GATEWAYS, "gws", ns)
        assert conditions(gw).get("Programmed", {}).get("status") == "True", gw.get("status")
        for name in ("any", "shop"):
            assert listener_conditions(gw, name)["Programmed"]["status"] == "True"
        return str(gw["status"]["addresses"][0]["value"])

    addr = await eventually(address, 60, what="the HTTPS Gateway Programmed")
    ca_first, ca_second = tmp_path / "first.pem", tmp_path / "second.pem"
    ca_first.write_bytes(first.cert_pem())
    ca_second.write_bytes(second.cert_pem())

    async def by_sni() -> bool:
        # The listener without a hostname takes any other name, with its own certificate.
        status, body, _ = await https_request(f"{addr}:443", "a.example.test", cafile=str(ca_first))
        assert status == 200 and body["pod"].startswith("app-"), (status, body)
        status, body, _ = await https_request(f"{addr}:443", shop, cafile=str(ca_second))
        assert status == 200 and body["pod"].startswith("v2-"), (status, body)
        return True

    await eventually(by_sni, 60, what="both HTTPS listeners served, each with its certificate")
    # The Secret rotated: the new certificate is served.
    rotated = certs.self_signed(shop)
    await kube.apply(SECRETS, {**tls_secret("shop-cert", rotated), "metadata": {
        "name": "shop-cert", "namespace": ns}})  # fmt: skip
    ca_rotated = tmp_path / "rotated.pem"
    ca_rotated.write_bytes(rotated.cert_pem())

    async def rotated_served() -> bool:
        status, _, _ = await https_request(f"{addr}:443", shop, cafile=str(ca_rotated))
        assert status == 200
        return True

    await eventually(rotated_served, 60, what="the rotated certificate served")
    # The Secret deleted: the listener is not served and says why; the other one still is.
    await kube.delete(SECRETS, "shop-cert", ns)

    async def refused() -> bool:
        gw = await kube.get(GATEWAYS, "gws", ns)
        conds = listener_conditions(gw, "shop")
        assert conds["ResolvedRefs"]["reason"] == "InvalidCertificateRef", conds
        assert conds["Programmed"]["status"] == "False", conds
        status, _, _ = await https_request(f"{addr}:443", "a.example.test", cafile=str(ca_first))
        assert status == 200
        return True

    await eventually(refused, 60, what="a listener whose Secret is gone not Programmed")
    # The Gateway gone: no copy of its Secrets is left in the management cluster.
    await kube.delete(GATEWAYS, "gws", ns)

    async def copies_gone() -> bool:
        for name in ("any-cert", "shop-cert"):
            copy = await fleet.kube["mgmt"].get_or_none(
                SECRETS, copy_name(ns, name), namespace_of("alpha")
            )
            assert copy is None, name
        return True

    await eventually(copies_gone, 60, what="the Secrets' copies removed with the Gateway")


async def test_filters_change_headers_and_redirect(fleet: FleetHandle, ns: str) -> None:
    kube = fleet.kube["alpha"]
    await deploy_app(kube, ns, "app")
    await kube.create(GATEWAYS, gateway("gwf", [{"name": "http", "port": 80, "protocol": "HTTP"}]),
                      ns)  # fmt: skip
    host = f"{unique('filters')}.example.test"
    rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/h"}}],
         "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
             "set": [{"name": "X-Set", "value": "kubelbd"}], "remove": ["X-Gone"]}}],
         "backendRefs": [backend("app")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "hostname": "new.example.test", "statusCode": 301}}]},
    ]  # fmt: skip
    await kube.create(HTTPROUTES, http_route("f", "gwf", [host], rules), ns)

    async def address() -> str:
        gw = await kube.get(GATEWAYS, "gwf", ns)
        assert conditions(gw).get("Programmed", {}).get("status") == "True", gw.get("status")
        return str(gw["status"]["addresses"][0]["value"])

    url = f"http://{await eventually(address, 60, what='the Gateway Programmed')}:80"

    async def filtered() -> bool:
        status, body = await get(f"{url}/h", host, **{"X-Set": "tenant", "X-Gone": "1"})
        assert status == 200, (status, body)
        headers = {k.lower(): v for k, v in body["headers"].items()}
        assert headers.get("x-set") == ["kubelbd"] and "x-gone" not in headers, headers
        status, _, response = await http_get(f"{url}/old/x", host=host)
        location = {k.lower(): v for k, v in response.items()}.get("location")
        assert status == 301 and location == "http://new.example.test/old/x", (status, location)
        return True

    await eventually(filtered, 60, what="headers changed and a redirect answered")
