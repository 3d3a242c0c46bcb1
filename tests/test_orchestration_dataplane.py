"""kubelbd.dataplane: the Intake (what reaches the model, and what does not), and the DataPlane
loop end to end over a FakeKube: records in, Envoy files out, then status once "Envoy" (a
fake admin interface that applies whatever is published) reports them applied."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from kubefleet import certs

from kubelbd.dataplane.dns import DNSSettings
from kubelbd.dataplane.intake import Batch, Intake
from kubelbd.dataplane.l4 import L4Settings, LoadBalancers
from kubelbd.dataplane.plane import DataPlane
from kubelbd.envoy.admin import EnvoyAdmin
from kubelbd.envoy.ads import DiscoveryServer
from kubelbd.envoy.publisher import TEMP_PREFIX, Publisher
from kubelbd.envoy.scopes import FALLBACK, is_scope, scope_file, scope_name
from kubelbd.envoy.settings import ADS_SOCKET, Settings
from kubelbd.envoy.type_urls import CLUSTER, SCOPED_ROUTE
from kubelbd.hub import Settling, StatusBoard
from kubelbd.kube.lease import Leadership
from kubelbd.objects import NAMESPACES, SECRETS, SERVICES, Obj
from kubelbd.records import parse
from kubelbd.records.conditions import fingerprint
from kubelbd.records.names import (
    LOADBALANCER,
    LOADBALANCERS,
    MAX_NAME,
    ROUTE,
    ROUTES,
    TENANTS,
    TLS_LABEL,
    copy_name,
    labels,
    secret_id,
)
from kubelbd.records.objects import record_object, tenant_object
from kubelbd.records.status import SourceStatus
from kubelbd.records.types import RouteRecord

from .fakekube import FakeKube
from .orchestration import DEADLINE, condition, condition_of, namespace, running, until

RID = "a/default.shop"
PUBLIC = "203.0.113.10"


def route_spec(host: str = "shop.example.com", node_port: int = 30080) -> Any:
    return {
        "source": {
            "kind": "Ingress",
            "namespace": "default",
            "name": "shop",
            "uid": "ingress-uid",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "rules": [
            {
                "host": host,
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backends": [{"service": "web", "port": "80", "nodePort": node_port}],
                    }
                ],
            }
        ],
    }


def route_obj(spec: Any, uid: str = "u1", generation: int = 1) -> Obj:
    obj = record_object("Route", "a", "default.shop", spec)
    obj["metadata"].update(uid=uid, generation=generation, resourceVersion="7")
    return obj


class Recorder:
    def __init__(self) -> None:
        self.wakes = 0
        self.confirmations = 0
        self.model: dict[str, RouteRecord] = {}

    def wake(self) -> None:
        self.wakes += 1

    def intake(self) -> Intake:
        l4 = LoadBalancers(FakeKube("mgmt"), L4Settings(), lambda: None)
        return Intake(self.wake, self.model.get, l4, self.confirmed)

    def confirmed(self) -> None:
        self.confirmations += 1

    def render(self, intake: Intake) -> Batch:
        """What the data plane does with a batch, as far as the intake can see."""
        batch = intake.take()
        for rid in batch.deletes:
            self.model.pop(rid, None)
        self.model.update(batch.upserts)
        return batch


# ---- the intake ---------------------------------------------------------------------------------


def test_records_withdrawn_on_the_tenant_sides_word_are_known_until_deleted_or_stored() -> None:
    """What a stopped tenant task leaves withdrawn and undeleted (hub.RecordSink.withdrawn),
    for the next task of the tenant: until the watch brings the record's deletion, or the
    record is stored again (the next task writes it: it is served then)."""
    r = Recorder()
    intake = r.intake()
    intake.on_route("ADDED", route_obj(route_spec()))
    db = record_object("LoadBalancer", "a", "default.db", lb_spec("db", "2026-01-02T00:00:00Z"))
    db["metadata"].update(uid="u2", generation=1)
    intake.on_loadbalancer("ADDED", db)
    assert intake.withdrawn(ROUTE, "a") == set()
    intake.deleted(ROUTE, "a", "default.shop")
    intake.deleted(LOADBALANCER, "a", "default.db")
    assert intake.withdrawn(ROUTE, "a") == {"default.shop"}
    assert intake.withdrawn(LOADBALANCER, "a") == {"default.db"}
    assert intake.withdrawn(ROUTE, "b") == set()
    intake.written(ROUTE, route_obj(route_spec()))  # written again: served
    intake.on_loadbalancer("DELETED", db)  # deleted in the API
    assert intake.withdrawn(ROUTE, "a") == set()
    assert intake.withdrawn(LOADBALANCER, "a") == set()
    intake.deleted(ROUTE, "a", "default.shop")
    intake.on_route("DELETED", route_obj(route_spec()))
    assert intake.withdrawn(ROUTE, "a") == set()


def test_a_written_provisional_record_is_a_confirmation_not_a_render() -> None:
    r = Recorder()
    intake = r.intake()
    spec = parse.route_spec(route_spec())
    intake.provisional(RouteRecord("a", "default.shop", spec))
    assert r.wakes == 1
    batch = intake.take()
    assert list(batch.upserts) == [RID] and batch.upserts[RID].generation == 0
    r.model[RID] = batch.upserts[RID]  # the render took it
    intake.written(ROUTE, route_obj(route_spec()))
    assert r.wakes == 1 and r.confirmations == 1
    assert intake.take().upserts == {}
    assert intake.confirmed[RID].generation == 1
    # The spec the tenant side handed over (and keeps) is the one kept: one copy, not two.
    assert intake.confirmed[RID].spec is spec
    # The watch brings the same record again (and then our own status write): nothing new.
    intake.on_route("ADDED", route_obj(route_spec()))
    intake.on_route("MODIFIED", route_obj(route_spec()) | {"status": {"hosts": "x"}})
    assert r.wakes == 1 and r.confirmations == 1
    # A record with other content is rendered.
    intake.on_route("MODIFIED", route_obj(route_spec(node_port=30081), generation=2))
    assert r.wakes == 2
    changed = intake.take().upserts[RID]
    assert changed.generation == 2
    assert changed.spec["rules"][0]["paths"][0]["backends"][0].get("nodePort") == 30081


def test_a_confirmation_before_the_render_replaces_the_pending_upsert() -> None:
    r = Recorder()
    intake = r.intake()
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(route_spec())))
    intake.written(ROUTE, route_obj(route_spec()))
    assert r.wakes == 1
    assert intake.take().upserts[RID].generation == 1
    assert intake.confirmed == {}


def test_a_stale_delete_is_ignored() -> None:
    r = Recorder()
    intake = r.intake()
    intake.on_route("ADDED", route_obj(route_spec(), uid="new"))
    r.render(intake)
    intake.on_route("DELETED", route_obj(route_spec(), uid="old"))  # of a record replaced
    assert r.render(intake).deletes == set()
    # Recreated by the tenant side (provisional) while the old record's delete comes late.
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(route_spec())))
    intake.on_route("DELETED", route_obj(route_spec(), uid="new"))
    batch = r.render(intake)
    assert batch.deletes == set() and list(batch.upserts) == [RID]
    intake.on_route("ADDED", route_obj(route_spec(), uid="newer"))  # written: confirmed
    intake.on_route("DELETED", route_obj(route_spec(), uid="newer"))
    assert r.render(intake).deletes == {RID}


def test_a_provisional_route_outlives_older_versions_until_written_or_reverted() -> None:
    r = Recorder()
    intake = r.intake()
    old, new = route_spec(), route_spec()
    new["rules"] = [{"host": "new.example.com", "paths": []}]
    intake.on_route("ADDED", route_obj(old, uid="u"))
    r.render(intake)
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(new)))
    r.render(intake)
    # A late event of the old version (our own status write on it): the newer one stays.
    stale = route_obj(old, uid="u")
    stale["metadata"]["generation"] = 2
    intake.on_route("MODIFIED", stale)
    assert r.render(intake).upserts == {}
    # Its record's deletion in the API (a deregistered tenant) does not take it either...
    intake.on_route("DELETED", stale)
    assert r.render(intake).deletes == set()
    # ...but the tenant task stopping without writing it does: back to what the API holds
    # (nothing, here), so no route is left behind that nothing would ever delete.
    intake.revert(ROUTE, "a", "default.shop")
    assert r.render(intake).deletes == {RID}


def test_a_route_back_to_what_its_record_holds_is_confirmed_by_a_no_op_write() -> None:
    """A, B, A: B was handed over while A's write was in flight, then A again. A's second
    write changes nothing in the API, so it comes back with the generation the first one
    had: that is the confirmation all the same, or the route stayed provisional (and its
    record without a status) for good."""
    r = Recorder()
    intake = r.intake()
    a, b = route_spec(), route_spec(node_port=30081)
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(a)))
    r.render(intake)
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(b)))
    r.render(intake)
    intake.written(ROUTE, route_obj(a))  # A's write lands: older than what is served
    assert r.confirmations == 0 and r.render(intake).upserts == {}
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(a)))
    r.render(intake)
    # Our own status write on the record (the same generation, from the watch) is not the
    # confirmation: B may be being written, and would then replace A.
    intake.on_route("MODIFIED", route_obj(a) | {"status": {"hosts": "x"}})
    assert r.confirmations == 0
    intake.written(ROUTE, route_obj(a))  # written again: the same generation
    assert r.confirmations == 1 and intake.confirmed[RID].generation == 1
    assert r.render(intake).upserts == {}


def test_a_status_event_during_a_write_does_not_confirm_the_version_after_it() -> None:
    """A written; B handed over and being written; A handed over again. The watch brings our
    status write on A: confirming A there would have B, landing next, replace it."""
    r = Recorder()
    intake = r.intake()
    a, b = route_spec(), route_spec(node_port=30081)
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(a)))
    r.render(intake)
    intake.written(ROUTE, route_obj(a))
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(b)))
    r.render(intake)
    intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(a)))
    r.render(intake)
    intake.on_route("MODIFIED", route_obj(a) | {"status": {"hosts": "x"}})
    intake.written(ROUTE, route_obj(b, generation=2))  # B lands: older than what is served
    assert r.render(intake).upserts == {}
    intake.written(ROUTE, route_obj(a, generation=3))  # then A again
    assert r.render(intake).upserts == {} and intake.confirmed[RID].generation == 3


def test_a_malformed_record_is_refused_once_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = Recorder()
    intake = r.intake()
    bad = route_spec()
    bad["rules"][0]["paths"][0]["pathType"] = "Regex"
    with caplog.at_level(logging.ERROR, logger="kubelbd.dataplane.intake"):
        intake.on_route("ADDED", route_obj(bad))
        intake.on_route("MODIFIED", route_obj(bad, generation=2))
    refusals = [rec for rec in caplog.records if "refused" in rec.getMessage()]
    assert len(refusals) == 1 and RID in refusals[0].getMessage()
    assert "pathType" in refusals[0].getMessage()
    assert r.wakes == 0 and intake.take().upserts == {}
    # Mended: taken as any other.
    intake.on_route("MODIFIED", route_obj(route_spec(), generation=3))
    assert r.wakes == 1 and intake.take().upserts[RID].generation == 3


# ---- the loop -----------------------------------------------------------------------------------


class AppliedAdmin(EnvoyAdmin):
    """Envoy's admin interface as if Envoy applied everything the moment it is published."""

    def __init__(self, publisher: Publisher) -> None:
        super().__init__("127.0.0.1:9")  # never connected to
        self.publisher = publisher

    async def versions(self) -> dict[str, str]:
        return dict(self.publisher.published)

    async def rejections(self) -> dict[str, int]:
        return {}  # it never rejects anything


