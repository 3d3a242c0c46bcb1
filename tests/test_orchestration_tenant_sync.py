"""kubelbd.tenant.sync.TenantSync over two FakeKubes, one the tenant cluster, one the
management cluster: twins, records, the Tenant record, status back into the tenant, and an
object the tenant API server refuses being retried alone.

TenantSync connects to its tenant through its `connect` argument; the tests give it a
Connector, which hands out clients of the fake tenant cluster."""

from __future__ import annotations

import base64
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from kubelbd.hub import Settling, StatusBoard
from kubelbd.objects import (
    ENDPOINT_SLICES,
    EVENTS,
    INGRESS_CLASSES,
    INGRESSES,
    NAMESPACES,
    NODES,
    SECRETS,
    SERVICES,
)
from kubelbd.records.names import (
    LOADBALANCER,
    LOADBALANCERS,
    ROUTE,
    ROUTES,
    TENANT_LABEL,
    TENANTS,
    TLS_LABEL,
)
from kubelbd.records.objects import record_object
from kubelbd.records.status import Event, SourceStatus
from kubelbd.sources import twins
from kubelbd.tenant import copies
from kubelbd.tenant import records as records_module
from kubelbd.tenant.records import TenantRecords
from kubelbd.tenant.sync import TenantSettings, TenantSync

from .fakekube import Connector, FakeKube, kubeconfig
from .orchestration import (
    RecordingSink,
    condition,
    condition_of,
    ingress,
    namespace,
    node,
    running,
    service,
    status_of,
    until,
)

NS = "tenant-a"


class Fleet:
    """Tenant "a" and the management cluster, and a TenantSync between them."""

    def __init__(self) -> None:
        self.tenant = FakeKube("a")
        self.mgmt = FakeKube("mgmt")
        self.sink = RecordingSink()
        self.board = StatusBoard()
        self.settling = Settling()
        self.connector = Connector(self.tenant)
        config = kubeconfig(self.tenant)
        self.sync = TenantSync(
            "a", config, self.mgmt, self.sink, self.board, self.settling, TenantSettings(),
            connect=self.connector,
        )  # fmt: skip

    async def nodes(self) -> None:
        await self.tenant.create(NAMESPACES, namespace("default"))
        await self.tenant.create(NODES, node("n1", "10.0.0.1"))
        await self.tenant.create(NODES, node("n2", "10.0.0.2"))
        await self.tenant.create(NODES, node("n3", "10.0.0.3", ready=False))

    def health(self, type_: str, field: str = "status") -> Any:
        """A field of a condition of the Tenant record."""
        return condition_of(self.mgmt, TENANTS, "a", NS, type_, field)

    def addresses(self) -> Any:
        return (self.mgmt.stored(TENANTS, "a", NS) or {}).get("status", {}).get("nodeAddresses")

    def claimed(self) -> list[str]:
        status = (self.mgmt.stored(TENANTS, "a", NS) or {}).get("status", {})
        return [c["address"] for c in status.get("nodeAddressClaims", [])]

    def ingress_status(self, name: str) -> Any:
        return status_of(self.tenant, INGRESSES, name, "default")

    def route(self, name: str) -> Any:
        return self.mgmt.stored(ROUTES, f"default.{name}", NS)

    def twin(self, service: str) -> Any:
        return self.tenant.stored(SERVICES, twins.twin_name(service), "default")

    def synced(self, message: str) -> bool:
        """The last reconcile pass ended (twins collected too) with `message`."""
        return self.sync.health.synced == (True, "Synced", message)


@pytest.fixture
async def fleet() -> Fleet:
    f = Fleet()
    await f.nodes()
    return f


def backend_of(route: Any) -> Any:
    return route["spec"]["rules"][0]["paths"][0]["backends"][0]


async def test_an_ingress_of_ours_gets_a_twin_a_route_record_and_the_nodes(fleet: Fleet) -> None:
    web = await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("shop"), "the Route record")
        route, twin = fleet.route("shop"), fleet.twin("web")
        assert twin is not None
        assert twin["spec"]["type"] == "NodePort"
        assert twin["spec"]["selector"] == {"app": "web"}
        assert twin["metadata"]["ownerReferences"][0]["uid"] == web["metadata"]["uid"]
        assert backend_of(route) == {
            "service": "web",
            "port": "80",
            "nodePort": twin["spec"]["ports"][0]["nodePort"],
        }
        assert route["metadata"]["labels"][TENANT_LABEL] == "a"
        assert route["spec"]["source"]["name"] == "shop"
        # Handed to the data plane before it was written, then as written.
        steps = fleet.sink.of("a/default.shop")
        assert [s[0] for s in steps] == ["provisional", "written"]
        assert steps[0][3] == steps[1][3] == route["spec"]
        written = [c for c in fleet.mgmt.changes(ROUTES) if c.type != "DELETED"]
        assert len(written) == 1  # written once

        # The Tenant record: the Ready nodes' addresses, and healthy.
        assert fleet.addresses() == ["10.0.0.1", "10.0.0.2"]
        assert ("written", "Tenant", "a/a") in [s[:3] for s in fleet.sink.seen]
        await until(lambda: fleet.health("Synced") == "True", "Synced")
        assert fleet.health("Connected") == "True"
        # Its IngressClass is in the tenant.
        assert fleet.tenant.stored(INGRESS_CLASSES, "kubelb") is not None
        # A node that becomes Ready joins.
        ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        await fleet.tenant.patch(NODES, "n3", ready, subresource="status")
        await until(lambda: fleet.addresses() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "n3")
    # Stopped: its tenant client is closed.
    [client] = fleet.connector.clients
    assert client.closed


