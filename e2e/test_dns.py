"""DNS against the fleet's BIND 9 (real queries at DNS_SERVER_ADDR): a served host is published
at kubelbd's public address and withdrawn with its Ingress; a second tenant claiming the name
changes nothing; a record added by hand survives and the Route says why it was not published;
a host deleted while kubelbd was down is removed after it starts; the server restarted loses
nothing; with the server down, routing goes on and the Route says the server is unreachable.

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
from kubelbd.objects import INGRESSES, MANAGED_BY, MANAGER, Obj
from kubelbd.records.names import ROUTES

from .support import (
    FleetHandle,
    backend,
    conditions,
    create_namespace,
    delete_namespace,
    deploy_app,
    eventually,
    fleet_env,
    ingress_obj,
    kubelbd_as_component,
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


async def resolve(fleet: FleetHandle, name: str) -> set[str]:
    """The A records the server answers for `name` (empty when it has none)."""
    host, port = server(fleet)
    query = dns.message.make_query(name, dns.rdatatype.A)
    answer = await dns.asyncquery.tcp(query, host, port=port, timeout=2)
    if answer.rcode() != dns.rcode.NOERROR:
        return set()
    return {r.to_text() for rrset in answer.answer for r in rrset}


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
    await eventually(lambda: dns_reason(fleet, "beta", f"{ns}.web", "NotServed"))
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
        return obj

    obj = await eventually(written, what=f"DNSEndpoint {name}")
    assert obj["metadata"]["labels"][MANAGED_BY] == MANAGER
    route = await mgmt.get(ROUTES, record, "tenant-alpha")
    assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [route["metadata"]["uid"]]
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
