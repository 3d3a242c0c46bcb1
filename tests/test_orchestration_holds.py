"""Make before break (kubelbd.dataplane.holds): a served route switched to a backend Envoy has
no cluster for keeps sending where it did until the new backend answers through its NodePort,
while the new cluster is already in Envoy's file; a backend that never answers holds the change
a bounded time. The "node" is a loopback server the test controls, as the fleet's kube-proxy
behaves: it accepts and closes a connection until the NodePort has an endpoint."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from kubelbd.dataplane import holds
from kubelbd.dataplane.plane import DataPlane, dialled
from kubelbd.ir.http import Cluster, Model
from kubelbd.objects import NAMESPACES, Obj
from kubelbd.records import parse
from kubelbd.records.names import ROUTES, TENANTS, labels
from kubelbd.records.objects import record_object, tenant_object
from kubelbd.records.types import RouteRecord, TenantRecord

from .fakekube import FakeKube
from .orchestration import namespace, running, until
from .test_orchestration_dataplane import (
    AppliedAdmin,
    dataplane,
    files_mentioning,
    programmed,
    served,
)

NODE = "127.0.0.1"


class NoneWarming(AppliedAdmin):
    """Envoy as if it applied and warmed every cluster the moment it is published."""

    async def warming(self) -> set[str]:
        return set()


class Node:
    """One NodePort of a node: accepts and closes each connection, until it `serves`."""

    def __init__(self) -> None:
        self.serves = False
        self.port = 0

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            if self.serves:
                await stream.receive()
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    @asynccontextmanager
    async def listening(self) -> AsyncIterator[Node]:
        listener = await anyio.create_tcp_listener(local_host=NODE, local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._handle)
            yield self
            tg.cancel_scope.cancel()


def spec(service: str, node_port: int) -> Any:
    return {
        "source": {"kind": "Ingress", "namespace": "default", "name": "shop", "uid": "u",
                   "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "rules": [{"host": "shop.example.com", "paths": [{"path": "/", "pathType": "Prefix",
                   "backends": [{"service": service, "port": "80", "nodePort": node_port}]}]}],
    }  # fmt: skip


def refused_port() -> int:
    """A loopback port nothing listens on (the old backend: never probed)."""
    with socket.socket() as s:
        s.bind((NODE, 0))
        return int(s.getsockname()[1])


async def management() -> FakeKube:
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace("tenant-a", labels("a")))
    tenant = tenant_object("a") | {"status": {"nodeAddresses": [NODE]}}
    await mgmt.create(TENANTS, tenant)
    return mgmt


def route_table(tmp_path: Path) -> bytes:
    """The route tables that name the host (its scope's; a shard's and a front table's)."""
    names = files_mentioning(tmp_path, "shop.example.com")
    tables = [p for p in names if p.startswith(("rds/", "scopes/"))]
    return b"".join(served(tmp_path, t) for t in tables)


async def switch(mgmt: FakeKube, tmp_path: Path, node: Node) -> tuple[DataPlane, Obj]:
    """A data plane serving shop.example.com by Service `old`; then the route's new version,
    sending to Service `new` at the node's port, given by the tenant side."""
    old = record_object("Route", "a", "default.shop", spec("old", refused_port()))
    await mgmt.create(ROUTES, old)
    dp = dataplane(mgmt, tmp_path)
    dp.admin = NoneWarming(dp.publisher)
    return dp, record_object("Route", "a", "default.shop", spec("new", node.port))


async def switched_once_served(dp: DataPlane, mgmt: FakeKube, new: Obj) -> None:
    """Once the old backend serves, the tenant side gives the route's new version."""
    await until(lambda: programmed(mgmt) == "True", "served by the old backend")
    dp.intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(new["spec"])))


async def test_a_switch_to_a_new_backend_waits_until_it_answers(tmp_path: Path) -> None:
    mgmt = await management()
    async with Node().listening() as node:
        dp, new = await switch(mgmt, tmp_path, node)
        async with running(dp.run):
            await switched_once_served(dp, mgmt, new)
            # The new cluster goes to Envoy; the route still sends to the old one.
            await until(lambda: "cds.pb" in files_mentioning(tmp_path, "/new/"), "new cluster")
            assert b"/old/" in route_table(tmp_path) and b"/new/" not in route_table(tmp_path)
            assert dp.holds.record("a/default.shop") is not None
            node.serves = True
            await until(lambda: b"/new/" in route_table(tmp_path), "switched once it answers")
            assert b"/old/" not in route_table(tmp_path)
            assert dp.holds.record("a/default.shop") is None


async def test_a_backend_that_never_answers_holds_the_change_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(holds, "TIMEOUT", 0.5)
    mgmt = await management()
    async with Node().listening() as node:
        dp, new = await switch(mgmt, tmp_path, node)
        async with running(dp.run):
            await switched_once_served(dp, mgmt, new)
            await until(lambda: b"/new/" in route_table(tmp_path), "applied after the timeout")
    assert "a/default.shop: backend a/default/new" in caplog.text


async def test_a_new_route_and_a_known_backend_are_never_held(tmp_path: Path) -> None:
    mgmt = await management()
    async with Node().listening() as node:  # never serves
        dp, new = await switch(mgmt, tmp_path, node)
        async with running(dp.run):
            await until(lambda: programmed(mgmt) == "True", "served by the old backend")
            other = spec("new", node.port)
            other["rules"][0]["host"] = "other.example.com"
            dp.intake.provisional(RouteRecord("a", "default.other", parse.route_spec(other)))
            await until(lambda: files_mentioning(tmp_path, "other.example.com"), "new route served")
            # Its backend is Envoy's now: the switch to it is not held.
            dp.intake.provisional(RouteRecord("a", "default.shop", parse.route_spec(new["spec"])))

            def switched() -> bool:
                assert dp.holds.record("a/default.shop") is None, "held"
                return b"/new/" in route_table(tmp_path)

            await until(switched, "switched, never held")


def test_the_services_envoy_dials_are_read_from_its_cluster_names() -> None:
    names = ["a/ns/web/30080", "a/ns/web/30080/h2c", "gw/a/ns/db/31000/tcp", "b/x/api/30090"]
    assert dialled(names) == {"a": {("ns", "web"), ("ns", "db")}, "b": {("x", "api")}}


async def test_probes_in_flight_are_bounded_across_every_hold() -> None:
    """A tenant switching many routes to backends that never answer has kubelbd probe at
    most PROBES at once, however many changes are held."""
    model = Model()
    old = [
        RouteRecord("a", f"default.r{i}", parse.route_spec(spec("old", 30000))) for i in range(40)
    ]
    model.apply(old, (), [TenantRecord("a", (NODE,))])
    in_flight = 0
    stuck = anyio.Event()  # never set: a probe that never finishes

    async def never(cluster: Cluster) -> bool:
        nonlocal in_flight
        in_flight += 1
        await stuck.wait()
        return False

    async def has(seq: int, clusters: set[str]) -> None:
        return None

    held = holds.Holds(never, has, lambda: None)
    new = {
        r.id: RouteRecord("a", r.name, parse.route_spec(spec(f"new{i}", 31000 + i)))
        for i, r in enumerate(old)
    }
    async with anyio.create_task_group() as tg:
        held.start(tg)
        applied, _ = held.take(model, new, ())
        assert applied == {} and all(held.record(rid) for rid in new)
        await anyio.wait_all_tasks_blocked()  # every hold's task is in its probe, or waits for one
        assert in_flight == holds.PROBES
        tg.cancel_scope.cancel()
