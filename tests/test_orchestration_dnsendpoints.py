"""--dns-provider=dnsendpoint (the data plane over FakeKube, as in test_orchestration_dns.py but
with external-dns's DNSEndpoints instead of a DNS server): a served route gets its DNSEndpoint
in tenant-<tenant> with exactly its names, owned by the record; a change of the route changes
it, the route's deletion deletes it; a term removes kubelbd's stale DNSEndpoints and never
touches one kubelbd did not make; DNSPublished follows external-dns's observedGeneration; a
follower writes nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kubelbd.config import parse_args
from kubelbd.dataplane.dns import DNSENDPOINT_PROVIDER, DNSSettings
from kubelbd.dataplane.dnsendpoints import DNSEndpointWriter
from kubelbd.dns.endpoints import DNSENDPOINTS, endpoint_name
from kubelbd.dns.records import Endpoint
from kubelbd.kube.lease import Leadership
from kubelbd.objects import MANAGED_BY, MANAGER, Obj
from kubelbd.records.names import LOADBALANCERS, ROUTES, TENANT_LABEL, labels
from kubelbd.records.objects import record_object

from .fakekube import FakeKube
from .orchestration import condition, condition_of, running, until
from .test_orchestration_dataplane import PUBLIC, dataplane, lb_spec, management, route_spec

SETTINGS = DNSSettings(ttl=30, provider=DNSENDPOINT_PROVIDER)
NS = "tenant-a"


def dns_endpoint(mgmt: FakeKube, record: str, kind: str = "route") -> Obj | None:
    return mgmt.stored(DNSENDPOINTS, f"{kind}.{record}", NS)


def endpoints_of(mgmt: FakeKube, record: str, kind: str = "route") -> Any:
    return ((dns_endpoint(mgmt, record, kind) or {}).get("spec") or {}).get("endpoints")


def published(mgmt: FakeKube, record: str, field: str = "status") -> Any:
    return condition_of(mgmt, ROUTES, record, NS, "DNSPublished", field)


async def observe(mgmt: FakeKube, name: str) -> None:
    """What external-dns's crd source does once it read an object: its generation, in status."""
    obj = mgmt.stored(DNSENDPOINTS, name, NS)
    assert obj is not None
    status = {"observedGeneration": obj["metadata"]["generation"]}
    await mgmt.apply(
        DNSENDPOINTS,
        {"metadata": {"name": name, "namespace": NS}, "status": status},
        subresource="status",
        field_manager="external-dns",
    )


def foreign(name: str, host: str) -> Obj:
    """A DNSEndpoint someone else made (no managed-by label)."""
    return {
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": {"name": name, "namespace": NS, "labels": {TENANT_LABEL: "a"}},
        "spec": {"endpoints": [{"dnsName": host, "recordType": "A", "targets": ["192.0.2.9"]}]},
    }


def test_the_flag_needs_no_server_and_refuses_rfc2136_settings() -> None:
    cfg = parse_args(["--dns-provider=dnsendpoint", "--dns-ttl=7"])
    assert cfg.dns.enabled and cfg.dns.provider == DNSENDPOINT_PROVIDER and cfg.dns.ttl == 7
    assert not parse_args([]).dns.enabled  # rfc2136 without --dns-server: no DNS at all
    for extra in ("--dns-server=127.0.0.1:53", "--dns-zone=example.test", "--dns-owner-id=x"):
        with pytest.raises(SystemExit):
            parse_args(["--dns-provider=dnsendpoint", extra])


def test_a_long_record_name_gives_a_valid_object_name() -> None:
    name = endpoint_name("LoadBalancer", "n" * 120 + "." + "s" * 130)
    assert len(name) <= 253 and name.startswith("loadbalancer.n")
    assert name != endpoint_name("LoadBalancer", "n" * 120 + "." + "s" * 131)
    assert endpoint_name("Route", "default.shop") == "route.default.shop"


