"""Gateway API through the tenant side: the GatewayClass `kubelb` and its status, a Gateway
and an HTTPRoute becoming records, a Gateway change translating its routes again; and a
tenant without the Gateway API CRDs served all the same, its GatewayClass applied once they
come."""

from __future__ import annotations

import math

import pytest

from kubelbd.hub import Settling, StatusBoard
from kubelbd.kube import informer
from kubelbd.objects import INGRESSES, NAMESPACES, NODES, SERVICES, Obj
from kubelbd.records.names import LOADBALANCERS, ROUTES
from kubelbd.sources.gatewayapi import (
    CLASS_NAME,
    GATEWAY_CLASSES,
    GATEWAYS,
    HTTPROUTES,
    REFERENCE_GRANTS,
)
from kubelbd.tenant import kept
from kubelbd.tenant.sync import TenantSettings, TenantSync

from .fakekube import Connector, FakeKube, kubeconfig
from .orchestration import RecordingSink, ingress, namespace, node, running, service, until

NS = "tenant-a"


def gateway(name: str, hostname: str | None = None) -> Obj:
    listener: Obj = {"name": "http", "port": 80, "protocol": "HTTP"}
    if hostname:
        listener["hostname"] = hostname
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"gatewayClassName": CLASS_NAME, "listeners": [listener]},
    }  # fmt: skip


def httproute(name: str, gw: str, host: str, backend: str) -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"parentRefs": [{"name": gw}], "hostnames": [host],
                 "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]},
    }  # fmt: skip


def sync_of(tenant: FakeKube, mgmt: FakeKube) -> TenantSync:
    return TenantSync(
        "a", kubeconfig(tenant), mgmt, RecordingSink(), StatusBoard(), Settling(),
        TenantSettings(), connect=Connector(tenant),
    )  # fmt: skip


async def with_own_class() -> tuple[FakeKube, FakeKube]:
    """A tenant with a node and a GatewayClass of its own ("mine") naming kubelbd's
    controller, and the management cluster."""
    tenant, mgmt = FakeKube("a"), FakeKube("mgmt")
    await tenant.create(NAMESPACES, namespace("default"))
    await tenant.create(NODES, node("n1", "10.0.0.1"))
    mine = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "mine"},
            "spec": {"controllerName": "kubelb.io/gateway-controller"}}  # fmt: skip
    await tenant.create(GATEWAY_CLASSES, mine)
    return tenant, mgmt


def observed_generation(tenant: FakeKube, name: str) -> object:
    cls = tenant.stored(GATEWAY_CLASSES, name) or {}
    conditions = (cls.get("status") or {}).get("conditions") or [{}]
    return conditions[0].get("observedGeneration")


def accepted_generation(tenant: FakeKube) -> object:
    return observed_generation(tenant, CLASS_NAME)


async def test_gateways_and_routes_become_records_and_the_class_is_accepted() -> None:
    tenant, mgmt = FakeKube("a"), FakeKube("mgmt")
    await tenant.create(NAMESPACES, namespace("default"))
    await tenant.create(NODES, node("n1", "10.0.0.1"))
    await tenant.create(SERVICES, service("web"))
    await tenant.create(GATEWAYS, gateway("gw", "shop.example.com"))
    await tenant.create(HTTPROUTES, httproute("shop", "gw", "shop.example.com", "web"))
    async with running(sync_of(tenant, mgmt).run):
        await until(lambda: accepted_generation(tenant) == 1, "the GatewayClass accepted")
        cls = tenant.stored(GATEWAY_CLASSES, CLASS_NAME)
        assert cls is not None and cls["spec"]["controllerName"] == "kubelb.io/gateway-controller"
        assert {"name": "HTTPRoute"} in cls["status"]["supportedFeatures"]
        await until(lambda: mgmt.stored(LOADBALANCERS, "default.gw.gateway", NS), "Gateway's")
        await until(lambda: mgmt.stored(ROUTES, "default.shop.httproute", NS), "the route's")
        route = mgmt.stored(ROUTES, "default.shop.httproute", NS)
        assert route is not None
        (parent,) = route["spec"]["parents"]
        assert parent["accepted"] and parent["listeners"] == ["http"]
        backend = route["spec"]["rules"][0]["paths"][0]["backends"][0]
        assert backend.get("nodePort")  # through the twin kubelbd made

        # The Gateway's listener changes hostname: the route no longer meets it.
        changed = gateway("gw", "other.example.com")
        await tenant.patch(GATEWAYS, "gw", {"spec": changed["spec"]}, "default")

        def reason() -> object:
            stored = mgmt.stored(ROUTES, "default.shop.httproute", NS) or {}
            return stored.get("spec", {}).get("parents", [{}])[0].get("reason")

        await until(lambda: reason() == "NoMatchingListenerHostname", "translated again")

        # Someone edits the GatewayClass: it is kubelbd's again, its status observed anew.
        await tenant.patch(GATEWAY_CLASSES, CLASS_NAME, {"spec": {"description": "mine"}})
        await until(lambda: accepted_generation(tenant) == 3, "applied again")

        # The Gateway goes to another class: it and its routes are no longer served.
        await tenant.patch(GATEWAYS, "gw", {"spec": {"gatewayClassName": "other"}}, "default")
        await until(lambda: mgmt.stored(ROUTES, "default.shop.httproute", NS) is None, "gone")
        await until(lambda: mgmt.stored(LOADBALANCERS, "default.gw.gateway", NS) is None, "gone")


