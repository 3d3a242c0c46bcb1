"""kubelbd.tenant.registry.Registry over a FakeKube: a registration Secret starts its tenant's
task (a stub here), a new kubeconfig restarts it, deleting the Secret removes everything
kubelbd made for the tenant before the finalizer goes, and a bad tenant name gets an Event.

The registry makes its TenantSync objects and, to clean up, its own tenant client: the tests
give it a stub class (`sync`) and a Connector (`connect`)."""

from __future__ import annotations

import base64
import gc
import weakref
from typing import Any, cast

import anyio
import pytest

from kubelbd import collector
from kubelbd.hub import Settling, StatusBoard
from kubelbd.objects import EVENTS, INGRESS_CLASSES, NAMESPACES, SECRETS, SERVICES, Obj
from kubelbd.records.names import CLEANUP_FINALIZER, ROUTES, TENANT_LABEL, TENANTS, labels
from kubelbd.records.objects import record_object, tenant_object
from kubelbd.sources import twins
from kubelbd.sources.ingress import ingress_class
from kubelbd.tenant.registry import Registry
from kubelbd.tenant.sync import TenantSettings, TenantSync

from .fakekube import Connector, FakeKube, kubeconfig
from .orchestration import RecordingSink, namespace, running, service, until

NS = "kubelb"


class StubSync:
    """Stands in for TenantSync: runs until cancelled, and says so. Refers to itself, as a
    TenantSync does through its informers' callbacks."""

    def __init__(self, stubs: Stubs, name: str, kubeconfig: bytes) -> None:
        self.stubs = stubs
        self.name = name
        self.kubeconfig = kubeconfig
        self.me = self
        stubs.made.append(weakref.ref(self))

    def set_record(self, tenant: Obj | None) -> None:
        spec = (tenant or {}).get("spec")
        self.stubs.policies.append((self.name, spec))

    def node_addresses_taken(self, taken: dict[str, str]) -> None:
        self.stubs.taken[self.name] = taken

    async def run(self) -> None:
        self.stubs.started.append((self.name, self.kubeconfig))
        try:
            await anyio.sleep_forever()
        finally:
            self.stubs.stopped.append(self.name)


class Stubs:
    """The TenantSync class, as the registry sees it: makes StubSyncs."""

    def __init__(self) -> None:
        self.started: list[tuple[str, bytes]] = []
        self.stopped: list[str] = []
        self.policies: list[tuple[str, Any]] = []  # (tenant, Tenant spec) as handed over
        self.taken: dict[str, dict[str, str]] = {}  # tenant -> its node addresses held by others
        self.made: list[weakref.ref[StubSync]] = []

    def __call__(self, name: str, kubeconfig: bytes, *rest: Any) -> StubSync:
        return StubSync(self, name, kubeconfig)


def registration(name: str, tenant: str, config: bytes) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": {TENANT_LABEL: tenant}},
        "data": {"kubeconfig": base64.b64encode(config).decode()},
    }


def route_spec() -> Any:
    source = {"kind": "Ingress", "namespace": "default", "name": "shop", "uid": "u"}
    return {"source": source | {"creationTimestamp": "2026-01-01T00:00:00Z"}, "rules": []}


class Setup:
    def __init__(self) -> None:
        self.mgmt = FakeKube("mgmt")
        self.tenant = FakeKube("a")
        self.stubs = Stubs()
        self.settling = Settling()
        self.connector = Connector(self.tenant)
        self.registry = Registry(
            self.mgmt, NS, TenantSettings(), RecordingSink(), StatusBoard(), self.settling,
            connect=self.connector, sync=cast(type[TenantSync], self.stubs),
        )  # fmt: skip

    def finalizers(self, secret: str) -> list[str]:
        obj = self.mgmt.stored(SECRETS, secret, NS) or {"metadata": {}}
        return list(obj["metadata"].get("finalizers") or [])


@pytest.fixture
async def setup() -> Setup:
    s = Setup()
    await s.mgmt.create(NAMESPACES, namespace(NS))
    await s.tenant.create(NAMESPACES, namespace("default"))
    return s