class AppliedScopes(DiscoveryServer):
    """kubelbd's ADS server as if Envoy applied every cluster and scope the moment it is
    served; what it serves is kept by config directory and type, for `files_mentioning`."""

    served: ClassVar[dict[tuple[Path, str], dict[str, bytes]]] = {}

    def serve(self, type_url: str, changes: Mapping[str, tuple[str, bytes] | None]) -> int:
        kept = self.served.setdefault((self.socket_path.parent, type_url), {})
        for name, resource in changes.items():
            if resource is None:
                kept.pop(name, None)
            else:
                kept[name] = resource[1]
        return super().serve(type_url, changes)

    def applied(self, generation: int | None) -> bool:
        return True


async def management() -> FakeKube:
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace("tenant-a", labels("a")))
    await mgmt.create(TENANTS, tenant_object("a") | {"status": {"nodeAddresses": ["10.0.0.1"]}})
    return mgmt


def dataplane(
    mgmt: FakeKube,
    tmp_path: Path,
    l4: L4Settings | None = None,
    https_port: int = 0,
    leadership: Leadership | None = None,
    dns: DNSSettings | None = None,
) -> DataPlane:
    publisher = Publisher(tmp_path)
    settling = Settling()
    settling.known()  # no tenant to wait for
    return DataPlane(
        mgmt,
        Settings(config_dir=str(tmp_path), shards=2, https_port=https_port),
        publisher,
        AppliedAdmin(publisher),
        StatusBoard(),
        settling,
        public_address=PUBLIC,
        l4=l4,
        leadership=leadership,
        dns=dns,
        ads=AppliedScopes(tmp_path / ADS_SOCKET),
    )