async def test_a_served_route_gets_its_dnsendpoint_which_follows_the_route(
    tmp_path: Path,
) -> None:
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, dns=SETTINGS)
    # no DNS-01 here
    assert isinstance(dp.names.publisher, DNSEndpointWriter) and dp.tls._dns01 is None
    async with running(dp.run):
        host = "shop.example.test"
        await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", route_spec(host)))
        want = [{"dnsName": host, "recordType": "A", "targets": [PUBLIC], "recordTTL": 30}]
        await until(lambda: endpoints_of(mgmt, "default.shop") == want, "the DNSEndpoint")
        obj = dns_endpoint(mgmt, "default.shop") or {}
        assert obj["metadata"]["labels"][MANAGED_BY] == MANAGER
        assert obj["metadata"]["labels"][TENANT_LABEL] == "a"
        route = mgmt.stored(ROUTES, "default.shop", NS) or {}
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "Route", "default.shop", route["metadata"]["uid"],
        )  # fmt: skip
        # The route's host changes: so does the DNSEndpoint, in place.
        spec = route_spec("shop2.example.test")
        route["spec"] = spec
        await mgmt.replace(ROUTES, route)
        await until(
            lambda: (
                [e["dnsName"] for e in endpoints_of(mgmt, "default.shop") or []]
                == ["shop2.example.test"]
            ),
            "the DNSEndpoint changed",
        )
        # The route goes: so does its DNSEndpoint (kubelbd deletes it; the owner too).
        await mgmt.delete(ROUTES, "default.shop", NS)
        await until(lambda: dns_endpoint(mgmt, "default.shop") is None, "the DNSEndpoint gone")


async def test_dnspublished_waits_for_external_dns_to_observe_the_generation(
    tmp_path: Path,
) -> None:
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, dns=SETTINGS)
    async with running(dp.run):
        spec = route_spec("obs.example.test")
        await mgmt.create(ROUTES, record_object("Route", "a", "default.obs", spec))
        await until(
            lambda: published(mgmt, "default.obs", "reason") == "WaitingForExternalDNS",
            "DNSPublished=False, WaitingForExternalDNS",
        )
        assert published(mgmt, "default.obs") == "False"
        await observe(mgmt, "route.default.obs")
        await until(
            lambda: published(mgmt, "default.obs", "reason") == "ObservedByExternalDNS",
            "DNSPublished=True once external-dns read it",
        )
        assert published(mgmt, "default.obs") == "True"
        # A new generation (the host changed) is not observed until external-dns reads it.
        route = mgmt.stored(ROUTES, "default.obs", NS) or {}
        route["spec"] = route_spec("obs2.example.test")
        await mgmt.replace(ROUTES, route)
        await until(
            lambda: published(mgmt, "default.obs", "reason") == "WaitingForExternalDNS",
            "waiting again for the new generation",
        )
        obj = dns_endpoint(mgmt, "default.obs") or {}
        assert obj["metadata"]["generation"] == 2
        await observe(mgmt, "route.default.obs")
        await until(lambda: published(mgmt, "default.obs") == "True", "observed again")


async def test_a_term_removes_stale_dnsendpoints_and_leaves_foreign_ones(tmp_path: Path) -> None:
    mgmt = await management()
    # Left by a kubelbd whose route went while it was down; and one someone else made.
    stale = foreign("route.default.gone", "gone.example.test")
    stale["metadata"]["labels"] = labels("a")
    await mgmt.create(DNSENDPOINTS, stale)
    await mgmt.create(DNSENDPOINTS, foreign("by-hand", "hand.example.test"))
    # Someone else's object by the very name a served route's DNSEndpoint would have.
    await mgmt.create(DNSENDPOINTS, foreign("route.default.taken", "taken.example.test"))
    dp = dataplane(mgmt, tmp_path, dns=SETTINGS)
    async with running(dp.run):
        spec = route_spec("keep.example.test")
        await mgmt.create(ROUTES, record_object("Route", "a", "default.keep", spec))
        spec = route_spec("taken.example.test")
        await mgmt.create(ROUTES, record_object("Route", "a", "default.taken", spec))
        await until(lambda: dns_endpoint(mgmt, "default.gone") is None, "the stale one removed")
        await until(lambda: endpoints_of(mgmt, "default.keep"), "the served one written")
        await until(
            lambda: published(mgmt, "default.taken", "reason") == "DNSEndpointTaken",
            "DNSPublished=False, DNSEndpointTaken",
        )
    assert mgmt.stored(DNSENDPOINTS, "by-hand", NS) == (await mgmt.get(DNSENDPOINTS, "by-hand", NS))
    taken = dns_endpoint(mgmt, "default.taken") or {}
    assert taken["spec"]["endpoints"][0]["targets"] == ["192.0.2.9"], "a foreign one changed"
    assert MANAGED_BY not in taken["metadata"]["labels"]
    assert [c.type for c in mgmt.changes(DNSENDPOINTS) if c.key[3] == "by-hand"] == ["ADDED"]