async def test_a_registration_runs_its_tenant_until_deleted_then_cleans_up(setup: Setup) -> None:
    mgmt, tenant, stubs = setup.mgmt, setup.tenant, setup.stubs
    config = kubeconfig(tenant)
    await mgmt.create(SECRETS, registration("tenant-a", "a", config))
    # What kubelbd made for the tenant: its namespace and records, a twin and an IngressClass.
    await mgmt.create(NAMESPACES, namespace("tenant-a", labels("a")))
    await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", route_spec()))
    web = await tenant.create(SERVICES, service("web"))
    twin = twins.twin(web)
    twin["spec"]["ports"][0]["nodePort"] = 30080
    await tenant.create(SERVICES, twin)
    await tenant.create(INGRESS_CLASSES, ingress_class())
    # A tenant namespace whose Secret went while kubelbd was away.
    await mgmt.create(NAMESPACES, namespace("tenant-gone", labels("gone")))

    async with running(setup.registry.run):
        await until(lambda: stubs.started == [("a", config)], "tenant a started")
        await until(lambda: setup.finalizers("tenant-a") == [CLEANUP_FINALIZER], "finalizer")
        await until(lambda: mgmt.stored(NAMESPACES, "tenant-gone") is None, "orphan removed")
        assert setup.settling.registrations_known
        assert mgmt.stored(NAMESPACES, "tenant-a") is not None

        # A new kubeconfig: the tenant's task restarts with it.
        moved = config.replace(b"token: fake", b"token: rotated")
        assert moved != config
        data = {"data": {"kubeconfig": base64.b64encode(moved).decode()}}
        await mgmt.patch(SECRETS, "tenant-a", data, NS)
        await until(lambda: stubs.started[-1:] == [("a", moved)], "restarted")
        assert stubs.stopped == ["a"]

        # Deleted: held by the finalizer until everything made for the tenant is gone.
        await mgmt.delete(SECRETS, "tenant-a", NS)
        await until(lambda: mgmt.stored(SECRETS, "tenant-a", NS) is None, "the Secret gone")
        assert stubs.stopped == ["a", "a"] and len(stubs.started) == 2
        assert mgmt.stored(NAMESPACES, "tenant-a") is None
        assert mgmt.stored(ROUTES, "default.shop", "tenant-a") is None
        assert tenant.stored(SERVICES, twin["metadata"]["name"], "default") is None
        assert tenant.stored(INGRESS_CLASSES, "kubelb") is None
        assert tenant.stored(SERVICES, "web", "default") is not None  # the tenant's own
        [client] = setup.connector.clients  # the one made to clean up, closed after
        assert client.closed
    # The finalizer went last, after the cleanup.
    order = [(c.type, c.key[1], c.key[3]) for c in mgmt.changes()]
    assert order.index(("DELETED", "namespaces", "tenant-a")) < order.index(
        ("DELETED", "secrets", "tenant-a")
    )


async def test_an_invalid_tenant_name_gets_an_event_and_nothing_else(setup: Setup) -> None:
    mgmt, stubs = setup.mgmt, setup.stubs
    await mgmt.create(SECRETS, registration("bad", "Not_A_Label", kubeconfig(setup.tenant)))
    await mgmt.create(SECRETS, registration("good", "b", kubeconfig(setup.tenant)))

    async def events() -> list[Obj]:
        items, _ = await mgmt.list(EVENTS, NS, fieldSelector="involvedObject.name=bad")
        return items

    async with running(setup.registry.run):
        await until(lambda: [s[0] for s in stubs.started] == ["b"], "the good one started")
        await until(events, "an Event on the Secret")
        [event] = await events()
        assert (event["type"], event["reason"]) == ("Warning", "InvalidTenant")
        assert "Not_A_Label" in event["message"]
        await until(lambda: setup.finalizers("good") == [CLEANUP_FINALIZER], "finalizer")
        assert setup.finalizers("bad") == []
        assert mgmt.stored(NAMESPACES, "tenant-Not_A_Label") is None
        # Deleted: nothing to clean up, nothing held.
        await mgmt.delete(SECRETS, "bad", NS)
        assert mgmt.stored(SECRETS, "bad", NS) is None