def programmed(mgmt: FakeKube) -> Any:
    return condition_of(mgmt, ROUTES, "default.shop", "tenant-a", "Programmed")


def files_mentioning(tmp_path: Path, text: str) -> list[str]:
    """The files, and the clusters (as `cds.pb`) and scopes served over ADS, that hold
    `text`."""
    scopes = AppliedScopes.served.get((tmp_path, SCOPED_ROUTE), {})
    clusters = AppliedScopes.served.get((tmp_path, CLUSTER), {}).values()
    return sorted(
        [
            str(p.relative_to(tmp_path))
            for p in tmp_path.rglob("*.pb")
            if text.encode() in p.read_bytes()  # strings are stored as they are
        ]
        + [scope_file(name) for name, body in scopes.items() if text.encode() in body]
        + (["cds.pb"] if any(text.encode() in body for body in clusters) else [])
    )


def served(tmp_path: Path, name: str) -> bytes:
    """A file's bytes, or a scope's as served over ADS."""
    scopes = AppliedScopes.served.get((tmp_path, SCOPED_ROUTE), {})
    scope = scope_name(name)
    return scopes[scope] if is_scope(name) else (tmp_path / name).read_bytes()


async def test_a_route_record_becomes_envoy_files_then_status_and_an_ingress_address(
    tmp_path: Path,
) -> None:
    mgmt = await management()
    await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", route_spec()))
    dp = dataplane(mgmt, tmp_path)
    async with running(dp.run):
        await until(lambda: programmed(mgmt) == "True", "Programmed")
        route = mgmt.stored(ROUTES, "default.shop", "tenant-a")
        assert route is not None
        served = condition(route, "Programmed")
        assert served["reason"] == "Programmed" and PUBLIC in served["message"]
        assert condition(route, "Accepted")["status"] == "True"
        assert route["status"]["hosts"] == "shop.example.com"
        assert route["status"]["observedGeneration"] == route["metadata"]["generation"] == 1
        # An exact host not redirected: its own scope, no shard table.
        assert files_mentioning(tmp_path, "shop.example.com") == ["scopes/host/shop.example.com"]
        assert "cds.pb" in files_mentioning(tmp_path, "30080")
        assert "cds.pb" in files_mentioning(tmp_path, "10.0.0.1")
        # The tenant side's part: the Ingress's address, on the board.
        with anyio.fail_after(DEADLINE):
            await dp.board.wait("a")
        [status] = dp.board.take("a")
        address = (("ip", PUBLIC),)
        assert status == SourceStatus("Ingress", "default", "shop", "ingress-uid", address, (), 1)
        # Written once: the status write coming back through the watch is not a change.
        writes = [c for c in mgmt.calls if c.plural == "routes" and c.subresource == "status"]
        assert len(writes) == 1
        # The write seen back through the watch: its conditions kept once, not twice.
        written = dp.status.written(ROUTE, RID)
        assert written is not None and [c[0] for c in written][:1] == ["Accepted"]
        await until(lambda: dp.intake.conditions.get(RID) == written, "the write seen back")
        assert dp.intake.conditions[RID] is written

        # The record goes: so does its host.
        await mgmt.delete(ROUTES, "default.shop", "tenant-a")
        await until(lambda: not files_mentioning(tmp_path, "shop.example.com"), "host removed")