async def test_a_dnsendpoint_changed_behind_kubelbds_back_is_mended_and_no_other_rewritten(
    tmp_path: Path,
) -> None:
    """A pass looks at the records that changed and the DNSEndpoints the watch saw change,
    not at every record: an object edited, deleted or left stray mid-term is still mended,
    and the others are not written again."""
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, dns=SETTINGS)
    async with running(dp.run):
        for name in ("fix", "calm"):
            spec = route_spec(f"{name}.example.test")
            await mgmt.create(ROUTES, record_object("Route", "a", f"default.{name}", spec))
        want = [{"dnsName": "fix.example.test", "recordType": "A", "targets": [PUBLIC],
                 "recordTTL": 30}]  # fmt: skip
        await until(lambda: endpoints_of(mgmt, "default.fix") == want, "the DNSEndpoint")
        await until(lambda: endpoints_of(mgmt, "default.calm"), "the other one")
        calm = (dns_endpoint(mgmt, "default.calm") or {})["metadata"]["resourceVersion"]

        edited = dns_endpoint(mgmt, "default.fix") or {}
        edited["spec"]["endpoints"][0]["targets"] = ["192.0.2.66"]
        await mgmt.replace(DNSENDPOINTS, edited)
        await until(lambda: endpoints_of(mgmt, "default.fix") == want, "the edit undone")

        await mgmt.delete(DNSENDPOINTS, "route.default.fix", NS)
        await until(lambda: endpoints_of(mgmt, "default.fix") == want, "made again")

        stray = foreign("route.default.stray", "stray.example.test")
        stray["metadata"]["labels"] = labels("a")
        await mgmt.create(DNSENDPOINTS, stray)
        await until(lambda: dns_endpoint(mgmt, "default.stray") is None, "the stray deleted")
    assert (dns_endpoint(mgmt, "default.calm") or {})["metadata"]["resourceVersion"] == calm


