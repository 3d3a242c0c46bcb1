"""The data plane as a follower and across leadership terms (FakeKube, a real render loop):
a follower serves from the records and writes nothing, keeps no status backlog, serves only
allocations the leader recorded; a new term does not take issued certificates for unwanted."""

from __future__ import annotations

from pathlib import Path

from kubefleet import certs

from kubelbd.dataplane.l4 import L4Settings
from kubelbd.dataplane.plane import DataPlane
from kubelbd.kube.lease import Leadership
from kubelbd.objects import SECRETS, Obj, Resource
from kubelbd.records.names import LOADBALANCERS, ROUTES, TLS_LABEL, TLS_SOURCE_LABEL, labels
from kubelbd.records.objects import record_object

from .fakekube import FakeKube
from .orchestration import condition_of, running, until
from .test_orchestration_dataplane import (
    b64,
    dataplane,
    files_mentioning,
    lb_spec,
    management,
    route_spec,
)


def follower() -> Leadership:
    lead = Leadership()
    lead.set(False)
    return lead


async def test_a_follower_serves_the_records_and_writes_no_status(tmp_path: Path) -> None:
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path, leadership=follower())
    async with running(dp.run):
        await until(dp.first_publish.is_set, "first publish")
        for i in range(50):
            spec = route_spec(host=f"h{i}.example.com")
            await mgmt.create(ROUTES, record_object("Route", "a", f"default.r{i}", spec))
        await until(lambda: files_mentioning(tmp_path, "h49.example.com"), "the last one served")
        # Nothing written, nothing kept to write: a follower's status has no backlog.
        routes, _ = await mgmt.list(ROUTES)
        assert len(routes) == 50
        assert all("status" not in r for r in routes), "a follower wrote a status"
        assert not dp.status.pending(), "a follower keeps statuses it will never write"


async def test_a_follower_serves_only_allocations_the_leader_recorded(tmp_path: Path) -> None:
    mgmt = await management()
    l4 = L4Settings(mode="pool", pool="192.0.2.0/29")
    lead = follower()
    dp = dataplane(mgmt, tmp_path, l4=l4, leadership=lead)
    async with running(dp.run):
        await until(dp.first_publish.is_set, "first publish")
        db = lb_spec("db", "2026-01-02T00:00:00Z")
        await mgmt.create(LOADBALANCERS, record_object("LoadBalancer", "a", "default.db", db))
        await until(lambda: "a/default.db" in dp.l4.records, "the record in the data plane")
        assert dp.l4.placements == {}, "a follower allocated"
        assert not files_mentioning(tmp_path, "192.0.2.1"), "a follower listens unrecorded"
        assert "status" not in (mgmt.stored(LOADBALANCERS, "default.db", "tenant-a") or {})
        lead.set(True)  # the leader is this replica now: it allocates and records
        await until(lambda: files_mentioning(tmp_path, "192.0.2.1"), "the allocation served")
        stored = mgmt.stored(LOADBALANCERS, "default.db", "tenant-a") or {}
        assert stored["status"]["address"] == "192.0.2.1"


async def test_a_new_term_keeps_issued_certificates_the_routes_want(tmp_path: Path) -> None:
    mgmt = await management()
    host = "shop.example.com"
    entry = {"hosts": [host], "secretName": "shop-tls", "source": "acme"}
    spec = route_spec() | {"tls": [entry]}
    await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", spec))
    pair = certs.issue(certs.new_ca("ca"), host, dns=(host,), server=True)
    meta = {"name": "default.shop-tls", "namespace": "tenant-a",
            "labels": {**labels("a"), TLS_LABEL: "true", TLS_SOURCE_LABEL: "acme"}}  # fmt: skip
    data = {"tls.crt": b64(pair.cert_pem()), "tls.key": b64(pair.key_pem())}
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls"}
    await mgmt.create(SECRETS, secret | {"metadata": meta, "data": data})
    # Leading from the start (a lone replica restarting): the issuers must not run before
    # a render told them which certificates the routes want.
    dp = dataplane(mgmt, tmp_path, https_port=8443)
    async with running(dp.run):
        await until(lambda: dp.tls.issuers.passes > 0, "the issuers' first pass")
    assert mgmt.stored(SECRETS, "default.shop-tls", "tenant-a") is not None


def status_writes(mgmt: FakeKube, resource: Resource) -> list[str]:
    return [c.name for c in mgmt.calls if c.plural == resource.plural and c.subresource == "status"]


async def writes_of_a_new_term(
    dp: DataPlane, lead: Leadership, resource: Resource, names: list[str], new: Obj
) -> list[str]:
    """The record statuses a new term writes: the first term has written those of `names`
    and seen them back on the records; it ends, and the next begins with record `new`."""
    mgmt = dp.mgmt
    assert isinstance(mgmt, FakeKube)

    def programmed(name: str) -> bool:
        return bool(condition_of(mgmt, resource, name, "tenant-a", "Programmed") == "True")

    async with running(dp.run):
        await until(lambda: all(programmed(n) for n in names), "the first term's statuses")
        carried = dp.intake.statuses if resource == ROUTES else dp.l4.carried
        await until(lambda: len(carried) == len(names), "the statuses seen on the records")
        lead.set(False)
        await until(lambda: not dp.l4.writes, "the term's writers stopped")
        before = len(status_writes(mgmt, resource))
        lead.set(True)
        await mgmt.create(resource, new)
        name = new["metadata"]["name"]
        await until(lambda: programmed(name), "the new term's status of a new record")
        await until(lambda: dp.status.writer.idle.is_set(), "the new term's writes done")
        return status_writes(mgmt, resource)[before:]


async def test_a_new_term_writes_no_record_status_the_records_carry_already(
    tmp_path: Path,
) -> None:
    """Every record's status applied again at each term was, at 10,000 routes, 10,000
    server-side applies on a management API server just too slow to renew the Lease."""
    mgmt = await management()
    names = [f"default.r{i}" for i in range(5)]
    for i, name in enumerate(names):
        spec = route_spec(host=f"h{i}.example.com")
        await mgmt.create(ROUTES, record_object("Route", "a", name, spec))
    lead = Leadership()
    lead.set(True)
    dp = dataplane(mgmt, tmp_path, leadership=lead)
    new = record_object("Route", "a", "default.new", route_spec(host="new.example.com"))
    assert await writes_of_a_new_term(dp, lead, ROUTES, names, new) == ["default.new"]


async def test_a_new_term_writes_no_load_balancer_status_the_records_carry_already(
    tmp_path: Path,
) -> None:
    """As for Routes: the allocation is the allocator's and stays out of the comparison."""
    mgmt = await management()
    names = [f"default.db{i}" for i in range(3)]
    for i, name in enumerate(names):
        spec = lb_spec(f"db{i}", "2026-01-02T00:00:00Z")
        await mgmt.create(LOADBALANCERS, record_object("LoadBalancer", "a", name, spec))
    lead = Leadership()
    lead.set(True)
    l4 = L4Settings(mode="pool", pool="192.0.2.0/29")
    dp = dataplane(mgmt, tmp_path, l4=l4, leadership=lead)
    new = record_object("LoadBalancer", "a", "default.new", lb_spec("new", "2026-01-03T00:00:00Z"))
    assert set(await writes_of_a_new_term(dp, lead, LOADBALANCERS, names, new)) == {"default.new"}