async def test_records_go_with_their_ingress_and_a_twin_with_its_last_user(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    await fleet.tenant.create(INGRESSES, ingress("shop2", "shop2.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("shop") and fleet.route("shop2"), "both records")
        await until(lambda: fleet.synced("2 routes in sync"), "a pass with both")
        port = backend_of(fleet.route("shop"))["nodePort"]
        assert backend_of(fleet.route("shop2"))["nodePort"] == port  # one twin for both

        await fleet.tenant.delete(INGRESSES, "shop", "default")
        await until(lambda: fleet.synced("1 routes in sync"), "a pass without shop")
        assert fleet.route("shop") is None
        assert ("deleted", "Route", "a/default.shop", None) in fleet.sink.seen
        assert fleet.twin("web") is not None  # shop2 still uses it

        await fleet.tenant.delete(INGRESSES, "shop2", "default")
        await until(lambda: fleet.twin("web") is None, "the twin deleted")
        assert fleet.route("shop2") is None
        assert fleet.tenant.stored(SERVICES, "web", "default") is not None


async def test_a_twin_envoy_still_sends_to_goes_only_once_it_no_longer_does(
    fleet: Fleet,
) -> None:
    """Make before break: the Ingress switched away from `web` (its route may be held until
    the new backend answers, and the cluster lingers for requests under way), so `web`'s
    twin stays while the data plane says Envoy dials it, and goes when it stops."""
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(SERVICES, service("next"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.twin("web") is not None, "web's twin")
        fleet.sink.dialled.set({"a": {("default", "web")}})
        await fleet.tenant.replace(INGRESSES, ingress("shop", "shop.example.com", "next"))
        await until(lambda: fleet.twin("next") is not None, "next's twin")
        await until(lambda: fleet.synced("1 routes in sync"), "a pass after the switch")
        assert fleet.twin("web") is not None  # Envoy still sends to it
        fleet.sink.dialled.set({"a": {("default", "next")}})
        await until(lambda: fleet.twin("web") is None, "web's twin deleted")


async def test_an_ingress_of_another_class_is_ignored(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("other"))
    await fleet.tenant.create(INGRESSES, ingress("theirs", "x.example.com", "other", "nginx"))
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.synced("1 routes in sync"), "a pass")
        await until(lambda: fleet.route("shop"), "its record (written after the pass)")
        assert fleet.route("theirs") is None
        assert fleet.twin("other") is None
        assert [s for s in fleet.sink.seen if "theirs" in s[2]] == []
        # Switching it to our class makes it ours.
        await fleet.tenant.patch(
            INGRESSES, "theirs", {"spec": {"ingressClassName": "kubelb"}}, "default"
        )
        await until(lambda: fleet.route("theirs"), "its record")
        assert fleet.twin("other") is not None


async def test_a_load_balancer_service_becomes_a_load_balancer_record(fleet: Fleet) -> None:
    lb = await fleet.tenant.create(SERVICES, service("db", "LoadBalancer", port=5432))
    await fleet.tenant.create(SERVICES, service("plain"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.mgmt.stored(LOADBALANCERS, "default.db", NS), "the record")
        await until(lambda: fleet.synced("0 routes in sync"), "a pass")
        record = fleet.mgmt.stored(LOADBALANCERS, "default.db", NS)
        assert record is not None
        node_port = lb["spec"]["ports"][0]["nodePort"]
        port = {"port": 5432, "protocol": "TCP", "nodePort": node_port, "name": "http"}
        assert record["spec"]["ports"] == [port]
        assert record["spec"]["source"]["uid"] == lb["metadata"]["uid"]
        assert ("written", "LoadBalancer", "a/default.db") in [s[:3] for s in fleet.sink.seen]
        assert fleet.mgmt.stored(LOADBALANCERS, "default.plain", NS) is None
        assert fleet.twin("db") is None and fleet.twin("plain") is None

        await fleet.tenant.delete(SERVICES, "db", "default")
        await until(lambda: fleet.mgmt.stored(LOADBALANCERS, "default.db", NS) is None, "gone")
        assert ("deleted", "LoadBalancer", "a/default.db", None) in fleet.sink.seen


async def test_an_object_the_tenant_refuses_is_retried_alone(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(SERVICES, service("api", "NodePort"))
    await fleet.tenant.create(SERVICES, service("late", "NodePort"))
    fleet.tenant.fail("apply", SERVICES, name=twins.twin_name("web"), status=500, times=3)
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    await fleet.tenant.create(INGRESSES, ingress("api", "api.example.com", "api"))

    def attempts() -> list[float]:
        return [c.at for c in fleet.tenant.calls if c.method == "apply" and c.name == "kubelb-web"]

    async with running(fleet.sync.run):
        await until(lambda: fleet.route("api"), "the other Ingress served")
        # A change while shop waits for its retry is served at once, not behind it.
        await fleet.tenant.create(INGRESSES, ingress("late", "late.example.com", "late"))
        await until(lambda: fleet.route("late"), "a later Ingress served")
        assert fleet.route("shop") is None and fleet.twin("web") is None
        await until(lambda: fleet.route("shop"), "the refused one, retried")
        assert (
            backend_of(fleet.route("shop"))["nodePort"]
            == (fleet.twin("web")["spec"]["ports"][0]["nodePort"])
        )
        # Retried after a growing backoff of its own (a full resync may try it once more).
        gaps = [b - a for a, b in zip(attempts(), attempts()[1:], strict=False)]
        assert len(gaps) == 3 and gaps[-1] >= 0.2 and gaps[-1] > gaps[-2] >= 0.0
        # The failure was reported on the Tenant record, then cleared.
        await until(lambda: fleet.synced("3 routes in sync"), "in sync")
        statuses = [c.obj for c in fleet.mgmt.changes(TENANTS) if "status" in c.obj]
        synced = [condition(o, "Synced") for o in statuses]
        assert any(
            s.get("reason") == "ObjectErrors" and "kubelb-web" in s["message"] for s in synced
        )
        await until(lambda: fleet.health("Synced") == "True", "Synced again")


async def test_a_refused_twin_does_not_leave_its_chosen_port_served(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    fleet.tenant.fail("apply", SERVICES, name=twins.twin_name("web"), status=500, times=2)
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))

    def refused() -> int:
        return len([c for c in fleet.tenant.calls if c.name == "kubelb-web"])

    async with running(fleet.sync.run):
        failing = (False, "ObjectErrors")
        await until(lambda: refused() == 2 and fleet.sync.health.synced[:2] == failing, "refused")
        assert fleet.twin("web") is None
        *_, last = fleet.sink.of("a/default.shop")
        backend = last[3]["rules"][0]["paths"][0]["backends"][0]
        # What the data plane serves meanwhile: the backend pending (503), not a port that
        # no Service of the tenant holds (or, later, an unrelated one is given).
        assert "nodePort" not in backend and "problem" in backend


async def test_the_status_the_data_plane_wants_is_written_into_the_tenant(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    shop = await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("shop"), "the Route record")
        warning = Event("Warning", "BackendPending", "not yet")
        address = (("ip", "203.0.113.10"),)
        uid = shop["metadata"]["uid"]
        fleet.board.want(
            "a", SourceStatus("Ingress", "default", "shop", uid, address, (warning,), 1)
        )
        await until(lambda: fleet.ingress_status("shop"), "the Ingress status")
        stored = fleet.tenant.stored(INGRESSES, "shop", "default")
        assert stored is not None
        assert stored["status"] == {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
        assert stored["metadata"]["generation"] == 1  # a status write is not a change

        async def events() -> list[Any]:
            items, _ = await fleet.tenant.list(
                EVENTS, "default", fieldSelector="involvedObject.name=shop"
            )
            return items

        await until(events, "an Event on the Ingress")
        [event] = await events()
        assert (event["reason"], event["type"], event["message"]) == (
            "BackendPending",
            "Warning",
            "not yet",
        )
        # Deleted and created again: a status still wanted for the old one is not the new one's.
        await fleet.tenant.delete(INGRESSES, "shop", "default")
        again = await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
        other = await fleet.tenant.create(INGRESSES, ingress("other", "o.example.com", "web"))
        await until(lambda: fleet.route("other"), "the caches have the new objects")
        assert fleet.sync.caches.get(INGRESSES, "default", "shop") == again
        elsewhere = (("ip", "198.51.100.1"),)
        fleet.board.want("a", SourceStatus("Ingress", "default", "shop", uid, elsewhere))
        other_uid = other["metadata"]["uid"]
        fleet.board.want("a", SourceStatus("Ingress", "default", "other", other_uid, elsewhere))
        await until(lambda: fleet.ingress_status("other"), "the status of the other Ingress")
        stored = fleet.tenant.stored(INGRESSES, "shop", "default")
        assert stored is not None and "status" not in stored
        # What Events were emitted is kept only for a status that has some.
        assert fleet.sync.statuses._emitted == {}


def tls_secret(name: str, crt: str) -> Any:
    data = {"tls.crt": base64.b64encode(crt.encode()).decode(), "tls.key": "a2V5"}
    meta = {"name": name, "namespace": "default"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta,
        "data": data,
    }


async def test_the_tls_secrets_of_ours_are_copied_and_follow(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copies, "COPY_GRACE", 0.3)
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(SECRETS, tls_secret("shop-cert", "one"))
    await fleet.tenant.create(SECRETS, tls_secret("unused-cert", "x"))
    tls = [{"hosts": ["shop.example.com"], "secretName": "shop-cert"}]
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web", tls=tls))

    def copied(name: str) -> Any:
        return fleet.mgmt.stored(SECRETS, f"default.{name}", NS)

    async with running(fleet.sync.run):
        await until(lambda: copied("shop-cert"), "the copy")
        copy = copied("shop-cert")
        assert copy["type"] == "kubernetes.io/tls"
        assert copy["metadata"]["labels"][TLS_LABEL] == "true"
        assert copy["data"]["tls.crt"] == tls_secret("shop-cert", "one")["data"]["tls.crt"]
        await until(lambda: fleet.synced("1 routes in sync"), "a pass")
        assert copied("unused-cert") is None
        await until(lambda: fleet.route("shop"), "its record (written after the pass)")
        assert fleet.route("shop")["spec"]["tls"][0]["secretName"] == "shop-cert"

        renewed = tls_secret("shop-cert", "two")
        await fleet.tenant.patch(SECRETS, "shop-cert", {"data": renewed["data"]}, "default")
        await until(lambda: (copied("shop-cert") or {}).get("data") == renewed["data"], "renewed")

        # Nothing names it: it goes after its grace, the tenant woken for it (no other change
        # comes to run a pass).
        await fleet.tenant.delete(INGRESSES, "shop", "default")
        await until(lambda: copied("shop-cert") is None, "the copy removed")


async def test_an_unreachable_tenant_is_reported_on_its_tenant_record() -> None:
    f = Fleet()
    await f.nodes()
    f.settling.expect("a")
    f.settling.known()
    f.tenant.fail("list", NODES, status=0)
    async with running(f.sync.run):
        await until(lambda: f.health("Connected", "reason") == "Unreachable", "Unreachable")
        assert f.settling.settled  # the data plane need not wait for it
        await until(lambda: f.health("Connected") == "True", "Connected")
        tenant = f.mgmt.stored(TENANTS, "a", NS)
        assert tenant is not None and tenant["status"]["lastError"] != ""


async def events_for(kube: FakeKube, name: str, ns: str = "default") -> list[tuple[str, str]]:
    items, _ = await kube.list(EVENTS, ns, fieldSelector=f"involvedObject.name={name}")
    return [(e["reason"], e["message"]) for e in items]


async def test_the_operators_policy_limits_hosts_and_a_change_applies_at_once(
    fleet: Fleet,
) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    await fleet.tenant.create(INGRESSES, ingress("bank", "bank.example.com", "web"))
    fleet.sync.set_record({"spec": {"allowedDomains": ["shop.example.com"]}})
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("shop") and fleet.route("bank"), "both records")
        bank = fleet.route("bank")["spec"]
        assert bank["rules"] == []
        assert bank["problems"][0]["reason"] == "HostNotAllowed"
        # The claim: when kubelbd saw it, to the microsecond, not the tenant's timestamps.
        claims = fleet.route("shop")["spec"]["claims"]
        assert list(claims) == ["shop.example.com"] and claims["shop.example.com"].endswith("Z")
        fleet.sync.set_record({"spec": {"allowedDomains": ["**.example.com"]}})
        await until(lambda: fleet.route("bank")["spec"]["rules"] != [], "bank allowed now")
        # The condition names the record's generation in force: an operator (or a test)
        # knows when objects written from then on are judged by the new policy.
        wide = {"allowedDomains": ["**.example.com"]}
        fleet.sync.set_record({"metadata": {"generation": 3}, "spec": wide})
        await until(lambda: fleet.health("PolicyAccepted", "observedGeneration") == 3, "gen 3")
        # A change undone before kubelbd saw it: the same policy, a newer generation.
        fleet.sync.set_record({"metadata": {"generation": 5}, "spec": wide})
        await until(lambda: fleet.health("PolicyAccepted", "observedGeneration") == 5, "gen 5")
        # A policy that does not parse: the defaults, and the Tenant record says why.
        fleet.sync.set_record({"metadata": {"generation": 6}, "spec": {"nodeCIDRs": ["x"]}})
        await until(lambda: fleet.health("PolicyAccepted") == "False", "PolicyAccepted=False")
        assert fleet.health("PolicyAccepted", "reason") == "InvalidPolicy"
        assert fleet.health("PolicyAccepted", "observedGeneration") == 6


async def test_a_claim_keeps_its_time_across_rewrites(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("shop"), "the record")
        first = fleet.route("shop")["spec"]["claims"]["shop.example.com"]
        rules = (fleet.tenant.stored(INGRESSES, "shop", "default") or {})["spec"]["rules"]
        extra = {**rules[0], "host": "more.example.com"}
        # Backdated by the tenant: changes nothing about who saw what first.
        meta = {"creationTimestamp": "2000-01-01T00:00:00Z"}
        await fleet.tenant.patch(
            INGRESSES, "shop", {"metadata": meta, "spec": {"rules": [*rules, extra]}}, "default"
        )
        await until(lambda: "more.example.com" in fleet.route("shop")["spec"]["claims"], "more")
        claims = fleet.route("shop")["spec"]["claims"]
        assert claims["shop.example.com"] == first
        assert claims["more.example.com"] >= first


async def test_a_limit_keeps_the_oldest_and_tells_the_rest(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    for i in range(3):
        obj = ingress(f"i{i}", f"i{i}.example.com", "web")
        obj["metadata"]["creationTimestamp"] = f"2026-01-0{i + 1}T00:00:00Z"
        await fleet.tenant.create(INGRESSES, obj)
    fleet.sync.set_record({"spec": {"limits": {"routes": 2}}})
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("i0") and fleet.route("i1"), "the two oldest")
        await until(lambda: fleet.synced("2 routes in sync"), "a pass")
        assert fleet.route("i2") is None
        await until(lambda: events_for(fleet.tenant, "i2"), "an Event on i2")
        [(reason, message)] = await events_for(fleet.tenant, "i2")
        assert reason == "LimitExceeded" and "2 Routes" in message
        # Room again: the waiting one is admitted.
        await fleet.tenant.delete(INGRESSES, "i0", "default")
        await until(lambda: fleet.route("i2") is not None, "i2 admitted")
        await until(lambda: fleet.route("i0") is None, "i0 gone")


async def test_refused_node_addresses_are_never_used_and_are_reported(fleet: Fleet) -> None:
    await fleet.tenant.create(NODES, node("good", "10.0.0.9"))
    await fleet.tenant.create(NODES, node("admin", "127.0.0.1"))
    await fleet.tenant.create(NODES, node("name", "node.example.com"))
    async with running(fleet.sync.run):
        good = ["10.0.0.1", "10.0.0.2", "10.0.0.9"]
        await until(lambda: fleet.addresses() == good, "only the good addresses")
        await until(lambda: fleet.health("NodesAccepted") == "False", "NodesAccepted=False")
        message = fleet.health("NodesAccepted", "message")
        assert "node admin: 127.0.0.1 is a loopback address" in message
        assert "node name: 'node.example.com' is not an IP address" in message
        await until(lambda: events_for(fleet.tenant, "admin"), "an Event on the Node")
        assert (await events_for(fleet.tenant, "admin"))[0][0] == "AddressRefused"
        stored = fleet.mgmt.stored(TENANTS, "a", NS) or {}
        # Claimed: every allowed address, the NotReady n3's too (a reboot keeps its claim).
        claimed = [c["address"] for c in stored["status"]["nodeAddressClaims"]]
        assert claimed == sorted([*good, "10.0.0.3"])


async def test_a_claim_not_written_yet_keeps_its_time_on_every_try() -> None:
    """A record whose write is retried must not look newer on every try: between tenants,
    the claim kubelbd saw first wins, and re-stamping made ownership flip with each retry."""
    records = TenantRecords("a", FakeKube("mgmt"), RecordingSink())
    raw: Any = {"source": {"kind": "Ingress", "namespace": "d", "name": "n", "uid": "u",
                           "creationTimestamp": ""},
                "rules": [{"host": "x.example.com", "paths": []}]}  # fmt: skip
    first = records.with_claims(ROUTE, "d.n", raw)
    records.provisional(ROUTE, "d.n", first)
    await anyio.sleep(0.001)
    again = records.with_claims(ROUTE, "d.n", raw)
    assert again["claims"] == first["claims"]
    records.revert(ROUTE, "d.n")
    await anyio.sleep(0.001)
    assert records.with_claims(ROUTE, "d.n", raw)["claims"] != first["claims"]


async def test_loaded_records_keep_the_data_planes_equal_copy_of_their_spec() -> None:
    """At start-up the data plane has parsed every record already: the tenant side keeps its
    copy of an equal spec instead of one of its own (one copy a route, not two), and its own
    where the two differ."""
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace(NS))
    raw: Any = {"source": {"kind": "Ingress", "namespace": "d", "name": "n", "uid": "u",
                           "creationTimestamp": ""},
                "rules": [{"host": "x.example.com", "paths": []}]}  # fmt: skip
    for name in ("same", "other"):
        await mgmt.create(ROUTES, record_object("Route", "a", name, raw))
    held = {"same": copy.deepcopy(raw), "other": {**copy.deepcopy(raw), "rules": []}}

    class DataPlane(RecordingSink):
        def stored(self, kind: Any, tenant: str, name: str) -> Any:
            return held.get(name) if (kind, tenant) == (ROUTE, "a") else None

    records = TenantRecords("a", mgmt, DataPlane())
    await records.load([ROUTE])
    assert records.written[("Route", "same")] is held["same"]
    assert records.written[("Route", "other")] == raw
    assert records.written[("Route", "other")] is not held["other"]


async def test_the_first_load_waits_for_the_data_planes_records_but_not_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a restart both sides list the records: the tenant side waits for the data
    plane's, so the copies it keeps are those (20 MiB at 10,000 routes); a data plane that
    cannot list holds it up for `LISTED_WAIT` at most."""
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace(NS))
    raw: Any = {"source": {"kind": "Ingress", "namespace": "d", "name": "n", "uid": "u",
                           "creationTimestamp": ""},
                "rules": [{"host": "x.example.com", "paths": []}]}  # fmt: skip
    await mgmt.create(ROUTES, record_object("Route", "a", "same", raw))
    held = copy.deepcopy(raw)

    class DataPlane(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.all_listed = anyio.Event()
            self.asked = False

        async def listed(self) -> None:
            self.asked = True
            await self.all_listed.wait()

        def stored(self, kind: Any, tenant: str, name: str) -> Any:
            return held if self.all_listed.is_set() and name == "same" else None

    plane = DataPlane()
    records = TenantRecords("a", mgmt, plane)
    async with running(lambda: records.load([ROUTE])):
        await until(lambda: plane.asked, "the data plane asked for its records")
        assert records.written == {}
        assert not [c for c in mgmt.calls if (c.method, c.plural) == ("list", "routes")]
        plane.all_listed.set()
        await until(lambda: records.written, "loaded")
    assert records.written[("Route", "same")] is held

    monkeypatch.setattr(records_module, "LISTED_WAIT", 0.05)
    records = TenantRecords("a", mgmt, DataPlane())
    with anyio.fail_after(5):
        await records.load([ROUTE])
    assert records.written[("Route", "same")] == raw


async def test_a_certificate_limit_leaves_the_newer_certificates_out(fleet: Fleet) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    for i, name in enumerate(("one", "two")):
        obj = ingress(name, f"{name}.example.com", "web")
        obj["spec"]["tls"] = [{"hosts": [f"{name}.example.com"], "secretName": f"{name}-tls"}]
        obj["metadata"]["creationTimestamp"] = f"2026-01-0{i + 1}T00:00:00Z"
        await fleet.tenant.create(INGRESSES, obj)
        if name == "one":
            fleet.sync.set_record({"spec": {"limits": {"certificates": 1}}})
            async with running(fleet.sync.run):
                await until(lambda: fleet.route("one"), "one's record")
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("two"), "two's record")
        one, two = fleet.route("one")["spec"], fleet.route("two")["spec"]
        assert [t["secretName"] for t in one["tls"]] == ["one-tls"]
        assert "tls" not in two
        assert two["problems"][0]["reason"] == "LimitExceeded"
        assert "two-tls" in two["problems"][0]["message"]


async def test_an_address_another_tenant_listed_first_is_reported(fleet: Fleet) -> None:
    async with running(fleet.sync.run):
        await until(lambda: fleet.addresses() == ["10.0.0.1", "10.0.0.2"], "the addresses")
        fleet.sync.node_addresses_taken({"10.0.0.2": "b"})
        await until(lambda: fleet.health("NodesAccepted") == "False", "NodesAccepted=False")
        message = fleet.health("NodesAccepted", "message")
        assert "node n2: 10.0.0.2 is tenant b's, who listed it first" in message
        # A losing claim gets no time: it must never age into a winning one.
        await until(lambda: "10.0.0.2" not in fleet.claimed(), "the claim dropped")
        fleet.sync.node_addresses_taken({})
        await until(lambda: fleet.health("NodesAccepted") == "True", "accepted again")


def endpoint_slice(name: str, service_name: str, addresses: list[str], **labels: str) -> Any:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name, **labels}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }  # fmt: skip


async def test_endpoint_slices_written_by_hand_are_mirrored_for_the_twin(fleet: Fleet) -> None:
    """A Service without a selector: its twin has no endpoints of its own, so the slices the
    tenant wrote are mirrored for it, follow every change, and go when nothing needs them;
    slices a controller made are never touched."""
    manual = service("manual")
    del manual["spec"]["selector"]
    await fleet.tenant.create(SERVICES, manual)
    await fleet.tenant.create(ENDPOINT_SLICES, endpoint_slice("manual-a", "manual", ["10.1.0.5"]))
    await fleet.tenant.create(
        ENDPOINT_SLICES,
        endpoint_slice("manual-b", "manual", ["10.1.0.6"],
                       **{"endpointslice.kubernetes.io/managed-by": "someone-else"}),
    )  # fmt: skip
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "manual"))

    def mirror(name: str) -> Any:
        return fleet.tenant.stored(ENDPOINT_SLICES, twins.twin_name(name), "default")

    async with running(fleet.sync.run):
        await until(lambda: mirror("manual-a"), "the mirror of the hand-written slice")
        twin, m = fleet.twin("manual"), mirror("manual-a")
        assert m["metadata"]["labels"]["kubernetes.io/service-name"] == twin["metadata"]["name"]
        assert m["metadata"]["ownerReferences"][0]["uid"] == twin["metadata"]["uid"]
        assert m["endpoints"] == [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}}]
        assert m["ports"] == [{"name": "http", "port": 3000, "protocol": "TCP"}]
        assert mirror("manual-b") is None  # another manager's slice
        # The tenant changes its slice: the mirror follows.
        await fleet.tenant.apply(
            ENDPOINT_SLICES, endpoint_slice("manual-a", "manual", ["10.1.0.7", "10.1.0.8"])
        )
        await until(lambda: len(mirror("manual-a")["endpoints"]) == 2, "the mirror updated")
        # Someone edits the mirror: it is put back.
        await fleet.tenant.apply(ENDPOINT_SLICES, {**mirror("manual-a"), "endpoints": []})
        await until(lambda: len(mirror("manual-a")["endpoints"]) == 2, "the mirror restored")
        # The Ingress goes, and with it the twin and the mirror.
        await fleet.tenant.delete(INGRESSES, "shop", "default")
        await until(lambda: fleet.twin("manual") is None, "the twin deleted")
        await until(lambda: mirror("manual-a") is None, "the mirror deleted")
        assert fleet.tenant.stored(ENDPOINT_SLICES, "manual-a", "default") is not None


def route_host(fleet: Fleet, name: str) -> Any:
    route = fleet.route(name)
    return route["spec"]["rules"][0]["host"] if route is not None else None


def route_writes(fleet: Fleet, name: str) -> list[str]:
    """The host of each write of Route `name`, oldest first ("" for its deletion)."""
    return [
        c.obj["spec"]["rules"][0]["host"] if c.type != "DELETED" else ""
        for c in fleet.mgmt.changes(ROUTES)
        if c.key[-1] == f"default.{name}"
    ]


def applying(fleet: Fleet, name: str) -> int:
    return sum(
        1 for c in fleet.mgmt.calls if (c.method, c.plural, c.name) == ("apply", "routes", name)
    )


async def test_a_record_write_in_flight_holds_up_no_other_object(fleet: Fleet) -> None:
    """Under a burst, each object is served once translated: a pass hands it to the data
    plane without waiting for the records of the objects before it to be written."""
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    gate = fleet.mgmt.hold("apply", ROUTES)
    async with running(fleet.sync.run):
        await until(lambda: applying(fleet, "default.shop") == 1, "shop's write under way")
        await fleet.tenant.create(INGRESSES, ingress("cart", "cart.example.com", "web"))
        await until(lambda: fleet.sink.of("a/default.cart"), "cart handed to the data plane")
        assert fleet.sink.of("a/default.cart")[0][0] == "provisional"
        assert fleet.route("shop") is None  # still being written
        gate.set()
        await until(lambda: fleet.route("shop") and fleet.route("cart"), "both written")


async def test_records_being_deleted_hold_up_no_new_object(fleet: Fleet) -> None:
    """A namespace's thousands of Ingresses deleted: each record is withdrawn from the data
    plane at once and deleted in the background. The pass awaited every delete, and an
    object created meanwhile waited minutes (5 at 10,000 routes) for the next pass."""
    await fleet.tenant.create(SERVICES, service("web"))
    for i in range(5):
        await fleet.tenant.create(INGRESSES, ingress(f"old{i}", f"old{i}.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: all(fleet.route(f"old{i}") for i in range(5)), "5 records")
        gate = fleet.mgmt.hold("delete", ROUTES)
        for i in range(5):
            await fleet.tenant.delete(INGRESSES, f"old{i}", "default")
        withdrawn = {("deleted", "Route", f"a/default.old{i}", None) for i in range(5)}
        await until(lambda: all(w in fleet.sink.seen for w in withdrawn), "all 5 withdrawn")
        await fleet.tenant.create(INGRESSES, ingress("new", "new.example.com", "web"))
        await until(lambda: fleet.route("new"), "the new one written, the deletes held")
        assert all(fleet.route(f"old{i}") for i in range(5))  # their deletes are held
        gate.set()
        await until(lambda: not any(fleet.route(f"old{i}") for i in range(5)), "deleted")
        await until(lambda: fleet.synced("1 routes in sync"), "the count without them")


async def back_while_its_delete_is_held(fleet: Fleet) -> anyio.Event:
    """Ingress shop (served, its record written) deleted, its record's delete held in flight,
    and shop back as v2, served from its translation: the gate that lets the delete go on."""
    gate = fleet.mgmt.hold("delete", ROUTES)
    await fleet.tenant.delete(INGRESSES, "shop", "default")
    await until(lambda: fleet.sync.records.deleting(ROUTE, "default.shop"), "its delete")
    await fleet.tenant.create(INGRESSES, ingress("shop", "v2.example.com", "web"))
    await until(lambda: fleet.sink.of("a/default.shop")[-1][0] == "provisional", "v2 served")
    return gate


async def test_a_record_whose_object_comes_back_while_it_is_deleted_ends_as_the_object(
    fleet: Fleet,
) -> None:
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "v1.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("shop"), "shop written")
        gate = await back_while_its_delete_is_held(fleet)
        gate.set()
        await until(lambda: route_host(fleet, "shop") == "v2.example.com", "v2 written")
        await until(lambda: not fleet.sync.records.deleting(ROUTE, "default.shop"), "settled")
        assert route_writes(fleet, "shop")[-2:] == ["", "v2.example.com"]  # delete, then v2


async def test_an_object_back_while_its_record_is_deleted_and_gone_again_leaves_no_record(
    fleet: Fleet,
) -> None:
    """Back while the delete was in flight, gone again once it was done and before the write
    of it landed: that write must not make a record nothing deletes any more."""
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "v1.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.route("shop"), "shop written")
        deletes = await back_while_its_delete_is_held(fleet)
        writes = fleet.mgmt.hold("apply", ROUTES)
        deletes.set()
        await until(lambda: not fleet.sync.records.deleting(ROUTE, "default.shop"), "deleted")
        await fleet.tenant.delete(INGRESSES, "shop", "default")
        await until(lambda: fleet.sink.of("a/default.shop")[-1][0] == "deleted", "withdrawn")
        writes.set()
        await until(
            lambda: (
                not fleet.sync.records.writing(ROUTE, "default.shop")
                and not fleet.sync.records.deleting(ROUTE, "default.shop")
            ),
            "settled",
        )
        assert fleet.route("shop") is None


@asynccontextmanager
async def _running(records: TenantRecords) -> AsyncIterator[None]:
    """`records` with its background writes and deletes, for the block (5 s at most); they
    are cancelled at its end, as when the tenant task stops."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(records.run)
            yield
            tg.cancel_scope.cancel()


async def _records_alone() -> tuple[FakeKube, TenantRecords, Any]:
    """A tenant's records over a management API of their own, and a route spec for d/n."""
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace(NS))
    raw: Any = {"source": {"kind": "Ingress", "namespace": "d", "name": "n", "uid": "u",
                           "creationTimestamp": ""},
                "rules": [{"host": "v1.example.com", "paths": []}]}  # fmt: skip
    return mgmt, TenantRecords("a", mgmt, RecordingSink()), raw


async def test_a_record_handed_again_before_its_delete_runs_is_written_not_deleted() -> None:
    """Deleted, then its object back before the background delete ran: the delete waits
    only for the write in flight when it was asked for (a later write waits for it, so the
    two waited for each other), and sees the record handed again: it is not made."""
    mgmt, records, raw = await _records_alone()
    failures: list[Exception] = []
    v2: Any = {**raw, "rules": [{"host": "v2.example.com", "paths": []}]}
    async with _running(records):
        records.provisional(ROUTE, "d.n", raw)
        records.write_later(ROUTE, "d.n", failures.append)
        await until(lambda: ("Route", "d.n") in records.written, "v1 written")
        records.delete_later(ROUTE, "d.n", failures.append)
        assert not records.same(ROUTE, "d.n", raw)  # being deleted: written again if back
        records.provisional(ROUTE, "d.n", v2)  # before the delete's task has run
        records.write_later(ROUTE, "d.n", failures.append)
        await until(
            lambda: not records.deleting(ROUTE, "d.n") and not records.writing(ROUTE, "d.n"),
            "both done",
        )
    stored = mgmt.stored(ROUTES, "d.n", NS)
    assert stored is not None and stored["spec"]["rules"][0]["host"] == "v2.example.com"
    assert not any(c.method == "delete" and c.plural == "routes" for c in mgmt.calls)
    assert failures == []


async def test_a_record_deleted_before_its_write_started_is_neither_written_nor_stuck() -> None:
    """The write was asked for first (it waits its RECORD_DELAY), the delete second: the
    delete waits for that write, which must not wait for the delete."""
    mgmt, records, raw = await _records_alone()
    failures: list[Exception] = []
    async with _running(records):
        records.provisional(ROUTE, "d.n", raw)
        records.write_later(ROUTE, "d.n", failures.append)
        records.delete_later(ROUTE, "d.n", failures.append)
        await until(
            lambda: not records.deleting(ROUTE, "d.n") and not records.writing(ROUTE, "d.n"),
            "both done",
        )
    assert mgmt.stored(ROUTES, "d.n", NS) is None
    assert failures == []


async def test_a_record_whose_delete_failed_is_not_the_same_as_its_spec() -> None:
    """Withdrawn from the data plane, and its delete refused: if its object is ours again
    with the very same spec (a class annotation toggled, which leaves the generation), it
    must be handed over again, not taken for the record as it stands; and it is still
    known, so that a delete is asked for again while the object stays gone."""
    mgmt, records, raw = await _records_alone()
    failures: list[Exception] = []
    async with _running(records):
        await records.write(ROUTE, "d.n", raw)
        assert records.same(ROUTE, "d.n", raw)
        mgmt.fail("delete", ROUTES, status=500)
        records.delete_later(ROUTE, "d.n", failures.append)
        await until(lambda: not records.deleting(ROUTE, "d.n"), "the delete refused")
        assert len(failures) == 1
        assert records.known(ROUTE, "d.n")
        assert not records.same(ROUTE, "d.n", raw)
        records.provisional(ROUTE, "d.n", raw)  # handed over again: served
        records.write_later(ROUTE, "d.n", failures.append)
        await until(lambda: not records.writing(ROUTE, "d.n"), "written again")
        assert records.same(ROUTE, "d.n", raw)
    assert isinstance(records.sink, RecordingSink)
    assert records.sink.seen[-1][0] == "written"


async def test_a_record_a_stopped_task_left_withdrawn_is_not_the_same_for_the_next() -> None:
    """The tenant task stopped while its record's delete was in flight (its kubeconfig
    rotated, say): the record stays in the API, withdrawn from the data plane. The next task
    of the tenant must not take it for served if its object is ours again with the very same
    spec, and it still knows it, to delete it if the object stays gone. A kubelbd started
    afresh serves what it lists: the same record is the same there."""
    mgmt, records, raw = await _records_alone()
    failures: list[Exception] = []
    async with _running(records):
        await records.write(ROUTE, "d.n", raw)
        mgmt.hold("delete", ROUTES)
        records.delete_later(ROUTE, "d.n", failures.append)
        await until(lambda: any(c.method == "delete" for c in mgmt.calls), "in flight")
    # the task stopped, and its delete with it
    assert mgmt.stored(ROUTES, "d.n", NS) is not None and failures == []
    after = TenantRecords("a", mgmt, records.sink)
    await after.load([ROUTE])
    assert after.known(ROUTE, "d.n")
    assert not after.same(ROUTE, "d.n", raw)
    restarted = TenantRecords("a", mgmt, RecordingSink())
    await restarted.load([ROUTE])
    assert restarted.same(ROUTE, "d.n", raw)


async def test_the_records_held_are_counted_as_they_change() -> None:
    """`held` (what a tenant's limits and its Tenant record count) is kept as records are
    handed over, written, deleted and listed again, not counted over all of them on every
    pass: each step agrees with counting them."""
    mgmt, records, raw = await _records_alone()
    failures: list[Exception] = []

    def counted() -> int:
        return len({n for k, n in (*records.written, *records.unwritten) if k == "Route"})

    lb: Any = {"source": {"kind": "Service", "namespace": "d", "name": "db", "uid": "u2",
                          "creationTimestamp": ""}, "ports": []}  # fmt: skip
    async with _running(records):
        records.provisional(ROUTE, "d.n", raw)
        assert records.held(ROUTE) == counted() == 1
        await records.write(ROUTE, "d.n", raw)
        records.provisional(ROUTE, "d.m", raw)
        await records.write(LOADBALANCER, "d.db", lb)
        assert records.held(ROUTE) == counted() == 2
        assert records.held(LOADBALANCER) == 1
        records.revert(ROUTE, "d.m")
        assert records.held(ROUTE) == counted() == 1
        records.delete_later(ROUTE, "d.n", failures.append)
        await until(lambda: not records.deleting(ROUTE, "d.n"), "deleted")
        assert records.held(ROUTE) == counted() == 0
        await records.write(ROUTE, "d.o", raw)
        rewritten: Any = {**raw, "rules": []}
        await records.write(ROUTE, "d.o", rewritten)  # written again: still one
        assert records.held(ROUTE) == counted() == 1
    again = TenantRecords("a", mgmt, RecordingSink())
    await again.load([ROUTE, LOADBALANCER])
    assert (again.held(ROUTE), again.held(LOADBALANCER)) == (1, 1)
    await again.delete(LOADBALANCER, "d.db")
    assert again.held(LOADBALANCER) == 0
    assert failures == []


async def test_record_writes_wait_while_tenants_statuses_are_due_up_to_a_limit(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a burst, the management API server's CPU goes to what tenants wait for: a
    record's write waits while some tenant's object statuses are still to be written (the
    route is served from its translation meanwhile), and at most RECORD_YIELD."""
    busy = True
    fleet.board.subscribe("other", lambda: not busy)  # a tenant with statuses to write
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    async with running(fleet.sync.run):
        await until(lambda: fleet.sink.of("a/default.shop"), "shop handed to the data plane")
        await until(lambda: fleet.sync.records.yielding, "its write waits")
        assert applying(fleet, "default.shop") == 0
        # A record deleted while its write waits is gone at once: the delete waits for
        # nothing (the pass that deletes it would otherwise wait out the limit).
        await fleet.tenant.create(INGRESSES, ingress("temp", "temp.example.com", "web"))
        await until(lambda: ("Route", "default.temp") in fleet.sync.records.yielding, "temp waits")
        await fleet.tenant.delete(INGRESSES, "temp", "default")
        await until(lambda: ("deleted", "Route", "a/default.temp", None) in fleet.sink.seen,
                    "temp withdrawn", timeout=2.0)  # fmt: skip
        assert applying(fleet, "default.temp") == 0
        busy = False
        await until(lambda: fleet.route("shop"), "written once the statuses are out")
        busy = True
        monkeypatch.setattr(records_module, "RECORD_YIELD", 0.2)
        await fleet.tenant.create(INGRESSES, ingress("cart", "cart.example.com", "web"))
        await until(lambda: fleet.route("cart"), "written after waiting at most RECORD_YIELD")
        assert busy


async def test_a_record_changed_or_deleted_while_written_ends_as_its_object(
    fleet: Fleet,
) -> None:
    """Writes of one record never overlap: a newer translation is written after the one in
    flight (never the other way round), and a delete waits for it (else the write could
    land after the delete and make the record again)."""
    await fleet.tenant.create(SERVICES, service("web"))
    await fleet.tenant.create(INGRESSES, ingress("shop", "v1.example.com", "web"))
    gate = fleet.mgmt.hold("apply", ROUTES)
    async with running(fleet.sync.run):
        await until(lambda: applying(fleet, "default.shop") == 1, "v1's write under way")
        rule = {**ingress("shop", "v2.example.com", "web")["spec"]["rules"][0]}
        await fleet.tenant.patch(INGRESSES, "shop", {"spec": {"rules": [rule]}}, "default")
        handed = [s[3]["rules"][0]["host"] for s in fleet.sink.of("a/default.shop")]
        await until(
            lambda: (
                [s[3]["rules"][0]["host"] for s in fleet.sink.of("a/default.shop")]
                == [*handed, "v2.example.com"]
            ),
            "v2 handed over",
        )
        gate.set()
        await until(lambda: route_host(fleet, "shop") == "v2.example.com", "v2 written")
        assert route_writes(fleet, "shop") == ["v1.example.com", "v2.example.com"]

        gate = fleet.mgmt.hold("apply", ROUTES)
        rule = {**ingress("shop", "v3.example.com", "web")["spec"]["rules"][0]}
        await fleet.tenant.patch(INGRESSES, "shop", {"spec": {"rules": [rule]}}, "default")
        await until(lambda: applying(fleet, "default.shop") == 3, "v3's write under way")
        await fleet.tenant.delete(INGRESSES, "shop", "default")
        await until(lambda: fleet.sink.of("a/default.shop")[-1][0] == "deleted", "withdrawn")
        gate.set()
        await until(lambda: route_writes(fleet, "shop")[-1:] == [""], "deleted")
        await until(lambda: not fleet.sync.records.writing(ROUTE, "default.shop"), "settled")
        assert route_writes(fleet, "shop") == [
            "v1.example.com", "v2.example.com", "v3.example.com", "",
        ]  # fmt: skip
        assert fleet.route("shop") is None


async def test_a_twin_the_watch_brought_back_is_not_remembered_as_fresh(fleet: Fleet) -> None:
    """A twin kubelbd wrote is kept aside only until its watch brings it back, also when the
    watch's event comes before the API server's answer to the write: it stayed otherwise, a
    whole Service per twin, until the twin changed again."""
    answers = fleet.tenant.hold_answers("apply", SERVICES)
    name = twins.twin_name("web")

    def watched() -> Any:
        return fleet.sync.caches.cache(SERVICES).get(f"default/{name}")

    async with running(fleet.sync.run):
        await fleet.tenant.create(SERVICES, service("web"))
        await fleet.tenant.create(INGRESSES, ingress("shop", "a.example.com", "web"))
        await until(lambda: hasattr(fleet.sync, "caches") and watched(), "the twin watched")
        answers.set()
        await until(lambda: fleet.route("shop") is not None, "shop's record")
        await until(lambda: not fleet.sync.caches.twins.fresh, "nothing kept aside")
        assert fleet.sync.caches.twins.get("default", "web") == watched()