async def test_a_provisional_route_is_served_before_its_record_exists(tmp_path: Path) -> None:
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path)
    async with running(dp.run):
        await dp.first_publish.wait()
        spec = parse.route_spec(route_spec(host="early.example.com"))
        dp.intake.provisional(RouteRecord("a", "default.shop", spec))
        await until(lambda: files_mentioning(tmp_path, "early.example.com"), "served")
        # Its status waits for the record: nothing to write it to yet.
        assert mgmt.stored(ROUTES, "default.shop", "tenant-a") is None
        written = await mgmt.create(
            ROUTES, record_object("Route", "a", "default.shop", route_spec("early.example.com"))
        )
        dp.intake.written(ROUTE, written)
        await until(lambda: programmed(mgmt) == "True", "Programmed")


def lb_spec(name: str, created: str) -> Any:
    source = {"kind": "Service", "namespace": "default", "name": name, "uid": f"{name}-uid"}
    return {
        "source": source | {"creationTimestamp": created},
        "ports": [{"port": 5432, "protocol": "TCP", "nodePort": 30432}],
        "sessionAffinity": "None",
        "proxyProtocol": "",
    }


async def test_a_load_balancer_allocation_is_recorded_and_freed(tmp_path: Path) -> None:
    mgmt = await management()
    db = lb_spec("db", "2026-01-02T00:00:00Z")
    await mgmt.create(LOADBALANCERS, record_object("LoadBalancer", "a", "default.db", db))

    def stored(name: str = "default.db") -> Obj:
        return mgmt.stored(LOADBALANCERS, name, "tenant-a") or {}

    dp = dataplane(mgmt, tmp_path, L4Settings(mode="pool", pool="192.0.2.0/29"))
    async with running(dp.run):
        await until(lambda: condition(stored(), "Programmed").get("status") == "True", "served")
        status = stored()["status"]
        assert status["address"] == "192.0.2.1"
        assert status["ingress"] == [{"ip": "192.0.2.1"}]
        assert status["portsSummary"] == "5432/TCP"
        assert "lds.pb" in files_mentioning(tmp_path, "192.0.2.1")
        with anyio.fail_after(DEADLINE):
            await dp.board.wait("a")
        [svc] = dp.board.take("a")
        assert (svc.kind, svc.name, svc.addresses) == ("Service", "db", (("ip", "192.0.2.1"),))

    # Restarted with a one-address pool, which an older load balancer gets (older: stored
    # first by the management cluster, whatever the tenant's timestamps say): the
    # allocation db holds is not in the pool, and there is none for it, so it is freed.
    old = lb_spec("old", "2026-01-03T00:00:00Z")
    await mgmt.create(LOADBALANCERS, record_object("LoadBalancer", "a", "default.old", old))
    mgmt.set_created(LOADBALANCERS, "default.old", "tenant-a", "2025-01-01T00:00:00Z")
    dp = dataplane(mgmt, tmp_path, L4Settings(mode="pool", pool="198.51.100.7/32"))
    async with running(dp.run):
        await until(lambda: condition(stored(), "Programmed").get("reason") == "PoolExhausted")
        status = stored()["status"]
        assert "address" not in status and status["portsSummary"] == ""
        assert status["ingress"] == []
        assert stored("default.old")["status"]["address"] == "198.51.100.7"
        assert not files_mentioning(tmp_path, "192.0.2.1")


