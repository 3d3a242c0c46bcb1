"""DNS against the fleet's BIND 9 (real queries at DNS_SERVER_ADDR): a served host is published
at kubelbd's public address and withdrawn with its Ingress; a second tenant claiming the name
changes nothing; a record added by hand survives and the Route says why it was not published;
a host deleted while kubelbd was down is removed after it starts; the server restarted loses
nothing; with the server down, routing goes on and the Route says the server is unreachable.
A LoadBalancer Service's name (its annotation) resolves to its Layer 4 address with the TTL it
asks for, and stays with the tenant that asked first; an automatic name resolves and is in the
Ingress's status; a wildcard host is a wildcard record.

And --dns-provider=dnsendpoint (deploy/dns-endpoints): kubelbd restarted in that mode for one
test writes a DNSEndpoint for a served Ingress host, says DNSPublished once "external-dns"
(the test, writing status.observedGeneration: no external-dns runs in the fleet) observed
it, and deletes it with the Ingress; the fleet's kubelbd is restored afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from kubefleet import lb as fleet_lb
from kubefleet import manifests
from kubefleet.fleet import Fleet
from kubefleet.layout import Layout

from kubelbd.dns.endpoints import DNSENDPOINTS
from kubelbd.dns.records import Create, Endpoint
from kubelbd.dns.rfc2136 import RFC2136, Done
from kubelbd.objects import DEPLOYMENTS, INGRESSES, MANAGED_BY, MANAGER, SERVICES, Obj
from kubelbd.records.names import LOADBALANCERS, ROUTES
from kubelbd.sources.gatewayapi import GATEWAYS, HTTPROUTES

from .support import (
    FleetHandle,
    backend,
    conditions,
    create_namespace,
    delete_namespace,
    deploy_app,
    echo_deployment,
    eventually,
    fleet_env,
    ingress_obj,
    kubelbd_as_component,
    lb_get,
    rule,
    run_fleet,
    start_kubelbd,
    stop_kubelbd,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e


def server(fleet: FleetHandle) -> tuple[str, int]:
    host, _, port = fleet_env(fleet.layout)["DNS_SERVER_ADDR"].rpartition(":")
    return host, int(port)


async def answer(fleet: FleetHandle, name: str) -> dns.message.Message:
    host, port = server(fleet)
    query = dns.message.make_query(name, dns.rdatatype.A)
    return await dns.asyncquery.tcp(query, host, port=port, timeout=2)


async def resolve(fleet: FleetHandle, name: str) -> set[str]:
    """The A records the server answers for `name` (empty when it has none)."""
    got = await answer(fleet, name)
    if got.rcode() != dns.rcode.NOERROR:
        return set()
    return {r.to_text() for rrset in got.answer for r in rrset}


async def resolves_to(fleet: FleetHandle, name: str, want: set[str]) -> bool:
    got = await resolve(fleet, name)
    assert got == want, f"{name}: {got}, not {want}"
    return True


def by_hand(fleet: FleetHandle, owner: str) -> RFC2136:
    env = fleet_env(fleet.layout)
    return RFC2136(
        env["DNS_SERVER_ADDR"], env["DNS_ZONE"], env["DNS_TSIG_NAME"], env["DNS_TSIG_SECRET"],
        env["DNS_TSIG_ALGORITHM"], owner, 5,
    )  # fmt: skip


async def dns_condition(fleet: FleetHandle, tenant: str, route: str) -> Obj:
    obj = await fleet.kube["mgmt"].get(ROUTES, route, f"tenant-{tenant}")
    return conditions(obj).get("DNSPublished", {})


async def dns_reason(fleet: FleetHandle, tenant: str, route: str, want: str) -> bool:
    cond = await dns_condition(fleet, tenant, route)
    assert cond.get("reason") == want, cond
    return True


@pytest.fixture
async def app(fleet: FleetHandle) -> AsyncIterator[str]:
    """A namespace with an app, in every tenant."""
    ns = unique("dns")
    for t in fleet.tenants:
        await create_namespace(fleet.kube[t], ns)
        await deploy_app(fleet.kube[t], ns, "app")
    yield ns
    for t in fleet.tenants:
        await delete_namespace(fleet.kube[t], ns)


async def ingress(fleet: FleetHandle, tenant: str, ns: str, name: str, host: str) -> None:
    obj = ingress_obj(name, [rule(host, ("/", "Prefix", backend("app")))])
    await fleet.kube[tenant].create(INGRESSES, obj, ns)


async def test_a_served_host_is_published_and_withdrawn(fleet: FleetHandle, app: str) -> None:
    ns = app
    host = f"{ns}-web.example.test"
    await ingress(fleet, "alpha", ns, "web", host)
    await until_served(fleet.layout, host)
    await eventually(lambda: resolves_to(fleet, host, {"127.0.0.1"}), what=f"{host} in DNS")
    await eventually(lambda: dns_reason(fleet, "alpha", f"{ns}.web", "Published"))
    # A second tenant claiming the name changes nothing (the claim alpha made first wins).
    await ingress(fleet, "beta", ns, "web", host)
    await eventually(lambda: dns_reason(fleet, "beta", f"{ns}.web", "NameHeldByOtherTenant"))
    assert await resolve(fleet, host) == {"127.0.0.1"}
    await fleet.kube["alpha"].delete(INGRESSES, "web", ns)
    # beta's claim now wins: the name stays, as beta's.
    await eventually(lambda: dns_reason(fleet, "beta", f"{ns}.web", "Published"))
    await fleet.kube["beta"].delete(INGRESSES, "web", ns)
    await eventually(lambda: resolves_to(fleet, host, set()), what=f"{host} withdrawn")


async def test_a_record_added_by_hand_is_left_alone(fleet: FleetHandle, app: str) -> None:
    ns = app
    host = f"{ns}-hand.example.test"
    made = await by_hand(fleet, "an-operator").apply(
        Create(Endpoint(host, "A", ("192.0.2.7",), 5, "manual/default/x"))
    )
    assert isinstance(made, Done)
    await ingress(fleet, "alpha", ns, "hand", host)
    await until_served(fleet.layout, host)  # routing is not held up by DNS
    await eventually(lambda: dns_reason(fleet, "alpha", f"{ns}.hand", "NameTaken"))
    assert await resolve(fleet, host) == {"192.0.2.7"}


async def test_a_host_deleted_while_kubelbd_was_down_is_removed(
    fleet: FleetHandle, app: str
) -> None:
    ns = app
    host = f"{ns}-gone.example.test"
    await ingress(fleet, "alpha", ns, "gone", host)
    await eventually(lambda: resolves_to(fleet, host, {"127.0.0.1"}), what=f"{host} in DNS")
    await stop_kubelbd()
    try:
        await fleet.kube["alpha"].delete(INGRESSES, "gone", ns)
    finally:
        await start_kubelbd()
    await eventually(lambda: resolves_to(fleet, host, set()), 60, what=f"{host} withdrawn")


async def test_the_server_down_holds_up_no_route_and_nothing_is_lost(
    fleet: FleetHandle, app: str
) -> None:
    ns = app
    kept = f"{ns}-kept.example.test"
    await ingress(fleet, "alpha", ns, "kept", kept)
    await eventually(lambda: resolves_to(fleet, kept, {"127.0.0.1"}), what=f"{kept} in DNS")
    await run_fleet("stop", "dns")
    late = f"{ns}-late.example.test"
    try:
        await ingress(fleet, "alpha", ns, "late", late)
        await until_served(fleet.layout, late)  # served at once, DNS or not
        await eventually(lambda: dns_reason(fleet, "alpha", f"{ns}.late", "ServerUnreachable"))
    finally:
        await run_fleet("start", "dns")
    # Restarted, the server lost nothing (its journal), and the late name comes on a retry.
    assert await resolve(fleet, kept) == {"127.0.0.1"}
    await eventually(lambda: resolves_to(fleet, late, {"127.0.0.1"}), 60, what=f"{late} in DNS")
    await eventually(lambda: dns_reason(fleet, "alpha", f"{ns}.late", "Published"))


def named_service(name: str, annotations: dict[str, str]) -> Obj:
    """A LoadBalancer Service in front of an echo Deployment of the same name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "type": "LoadBalancer", "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }  # fmt: skip


