"""DNS follows routing (the data plane over FakeKube, a real BIND 9 from tests/bind_server.py):
a host Envoy serves is published at the public address and its Route says DNSPublished; when
the route goes, so does the name; a name held by a record kubelbd does not own is left alone
and the Route says why; a name kubelbd owns but no longer serves (it was down meanwhile) is
removed by the first reconcile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from kubelbd.dataplane.dns import DNSSettings
from kubelbd.dataplane.l4 import L4Settings
from kubelbd.dns.records import Create, Endpoint
from kubelbd.dns.rfc2136 import RFC2136, Done
from kubelbd.records.names import LOADBALANCERS, ROUTES
from kubelbd.records.objects import record_object

from .bind_server import Bind, bind_server
from .orchestration import condition, condition_of, running, until
from .test_orchestration_dataplane import PUBLIC, dataplane, lb_spec, management, route_spec


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    with bind_server(tmp_path_factory.mktemp("named")) as server:
        yield server


def settings(bind: Bind) -> DNSSettings:
    return DNSSettings(bind.server, bind.zone, bind.key_name, bind.key_secret, bind.algorithm,
                       ttl=30, owner="kubelbd-test")  # fmt: skip


async def resolves(bind: Bind, name: str) -> set[str]:
    query = dns.message.make_query(name, dns.rdatatype.A)
    answer = await dns.asyncquery.tcp(query, bind.address, port=bind.port, timeout=2)
    if answer.rcode() != dns.rcode.NOERROR:
        return set()
    return {r.to_text() for rrset in answer.answer for r in rrset}


def published(mgmt: object, name: str) -> object:
    return condition_of(mgmt, ROUTES, name, "tenant-a", "DNSPublished")  # type: ignore[arg-type]


async def test_a_served_host_is_published_and_withdrawn_with_its_route(
    bind: Bind, tmp_path: Path
) -> None:
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, dns=settings(bind))
    host = "shop.example.test"
    async with running(dp.run):
        await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", route_spec(host)))
        await until(lambda: published(mgmt, "default.shop") == "True", "DNSPublished")
        assert await resolves(bind, host) == {PUBLIC}
        await mgmt.delete(ROUTES, "default.shop", "tenant-a")

        async def gone() -> bool:
            return await resolves(bind, host) == set()

        await until(gone, "the name withdrawn")


async def test_a_name_kubelbd_does_not_own_is_left_alone(bind: Bind, tmp_path: Path) -> None:
    other = RFC2136(bind.server, bind.zone, bind.key_name, bind.key_secret, bind.algorithm,
                    "someone-else", 5)  # fmt: skip
    host = "taken.example.test"
    made = await other.apply(Create(Endpoint(host, "A", ("192.0.2.99",), 30, "x/y/z")))
    assert isinstance(made, Done)
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, dns=settings(bind))
    async with running(dp.run):
        await mgmt.create(ROUTES, record_object("Route", "a", "default.t", route_spec(host)))

        def reason() -> str:
            route = mgmt.stored(ROUTES, "default.t", "tenant-a") or {}
            conds = (route.get("status") or {}).get("conditions") or []
            return next((c["reason"] for c in conds if c["type"] == "DNSPublished"), "")

        await until(lambda: reason() == "NameTaken", "DNSPublished=False, NameTaken")
        assert published(mgmt, "default.t") == "False"
    assert await resolves(bind, host) == {"192.0.2.99"}


async def test_a_name_no_longer_served_is_removed_at_start(bind: Bind, tmp_path: Path) -> None:
    ours = RFC2136(bind.server, bind.zone, bind.key_name, bind.key_secret, bind.algorithm,
                   "kubelbd-test", 5)  # fmt: skip
    host = "stale.example.test"
    made = await ours.apply(Create(Endpoint(host, "A", (PUBLIC,), 30, "route/tenant-a/x")))
    assert isinstance(made, Done)  # published by a kubelbd whose route went while it was down
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, dns=settings(bind))
    async with running(dp.run):
        await mgmt.create(
            ROUTES, record_object("Route", "a", "default.k", route_spec("keep.example.test"))
        )

        async def cleaned() -> bool:
            return await resolves(bind, host) == set() and bool(
                await resolves(bind, "keep.example.test")
            )

        await until(cleaned, "the stale name removed, the served one published")


async def test_a_start_never_withdraws_a_name_it_still_serves(bind: Bind, tmp_path: Path) -> None:
    """Before the first status pass every owned name would look unwanted: a start (or a
    failover) must not withdraw and publish again what is served all along."""
    host = "steady.example.test"
    ours = RFC2136(bind.server, bind.zone, bind.key_name, bind.key_secret, bind.algorithm,
                   "kubelbd-test", 5)  # fmt: skip
    made = await ours.apply(
        Create(Endpoint(host, "A", (PUBLIC,), 30, "route/tenant-a/default.steady"))
    )
    assert isinstance(made, Done)
    mgmt = await management()
    await mgmt.create(ROUTES, record_object("Route", "a", "default.steady", route_spec(host)))
    dp = dataplane(mgmt, tmp_path, dns=settings(bind))
    missing: list[str] = []

    async def watch() -> None:
        while True:
            if await resolves(bind, host) != {PUBLIC}:
                missing.append(host)
            await anyio.sleep(0.002)

    async with running(watch, dp.run):
        await until(lambda: published(mgmt, "default.steady") == "True", "DNSPublished")
    assert missing == [], "the name went away while it was served"


async def test_a_host_outside_the_zone_is_a_condition_not_a_warning(
    bind: Bind, tmp_path: Path
) -> None:
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, dns=settings(bind))
    async with running(dp.run):
        spec = route_spec("shop.elsewhere.test")
        await mgmt.create(ROUTES, record_object("Route", "a", "default.away", spec))

        def reason() -> str:
            route = mgmt.stored(ROUTES, "default.away", "tenant-a") or {}
            conds = (route.get("status") or {}).get("conditions") or []
            return next((c["reason"] for c in conds if c["type"] == "DNSPublished"), "")

        await until(lambda: reason() == "OutsideZone", "DNSPublished=False, OutsideZone")
        wanted = [s for s in dp.board.take("a") if s.name == "shop"]
        assert wanted and not any(e.reason == "OutsideZone" for s in wanted for e in s.events)


async def test_a_load_balancers_name_is_published_at_its_address_and_written_to_its_service(
    bind: Bind, tmp_path: Path
) -> None:
    """A Service's name (its annotation, in the record's spec.dns) resolves to the address the
    LoadBalancer got from the pool; its record says DNSPublished; its Service's status has
    the name next to the address, only once the name is published."""
    mgmt = await management()
    spec = lb_spec("db", "2026-01-02T00:00:00Z") | {
        "dns": {"hostnames": ["db.example.test"], "ttl": 7}
    }
    await mgmt.create(LOADBALANCERS, record_object("LoadBalancer", "a", "default.db", spec))
    plain = lb_spec("cache", "2026-01-02T00:00:00Z")
    await mgmt.create(LOADBALANCERS, record_object("LoadBalancer", "a", "default.cache", plain))
    dp = dataplane(mgmt, tmp_path, L4Settings(mode="pool", pool="192.0.2.0/29"), dns=settings(bind))
    async with running(dp.run):

        def lb_published() -> Any:
            return condition_of(mgmt, LOADBALANCERS, "default.db", "tenant-a", "DNSPublished")

        await until(lambda: lb_published() == "True", "the LoadBalancer's DNSPublished")
        address = (mgmt.stored(LOADBALANCERS, "default.db", "tenant-a") or {})["status"]["address"]
        assert await resolves(bind, "db.example.test") == {address}
        services = [s for s in dp.board.take("a") if s.kind == "Service" and s.name == "db"]
        assert services[-1].ingress() == [{"ip": address, "hostname": "db.example.test"}]
        # A Service that asks for no name has no DNSPublished condition at all.
        cache = mgmt.stored(LOADBALANCERS, "default.cache", "tenant-a") or {}
        assert condition(cache, "Programmed").get("status") == "True"
        assert condition(cache, "DNSPublished") == {}
        await mgmt.delete(LOADBALANCERS, "default.db", "tenant-a")

        async def gone() -> bool:
            return await resolves(bind, "db.example.test") == set()

        await until(gone, "the name withdrawn with its LoadBalancer")