class DeletedWhileWriting(FakeKube):
    """The record's DELETED event reaches the LoadBalancers while its allocation is written:
    the write awaits, and an informer callback runs meanwhile (the race a CI run hit)."""

    def __init__(self) -> None:
        super().__init__("mgmt")
        self.l4: LoadBalancers | None = None

    async def apply(self, res: Any, obj: Obj, *args: Any, **kwargs: Any) -> Obj:
        written = await super().apply(res, obj, *args, **kwargs)
        if res == LOADBALANCERS and self.l4 is not None:
            self.l4.delete("a", obj["metadata"]["name"])
        return written


@pytest.mark.parametrize("mode", ["pool", "service"])
async def test_a_load_balancer_deleted_while_its_allocation_is_written(mode: str) -> None:
    mgmt = DeletedWhileWriting()
    await mgmt.create(NAMESPACES, namespace("tenant-a", labels("a")))
    l4 = mgmt.l4 = LoadBalancers(mgmt, L4Settings(mode=mode, pool="192.0.2.0/29"), lambda: None)
    obj = await mgmt.create(
        LOADBALANCERS, record_object("LoadBalancer", "a", "default.db", lb_spec("db", "x"))
    )
    l4.upsert(obj)
    listeners, clusters = await l4.reconcile({})
    assert (listeners, clusters) == ([], [])
    assert l4.placements == {} and l4.dirty
    assert not [c for c in mgmt.calls if c.plural == SERVICES.plural]
    # The next pass has nothing left to do.
    assert await l4.reconcile({}) == ([], [])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(name: str, data: dict[str, str]) -> Obj:
    """A certificate's copy in the management cluster, as the tenant side writes it."""
    meta = {"name": name, "namespace": "tenant-a", "labels": {TLS_LABEL: "true", **labels("a")}}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}