def test_a_records_uid_coming_later_gives_its_object_an_owner_on_the_next_want() -> None:
    """A route served before its record is written has no uid yet: its object has no owner,
    and is made again on each `want` (whatever DesiredNames answered again) until it has."""
    uids: dict[tuple[str, str], str] = {}
    writer = DNSEndpointWriter(FakeKube(), SETTINGS, lambda changed: None, uids.get)
    k = ("Route", "a/default.early")
    wanted = {k: [Endpoint("early.example.test", "A", (PUBLIC,), 30, "route/tenant-a/x")]}
    assert writer._take(wanted, None)
    assert "ownerReferences" not in writer._objects[k]["metadata"]
    uids[k] = "uid-1"
    assert writer._take(dict(wanted), set())  # nothing answered again, but the uid came
    (owner,) = writer._objects[k]["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-1"
    assert not writer._take(dict(wanted), set())  # and nothing more to do


async def test_a_dnsendpoint_made_again_takes_the_records_uid_as_it_is_then() -> None:
    """A record stored again (a new uid) whose names did not change is not answered again:
    once the garbage collector deletes its DNSEndpoint (the owner is gone), the one made
    again is owned by the new uid, not by the dead one over and over."""
    mgmt = await management()
    uids = {("Route", "a/default.again"): "uid-1"}
    writer = DNSEndpointWriter(mgmt, SETTINGS, lambda changed: None, uids.get)
    k = ("Route", "a/default.again")
    wanted = {k: [Endpoint("again.example.test", "A", (PUBLIC,), 30, "route/tenant-a/x")]}

    def owner() -> str | None:
        obj = dns_endpoint(mgmt, "default.again")
        return obj["metadata"]["ownerReferences"][0]["uid"] if obj else None

    async with running(writer.run):
        writer.want(wanted, None)
        await until(lambda: owner() == "uid-1", "written, owned by uid-1")
        uids[k] = "uid-2"
        writer.want(dict(wanted), set())  # nothing answered again
        await mgmt.delete(DNSENDPOINTS, "route.default.again", NS)  # the collector
        await until(lambda: owner() == "uid-2", "made again, owned by uid-2")


async def test_a_start_never_deletes_a_dnsendpoint_it_still_wants(tmp_path: Path) -> None:
    """Before the first status pass nothing looks wanted: a start (or a failover) must not
    delete and write again what is served all along."""
    mgmt = await management()
    await mgmt.create(ROUTES, record_object("Route", "a", "default.steady", route_spec("s.test")))
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    first = dataplane(mgmt, tmp_path / "1", dns=SETTINGS)
    async with running(first.run):
        await until(lambda: dns_endpoint(mgmt, "default.steady"), "written by the first run")
    written = len(mgmt.changes(DNSENDPOINTS))
    second = dataplane(mgmt, tmp_path / "2", dns=SETTINGS)
    async with running(second.run):
        await until(
            lambda: published(mgmt, "default.steady", "reason") == "WaitingForExternalDNS",
            "the second run's status",
        )
        settled = second.names.publisher
        await until(lambda: settled is not None and settled.states, "a settled pass")
    assert [c.type for c in mgmt.changes(DNSENDPOINTS)[written:]] == [], "rewritten or deleted"


async def test_a_load_balancers_names_get_a_dnsendpoint_at_its_address(tmp_path: Path) -> None:
    mgmt = await management()
    spec = lb_spec("db", "2026-01-02T00:00:00Z") | {"dns": {"hostnames": ["db.example.test"]}}
    await mgmt.create(LOADBALANCERS, record_object("LoadBalancer", "a", "default.db", spec))
    from kubelbd.dataplane.l4 import L4Settings

    dp = dataplane(mgmt, tmp_path, L4Settings(mode="pool", pool="192.0.2.0/29"), dns=SETTINGS)
    async with running(dp.run):
        await until(lambda: endpoints_of(mgmt, "default.db", "loadbalancer"), "its DNSEndpoint")
        (e,) = endpoints_of(mgmt, "default.db", "loadbalancer")
        assert (e["dnsName"], e["recordType"], e["targets"]) == (
            "db.example.test",
            "A",
            ["192.0.2.1"],
        )
        await observe(mgmt, "loadbalancer.default.db")

        def lb_published() -> Any:
            return condition_of(mgmt, LOADBALANCERS, "default.db", NS, "DNSPublished")

        await until(lambda: lb_published() == "True", "the LoadBalancer's DNSPublished")
        await mgmt.delete(LOADBALANCERS, "default.db", NS)
        await until(lambda: dns_endpoint(mgmt, "default.db", "loadbalancer") is None, "gone")


async def test_a_failed_write_is_a_condition_and_is_retried(tmp_path: Path) -> None:
    mgmt = await management()
    # Failing until the condition is seen: a record's status settles for a moment before it
    # is written (reporter.RECORD_SETTLE), and a failure retried within it never shows.
    mgmt.fail("create", DNSENDPOINTS, status=500, times=math.inf)
    dp = dataplane(mgmt, tmp_path, dns=SETTINGS)
    async with running(dp.run):
        spec = route_spec("retry.example.test")
        await mgmt.create(ROUTES, record_object("Route", "a", "default.retry", spec))
        await until(
            lambda: published(mgmt, "default.retry", "reason") == "DNSEndpointWriteFailed",
            "DNSPublished=False, DNSEndpointWriteFailed",
        )
        # Routing is not held up by it.
        assert condition(mgmt.stored(ROUTES, "default.retry", NS), "Programmed")["status"] == "True"
        mgmt.heal()
        await until(lambda: endpoints_of(mgmt, "default.retry"), "written on the retry", 35)
        await until(
            lambda: published(mgmt, "default.retry", "reason") == "WaitingForExternalDNS",
            "the condition follows",
        )


async def test_without_the_crd_the_routes_say_so_and_nothing_is_written(tmp_path: Path) -> None:
    mgmt = await management()
    mgmt.fail("*", DNSENDPOINTS, status=404, times=math.inf)
    dp = dataplane(mgmt, tmp_path, dns=SETTINGS)
    async with running(dp.run):
        spec = route_spec("nocrd.example.test")
        await mgmt.create(ROUTES, record_object("Route", "a", "default.nocrd", spec))
        await until(
            lambda: published(mgmt, "default.nocrd", "reason") == "DNSEndpointNotServed",
            "DNSPublished=False, DNSEndpointNotServed",
        )
    assert not [c for c in mgmt.calls if c.plural == "dnsendpoints" and c.method != "list"]


async def test_a_follower_writes_no_dnsendpoint(tmp_path: Path) -> None:
    mgmt = await management()
    stale = foreign("route.default.old", "old.example.test")
    stale["metadata"]["labels"] = labels("a")
    await mgmt.create(DNSENDPOINTS, stale)
    before = len(mgmt.calls)
    lead = Leadership()
    lead.set(False)
    dp = dataplane(mgmt, tmp_path, leadership=lead, dns=SETTINGS)
    async with running(dp.run):
        spec = route_spec("f.example.test")
        await mgmt.create(ROUTES, record_object("Route", "a", "default.f", spec))
        await until(dp.first_publish.is_set, "first publish")
        await until(lambda: "a/default.f" in dp.model.routes, "the route in the model")
        for _ in range(50):  # passes of the render loop, at least; nothing may be written
            await anyio.lowlevel.checkpoint()
        assert dns_endpoint(mgmt, "default.f") is None
        assert dns_endpoint(mgmt, "default.old") is not None, "a follower deleted"
        calls = [c for c in mgmt.calls[before:] if c.plural == "dnsendpoints"]
        assert calls == [], "a follower called"
        lead.set(True)  # now it leads: it writes, and cleans up
        await until(lambda: endpoints_of(mgmt, "default.f"), "written once leading")
        await until(lambda: dns_endpoint(mgmt, "default.old") is None, "the stale one removed")
