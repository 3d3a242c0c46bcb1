"""Adding a source kind is one module and one registration line: shown with a toy kind.

`RouteMaps` turns a RouteMap (a toy kind: a `data` map, as a ConfigMap has) labelled
`example.com/route` into a Route record: a host from its data, a backend Service (so the
tenant side makes it a NodePort twin), and a default port read from another RouteMap it
names (a reference, which the tenant side watches for it). It is registered by listing it
next to the real sources, and nothing of the tenant side changes: records, twins, reverse
indexes, status back. A kind the tenant's API server does not serve (a CRD not installed)
never holds up the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubelbd.hub import Settling, StatusBoard
from kubelbd.objects import INGRESSES, NAMESPACES, NODES, SERVICES, Obj, Resource
from kubelbd.records.names import ROUTE, ROUTES
from kubelbd.records.problems import Problem, Translation
from kubelbd.records.status import SourceStatus
from kubelbd.records.types import Backend, RouteSpec
from kubelbd.sources import SOURCES, twins
from kubelbd.sources.base import References, StatusPatch, TenantView
from kubelbd.tenant.sync import TenantSettings, TenantSync

from .fakekube import Connector, FakeKube, kubeconfig
from .orchestration import RecordingSink, ingress, namespace, node, running, service, until

#: a toy kind of the tenant, with a `data` map as a ConfigMap has
ROUTE_MAPS = Resource("example.com/v1", "routemaps")
GATEWAYS = Resource("gateway.networking.k8s.io/v1", "gateways")  # its CRD is not installed
NS = "tenant-a"


class RouteMaps:
    """The whole of a new kind: what it watches, which are ours, the record, references,
    status. Pure, like every Source."""

    kind = "RouteMap"
    api_version = "example.com/v1"
    resource = ROUTE_MAPS
    depends_on: tuple[Resource, ...] = (GATEWAYS,)  # a kind this tenant does not serve
    referenced: tuple[Resource, ...] = (ROUTE_MAPS,)
    record = ROUTE

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        return "example.com/route" in (obj["metadata"].get("labels") or {})

    def record_name(self, namespace: str, name: str) -> str:
        return f"cm.{namespace}.{name}"

    def references(self, obj: Obj, view: TenantView) -> References:
        ns, data = obj["metadata"]["namespace"], obj.get("data") or {}
        refs = {(ROUTE_MAPS, (ns, data["defaults"]))} if "defaults" in data else set()
        return References(
            backends=frozenset({(ns, data.get("service", ""))}), others=frozenset(refs)
        )

    def translate(self, obj: Obj, view: TenantView) -> Translation[RouteSpec]:
        meta, data = obj["metadata"], obj.get("data") or {}
        ns = meta["namespace"]
        defaults = view.get(ROUTE_MAPS, ns, data.get("defaults", "")) or {}
        port = (defaults.get("data") or {}).get("port", "80")
        backend: Backend = {"service": data["service"], "port": port}
        twin = view.twin(ns, data["service"])
        problems = []
        for p in (twin or {}).get("spec", {}).get("ports", []):
            if str(p["port"]) == port and p.get("nodePort"):
                backend["nodePort"] = p["nodePort"]
        if "nodePort" not in backend:
            problems.append(Problem("BackendPending", f"no nodePort for port {port} yet"))
        spec: RouteSpec = {
            "source": {"kind": "RouteMap", "namespace": ns, "name": meta["name"],
                       "uid": meta["uid"], "creationTimestamp": meta["creationTimestamp"]},
            "rules": [{"host": data["host"], "paths": [
                {"path": "/", "pathType": "Prefix", "backends": [backend]}]}],
        }  # fmt: skip
        if problems:
            spec["problems"] = [p.spec() for p in problems]
        return Translation(spec, problems)

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        return None  # RouteMaps have no status

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        return []

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        return []


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "labels": labels or {}}
    return {"apiVersion": "example.com/v1", "kind": "RouteMap", "metadata": meta, "data": data}


def backend_port(mgmt: FakeKube, name: str) -> Any:
    route = mgmt.stored(ROUTES, name, NS)
    if route is None:
        return None
    return route["spec"]["rules"][0]["paths"][0]["backends"][0]["port"]


def twin_ports(tenant: FakeKube, service: str) -> Iterable[int]:
    twin = tenant.stored(SERVICES, twins.twin_name(service), "default") or {}
    return [p["port"] for p in twin.get("spec", {}).get("ports", [])]


async def test_a_new_kind_needs_nothing_but_its_module_and_its_registration() -> None:
    tenant, mgmt = FakeKube("a"), FakeKube("mgmt")
    tenant.fail("*", GATEWAYS, status=404, times=float("inf"))  # CRD not installed
    await tenant.create(NAMESPACES, namespace("default"))
    await tenant.create(NODES, node("n1", "10.0.0.1"))
    await tenant.create(SERVICES, service("web", port=8080))
    await tenant.create(ROUTE_MAPS, configmap("defaults", port="80"))
    await tenant.create(
        ROUTE_MAPS, configmap("shop", {"example.com/route": ""}, host="shop.example.com",
                              service="web", defaults="defaults")
    )  # fmt: skip
    await tenant.create(SERVICES, service("app"))
    await tenant.create(INGRESSES, ingress("site", "site.example.com", "app"))
    sync = TenantSync(
        "a", kubeconfig(tenant), mgmt, RecordingSink(), StatusBoard(), Settling(),
        TenantSettings(), (*SOURCES, RouteMaps()), Connector(tenant),
    )  # fmt: skip
    async with running(sync.run):
        # The Ingress is served although one kind of the tenant is not served at all.
        await until(lambda: mgmt.stored(ROUTES, "default.site", NS), "the Ingress's record")
        # The new kind: a record, made from the RouteMap and the one it references (port 80,
        # which the Service does not have: a problem, in the record).
        await until(lambda: backend_port(mgmt, "cm.default.shop") == "80", "its record")
        first = mgmt.stored(ROUTES, "cm.default.shop", NS)
        assert first is not None and first["spec"]["problems"][0]["reason"] == "BackendPending"
        assert list(twin_ports(tenant, "web")) == [8080]  # a twin for its backend
        # The referenced RouteMap changes: the route is translated again.
        await tenant.patch(ROUTE_MAPS, "defaults", {"data": {"port": "8080"}}, "default")
        await until(lambda: backend_port(mgmt, "cm.default.shop") == "8080", "translated again")
        route = mgmt.stored(ROUTES, "cm.default.shop", NS)
        assert route is not None and route["spec"]["source"]["kind"] == "RouteMap"
        assert "problems" not in route["spec"]
        # And it goes with its object, like any record.
        await tenant.delete(ROUTE_MAPS, "shop", "default")
        await until(lambda: mgmt.stored(ROUTES, "cm.default.shop", NS) is None, "deleted")


async def test_a_status_write_to_a_referenced_object_translates_nothing_again() -> None:
    """Our own status writes come back as events: a Gateway's at every route attached
    would otherwise have all its routes translated again (500 at 1,000 routes). What uses
    an object looks again when anything but its status changed."""
    tenant, mgmt = FakeKube("a"), FakeKube("mgmt")
    await tenant.create(NAMESPACES, namespace("default"))
    await tenant.create(ROUTE_MAPS, configmap("defaults", port="80"))
    await tenant.create(
        ROUTE_MAPS, configmap("shop", {"example.com/route": ""}, host="shop.example.com",
                              service="web", defaults="defaults")
    )  # fmt: skip
    sync = TenantSync(
        "a", kubeconfig(tenant), mgmt, RecordingSink(), StatusBoard(), Settling(),
        TenantSettings(), (*SOURCES, RouteMaps()), Connector(tenant),
    )  # fmt: skip
    async with running(sync.run):
        await until(lambda: backend_port(mgmt, "cm.default.shop") == "80", "its record")
        defaults = tenant.stored(ROUTE_MAPS, "defaults", "default")
        assert defaults is not None
        handle = sync._on_event(ROUTE_MAPS)  # as the watch calls it, with no await between
        user = ("RouteMap", "default/shop")
        sync._dirty.discard(user)
        handle("MODIFIED", {**defaults, "status": {"seen": True}})  # the same generation
        assert user not in sync._dirty
        changed = {**defaults, "data": {"port": "8080"}}
        changed["metadata"] = {**defaults["metadata"], "generation": 2}
        handle("MODIFIED", changed)
        assert user in sync._dirty