async def test_no_private_key_is_on_the_volume_and_what_a_crash_left_goes(
    tmp_path: Path,
) -> None:
    """Certificates go to Envoy over kubelbd's secret server: the key of a Secret whose copy
    is named as long as a name may be is served, never written to the config volume; the key
    file an older kubelbd left (one SDS file per certificate) and a temp file of a write it
    did not finish are removed at start; a Secret turned bad is no longer served at all."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    left = secrets / "a.default.gone-tls.json"
    left.write_bytes(b'{"version_info":"x","resources":[]}')
    crashed = tmp_path / f"{TEMP_PREFIX}lds.pb.x1"
    crashed.write_bytes(b"half a file")
    mgmt = await management()
    name = "s" * (MAX_NAME - len("default."))  # its copy's name is as long as a name may be
    tls_entry = {"hosts": ["shop.example.com"], "secretName": name, "source": "tenant"}
    spec = route_spec() | {"tls": [tls_entry]}
    await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", spec))
    host = "shop.example.com"
    pair = certs.issue(certs.new_ca("ca"), host, dns=(host,), server=True)
    good = {"tls.crt": b64(pair.cert_pem()), "tls.key": b64(pair.key_pem())}
    secret = await mgmt.create(SECRETS, tls_secret(copy_name("default", name), good))
    sid = secret_id("a", copy_name("default", name))
    dp = dataplane(mgmt, tmp_path, https_port=8443)

    def certificate_ready() -> Any:
        return condition_of(mgmt, ROUTES, "default.shop", "tenant-a", "CertificateReady", "reason")

    def on_the_volume(data: bytes) -> list[Path]:
        return [p for p in tmp_path.rglob("*") if p.is_file() and data in p.read_bytes()]

    async with running(dp.run):
        await until(lambda: sid in dp.ads.names(), "the certificate served")
        assert not left.exists() and not crashed.exists()
        key_body = pair.key_pem().split(b"\n")[1]
        assert on_the_volume(key_body) == []
        # The Secret's content turns to something that does not even decode: the certificate
        # is no longer served (not the one it held before either), the Route says why.
        secret["data"] = {"tls.crt": "not base64!", "tls.key": ""}
        await mgmt.replace(SECRETS, secret)
        await until(lambda: certificate_ready() == "InvalidCertificate", "CertificateReady")
        await until(lambda: sid not in dp.ads.names(), "the certificate withdrawn")
        await until(lambda: programmed(mgmt) == "True", "plain HTTP goes on")


class RejectingAdmin(AppliedAdmin):
    """Envoy as if it had rejected the listener file: every other file applied."""

    async def versions(self) -> dict[str, str]:
        out = dict(self.publisher.published)
        out["lds.pb"] = "rejected-long-ago"
        return out


async def test_a_file_envoy_rejected_holds_up_no_acme_answer(tmp_path: Path) -> None:
    """Envoy should never be handed a file it rejects; if it ever is, the ACME answers (in
    the front table) still count as served once that table is applied, while statuses wait
    for everything (and say Pending after the timeout)."""
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path)
    dp.admin = RejectingAdmin(dp.publisher)
    async with running(dp.run):
        await until(lambda: scope_file(FALLBACK) in dp.publisher.scopes_published, "the front")
        assert await dp.file_applied(scope_file(FALLBACK), 1.0)
        assert not await dp.admin.wait_applied(dp.publisher.published, 0.05)
        assert not await dp.file_applied("rds/never-published.pb", 0.05)


def test_a_records_status_is_remembered_by_a_digest_not_whole() -> None:
    """The status writer keeps, for every record, what it last wrote, to skip an unchanged
    status: a 16-byte digest of it, the same for the same status, different for another."""
    status: dict[str, Any] = {"observedGeneration": 3, "conditions": [{"type": "Programmed"}]}
    same = {"observedGeneration": 3, "conditions": [{"type": "Programmed"}]}
    assert fingerprint(status) == fingerprint(same)
    assert len(fingerprint(status)) == 16 < len(repr(status))
    for other in ({**status, "observedGeneration": 4}, {**status, "conditions": []}, {}):
        assert fingerprint(other) != fingerprint(status)