async def service_ingress(fleet: FleetHandle, tenant: str, ns: str, name: str) -> list[Obj]:
    svc = await fleet.kube[tenant].get(SERVICES, name, ns)
    return list(((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [])


async def lb_reason(fleet: FleetHandle, tenant: str, record: str, want: str) -> bool:
    obj = await fleet.kube["mgmt"].get(LOADBALANCERS, record, f"tenant-{tenant}")
    cond = conditions(obj).get("DNSPublished", {})
    assert cond.get("reason") == want, cond
    return True


async def test_a_load_balancers_name_resolves_to_its_address_and_is_in_its_status(
    fleet: FleetHandle, app: str
) -> None:
    """kubelb.io/hostname on a Service: published at the Layer 4 address with the TTL of
    external-dns's ttl annotation, and written next to the address in the Service's status;
    another tenant's Service asking for the name gets it only after the first is gone."""
    ns = app
    name = f"{ns}-db.example.test"
    ask = {"kubelb.io/hostname": name, "external-dns.alpha.kubernetes.io/ttl": "7"}
    for t in ("alpha", "beta"):
        await fleet.kube[t].create(DEPLOYMENTS, echo_deployment("db", 1), ns)
    await fleet.kube["alpha"].create(SERVICES, named_service("db", ask), ns)

    async def alpha_address() -> str:
        ingress = await service_ingress(fleet, "alpha", ns, "db")
        assert ingress and ingress[0].get("hostname") == name, ingress
        return str(ingress[0]["ip"])

    address = await eventually(alpha_address, 60, what="the name in the Service's status")
    got = await answer(fleet, name)
    assert [(r.ttl, {x.to_text() for x in r}) for r in got.answer] == [(7, {address})]
    await eventually(lambda: lb_reason(fleet, "alpha", f"{ns}.db", "Published"))
    # beta asks for the same name later: it is alpha's, and beta's record says so.
    await fleet.kube["beta"].create(SERVICES, named_service("db", ask), ns)
    await eventually(lambda: lb_reason(fleet, "beta", f"{ns}.db", "NameHeldByOtherTenant"))
    beta_status = await service_ingress(fleet, "beta", ns, "db")
    assert beta_status and "hostname" not in beta_status[0], beta_status
    assert await resolve(fleet, name) == {address}
    await fleet.kube["alpha"].delete(SERVICES, "db", ns)

    async def beta_has_it() -> bool:
        ingress = await service_ingress(fleet, "beta", ns, "db")
        assert ingress and ingress[0].get("hostname") == name, ingress
        return await resolves_to(fleet, name, {ingress[0]["ip"]})

    await eventually(beta_has_it, 60, what="the name passed to beta's Service")


async def test_an_automatic_name_is_published_served_and_in_the_ingress_status(
    fleet: FleetHandle, app: str
) -> None:
    ns = app
    obj = ingress_obj("shop", [rule(None, ("/", "Prefix", backend("app")))])
    obj["metadata"]["annotations"] = {"kubelb.io/hostname": "auto"}
    await fleet.kube["alpha"].create(INGRESSES, obj, ns)
    name = f"shop-{ns}.alpha.{fleet_env(fleet.layout)['DNS_BASE_DOMAIN']}"
    await until_served(fleet.layout, name)
    await eventually(lambda: resolves_to(fleet, name, {"127.0.0.1"}), what=f"{name} in DNS")

    async def in_status() -> bool:
        got = await fleet.kube["alpha"].get(INGRESSES, "shop", ns)
        ingress = ((got.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        assert ingress == [{"ip": "127.0.0.1", "hostname": name}], ingress
        return True

    await eventually(in_status, what="the automatic name in the Ingress's status")
    # Not a catch-all: another host gets nothing from this Ingress.
    status, _ = await lb_get(fleet.layout, f"other-{ns}.alpha.example.test", "/")
    assert status == 404


async def test_a_wildcard_host_is_a_wildcard_record(fleet: FleetHandle, app: str) -> None:
    ns = app
    await ingress(fleet, "alpha", ns, "any", f"*.{ns}-w.example.test")
    await until_served(fleet.layout, f"x.{ns}-w.example.test")
    for name in (f"x.{ns}-w.example.test", f"y.{ns}-w.example.test"):
        await eventually(lambda n=name: resolves_to(fleet, n, {"127.0.0.1"}), what=name)  # type: ignore[misc]


# ---- --dns-provider=dnsendpoint ------------------------------------------------------------------


@pytest.fixture
def dnsendpoint_mode(fleet_layout: Layout) -> Iterator[subprocess.Popen[bytes]]:
    """The fleet's kubelbd restarted as deploy/dns-endpoints deploys it: its RBAC,
    --dns-provider=dnsendpoint, and none of the fleet's BIND flags (kubelbd refuses them in
    this mode). external-dns's CRD comes with `hack/fleet up`; installed again here
    (idempotent) for a fleet brought up before it did."""
    fleet_lb.install_dnsendpoint_crd(Fleet(fleet_layout))

    def argv(fleet_argv: list[str]) -> list[str]:
        return [*manifests.without_rfc2136(fleet_argv), "--dns-provider=dnsendpoint"]

    with kubelbd_as_component(
        fleet_layout, manifests.DNS_ENDPOINTS, argv, "kubelbd-dnsendpoint-mode.log"
    ) as proc:
        yield proc


async def test_dnsendpoint_mode_writes_and_deletes_a_dnsendpoint_per_served_host(
    fleet: FleetHandle, app: str, dnsendpoint_mode: subprocess.Popen[bytes]
) -> None:
    ns = app
    mgmt = fleet.kube["mgmt"]
    host = f"{ns}-ep.example.test"
    record = f"{ns}.ep"
    name = f"route.{record}"
    await ingress(fleet, "alpha", ns, "ep", host)
    await until_served(fleet.layout, host)

    async def written() -> Obj:
        obj = await mgmt.get(DNSENDPOINTS, name, "tenant-alpha")
        assert obj["spec"]["endpoints"] == [
            {"dnsName": host, "recordType": "A", "targets": ["127.0.0.1"], "recordTTL": 5}
        ], obj["spec"]
        # A route is served before its record is written: the owner comes with the uid.
        route = await mgmt.get(ROUTES, record, "tenant-alpha")
        owners = obj["metadata"].get("ownerReferences") or []
        assert [o["uid"] for o in owners] == [route["metadata"]["uid"]], owners
        return obj

    obj = await eventually(written, what=f"DNSEndpoint {name} owned by its Route")
    assert obj["metadata"]["labels"][MANAGED_BY] == MANAGER
    await eventually(lambda: dns_reason(fleet, "alpha", record, "WaitingForExternalDNS"))
    # What external-dns's crd source does once it read the object.
    await mgmt.patch(
        DNSENDPOINTS, name, {"status": {"observedGeneration": obj["metadata"]["generation"]}},
        "tenant-alpha", subresource="status",
    )  # fmt: skip
    await eventually(lambda: dns_reason(fleet, "alpha", record, "ObservedByExternalDNS"))
    # Nothing goes to the fleet's BIND in this mode.
    assert await resolve(fleet, host) == set()
    await fleet.kube["alpha"].delete(INGRESSES, "ep", ns)

    async def gone() -> bool:
        assert await mgmt.get_or_none(DNSENDPOINTS, name, "tenant-alpha") is None
        return True

    await eventually(gone, what=f"DNSEndpoint {name} deleted with the Ingress")
    assert dnsendpoint_mode.poll() is None, "kubelbd in DNSEndpoint mode exited"


async def test_an_httproutes_name_resolves_to_its_gateway_and_meets_ingress_hosts(
    fleet: FleetHandle, app: str
) -> None:
    """Gateway API: an HTTPRoute's hostname resolves to its Gateway's own address; the same
    name on an Ingress of another tenant, claimed later, is not published for that one."""
    ns = app
    host = f"{ns}-gw.example.test"
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": "kubelb",
                 "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    }  # fmt: skip
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host],
                 "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]},
    }  # fmt: skip
    kube = fleet.kube["alpha"]
    await kube.create(GATEWAYS, gateway, ns)
    await kube.create(HTTPROUTES, route, ns)

    async def address() -> str:
        gw = await kube.get(GATEWAYS, "gw", ns)
        addresses = (gw.get("status") or {}).get("addresses")
        assert addresses, gw.get("status")
        return str(addresses[0]["value"])

    at = await eventually(address, 60, what="the Gateway's address")
    await eventually(lambda: resolves_to(fleet, host, {at}), 60, what=f"{host} in DNS")
    record = f"{ns}.web.httproute"
    await eventually(lambda: dns_reason(fleet, "alpha", record, "Published"))
    await ingress(fleet, "beta", ns, "web", host)
    await eventually(lambda: dns_reason(fleet, "beta", f"{ns}.web", "NameHeldByOtherTenant"))
    assert await resolve(fleet, host) == {at}
    await kube.delete(HTTPROUTES, "web", ns)
    # The HTTPRoute gone, the Ingress's older-now claim wins: the name moves to the front.
    await eventually(lambda: resolves_to(fleet, host, {"127.0.0.1"}), 60, what="the name moved")