async def test_the_operators_tenant_record_is_the_policy_handed_to_the_task(setup: Setup) -> None:
    """An operator may make the Tenant before the Secret: its task starts with that policy,
    gets each change, and a Tenant of that name anywhere but tenant-<name> is ignored."""
    mgmt, stubs = setup.mgmt, setup.stubs
    await mgmt.create(NAMESPACES, namespace("tenant-a"))
    await mgmt.create(NAMESPACES, namespace("elsewhere"))
    policy = {"allowedDomains": ["*.a.example.com"]}
    await mgmt.create(TENANTS, tenant_object("a", policy))
    await mgmt.create(SECRETS, registration("tenant-a", "a", kubeconfig(setup.tenant)))
    async with running(setup.registry.run):
        await until(lambda: stubs.started != [], "tenant a started")
        assert stubs.policies == [("a", policy)]  # before its task ran
        rogue = tenant_object("a", {"allowedDomains": ["**"]})
        rogue["metadata"]["namespace"] = "elsewhere"
        await mgmt.create(TENANTS, rogue)
        wider = {"allowedDomains": ["**.example.com"]}
        await mgmt.patch(TENANTS, "a", {"spec": wider}, "tenant-a")
        await until(lambda: stubs.policies[-1] == ("a", wider), "the change handed over")
        assert ("a", {"allowedDomains": ["**"]}) not in stubs.policies


async def test_each_task_learns_which_of_its_node_addresses_another_tenant_holds(
    setup: Setup,
) -> None:
    mgmt, stubs = setup.mgmt, setup.stubs
    for tenant, since in (
        ("a", "2026-01-02T00:00:00.000000Z"),
        ("b", "2026-01-01T00:00:00.000000Z"),
    ):
        await mgmt.create(NAMESPACES, namespace(f"tenant-{tenant}"))
        record = tenant_object(tenant) | {"status": {
            "nodeAddresses": ["10.0.0.1", f"10.0.0.{2 if tenant == 'a' else 3}"],
            "nodeAddressClaims": [{"address": "10.0.0.1", "since": since}],
        }}  # fmt: skip
        await mgmt.create(TENANTS, record)
        await mgmt.create(
            SECRETS, registration(f"tenant-{tenant}", tenant, kubeconfig(setup.tenant))
        )
    async with running(setup.registry.run):
        await until(lambda: len(stubs.started) == 2, "both started")
        await until(lambda: stubs.taken.get("a") == {"10.0.0.1": "b"}, "a told")
        assert stubs.taken.get("b") == {}


async def test_a_stopped_task_frozen_at_start_up_is_collected(setup: Setup) -> None:
    """kubelbd freezes what start-up built (collector.py): a tenant task it stops (a new
    kubeconfig here) is collected all the same, though it is a cycle."""
    mgmt, stubs = setup.mgmt, setup.stubs
    config = kubeconfig(setup.tenant)
    await mgmt.create(SECRETS, registration("tenant-a", "a", config))
    thresholds, published = gc.get_threshold(), anyio.Event()
    try:
        async with running(setup.registry.run) as tg:
            await until(lambda: len(stubs.made) == 1 and stubs.started, "tenant a started")
            tg.start_soon(collector.settle, published, 60.0, 0.05)
            published.set()
            await until(lambda: gc.get_freeze_count() > 0, "start-up frozen")
            rotated = {"data": {"kubeconfig": base64.b64encode(config + b"\n").decode()}}
            await mgmt.patch(SECRETS, "tenant-a", rotated, NS)
            await until(lambda: len(stubs.started) == 2, "restarted")
            await until(lambda: stubs.made[0]() is None, "the stopped task collected")
            assert stubs.made[1]() is not None
    finally:
        collector.collect_released()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