async def test_a_tenant_without_the_gateway_api_is_served_and_gets_the_class_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(informer, "NOT_SERVED_RETRY", 0.05)
    tenant, mgmt = FakeKube("a"), FakeKube("mgmt")
    for kind in (GATEWAYS, HTTPROUTES, REFERENCE_GRANTS, GATEWAY_CLASSES):
        tenant.fail("*", kind, status=404, times=math.inf)  # the CRDs are not installed
    await tenant.create(NAMESPACES, namespace("default"))
    await tenant.create(NODES, node("n1", "10.0.0.1"))
    await tenant.create(SERVICES, service("app"))
    await tenant.create(INGRESSES, ingress("site", "site.example.com", "app"))
    async with running(sync_of(tenant, mgmt).run):
        await until(lambda: mgmt.stored(ROUTES, "default.site", NS), "the Ingress's record")
        assert tenant.stored(GATEWAY_CLASSES, CLASS_NAME) is None
        tenant.heal()  # the CRDs are installed
        await until(lambda: accepted_generation(tenant) == 1, "the GatewayClass, once served")


async def test_a_tenant_registered_before_gateway_api_is_served_and_says_what_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its registration's role predates the Gateway API kinds (an upgrade in place): the API
    refuses them (403). Its Ingresses are served all the same; once `kubelbd register` runs
    again (the refusal ends), the GatewayClass comes."""
    monkeypatch.setattr(informer, "NOT_SERVED_RETRY", 0.05)
    tenant, mgmt = FakeKube("a"), FakeKube("mgmt")
    await tenant.create(NAMESPACES, namespace("default"))
    for kind in (GATEWAYS, HTTPROUTES, REFERENCE_GRANTS, GATEWAY_CLASSES, NAMESPACES):
        tenant.fail("list", kind, status=403, times=math.inf)
        tenant.fail("apply", kind, status=403, times=math.inf)
    await tenant.create(NODES, node("n1", "10.0.0.1"))
    await tenant.create(SERVICES, service("app"))
    await tenant.create(INGRESSES, ingress("site", "site.example.com", "app"))
    sync = sync_of(tenant, mgmt)
    async with running(sync.run):
        await until(lambda: mgmt.stored(ROUTES, "default.site", NS), "the Ingress's record")
        refused = {i.resource.plural for i in sync.caches.all_informers() if i.last_error}
        assert refused == {"gateways", "httproutes", "referencegrants", "gatewayclasses",
                           "namespaces"}  # fmt: skip
        assert tenant.stored(GATEWAY_CLASSES, CLASS_NAME) is None
        tenant.heal()
        await until(lambda: accepted_generation(tenant) == 1, "the GatewayClass, once allowed")


async def test_the_tenants_own_gateway_class_gets_a_status_written_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GatewayClass of the tenant's naming kubelbd's controller: Accepted at its
    generation, and written again only when that changes, not on every resync."""
    # Every write at a later second: a status compared with itself would be rewritten.
    ticks = iter(range(10**6))
    monkeypatch.setattr(kept, "timestamp", lambda: f"2026-01-01T00:00:{next(ticks):06d}Z")
    tenant, mgmt = await with_own_class()

    def observed() -> object:
        return observed_generation(tenant, "mine")

    def writes() -> int:
        return sum(1 for c in tenant.changes(GATEWAY_CLASSES) if c.key[-1] == "mine")

    async with running(sync_of(tenant, mgmt).run):
        await until(lambda: observed() == 1, "the tenant's GatewayClass accepted")
        settled = writes()
        # Gateways come and go (each a resync of the kind): nothing more is written to it.
        for i in range(3):
            await tenant.create(GATEWAYS, {**gateway(f"gw{i}"), "spec": {
                **gateway(f"gw{i}")["spec"], "gatewayClassName": "mine"}})  # fmt: skip
        await until(lambda: mgmt.stored(LOADBALANCERS, "default.gw2.gateway", NS), "served")
        await tenant.patch(GATEWAY_CLASSES, CLASS_NAME, {"spec": {"description": "x"}})
        await until(lambda: accepted_generation(tenant) == 3, "kubelb's applied again")
        assert writes() == settled
        await tenant.patch(GATEWAY_CLASSES, "mine", {"spec": {"description": "new"}})
        await until(lambda: observed() == 2, "observed at its new generation")


async def test_a_change_while_its_kinds_statuses_are_written_is_not_lost() -> None:
    """A resync of a kind computes the statuses it reports, then writes them one by one. A
    change that comes meanwhile (the conformance suite patches a BackendTLSPolicy as soon as
    it reads its status) asks for another pass: the status ends at the new generation."""
    tenant, mgmt = await with_own_class()

    def observed() -> object:
        return observed_generation(tenant, "mine")

    def applying(name: str, subresource: str) -> bool:
        return any(
            (c.method, c.plural, c.name, c.subresource)
            == ("apply", GATEWAY_CLASSES.plural, name, subresource)
            for c in tenant.calls
        )

    async with running(sync_of(tenant, mgmt).run):
        await until(lambda: observed() == 1, "the tenant's GatewayClass accepted")
        tenant.calls.clear()
        gate = tenant.hold("apply", GATEWAY_CLASSES)
        await tenant.patch(GATEWAY_CLASSES, "mine", {"spec": {"description": "2"}})
        # The resync first applies kubelbd's own class: let it through, hold the next apply.
        await until(lambda: applying(CLASS_NAME, ""), "the resync applying")
        gate.set()
        gate = tenant.hold("apply", GATEWAY_CLASSES)
        await until(lambda: applying("mine", "status"), "generation 2's status being written")
        await tenant.patch(GATEWAY_CLASSES, "mine", {"spec": {"description": "3"}})
        gate.set()
        await until(lambda: observed() == 3, "observed at the generation of the last change")
