"""Tenant registration: Secrets in, loops and records out; bad kubeconfigs stay contained."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import anyio
import pytest
import yaml
from kubefleet import certs
from kubefleet.lb import tenant_policy

from kubelbd.kube import ApiError, Kube
from kubelbd.objects import INGRESS_CLASSES, INGRESSES, NAMESPACES, SECRETS, SERVICES, Obj, Resource
from kubelbd.records.names import TENANTS
from kubelbd.records.objects import tenant_object
from kubelbd.tenant.registry import kubeconfig_of

from .support import (
    FleetHandle,
    backend,
    conditions,
    create_namespace,
    delete_namespace,
    deploy_app,
    eventually,
    ingress_obj,
    lb_get,
    rule,
    start_kubelbd,
    stop_kubelbd,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e

NAMESPACE = "kubelb"


def secret(name: str, tenant: str, kubeconfig: bytes) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"kubelb.io/tenant": tenant}},
        "data": {"kubeconfig": base64.b64encode(kubeconfig).decode()},
    }


async def tenant_condition(mgmt: Kube, tenant: str, type_: str) -> Obj:
    obj = await mgmt.get_or_none(TENANTS, tenant, f"tenant-{tenant}") or {}
    conds = conditions(obj)
    return conds.get(type_, {})


@pytest.fixture
async def alpha_route(fleet: FleetHandle) -> AsyncIterator[str]:
    """A host served from alpha, to prove other tenants keep working."""
    kube = fleet.kube["alpha"]
    ns = unique("reg")
    await create_namespace(kube, ns)
    await deploy_app(kube, ns, "keep")
    h = f"{unique('keep')}.example.test"
    await kube.create(
        INGRESSES, ingress_obj("keep", [rule(h, ("/", "Prefix", backend("keep")))]), ns
    )
    await until_served(fleet.layout, h)
    yield h
    await delete_namespace(kube, ns)


def unauthorized_kubeconfig(fleet: FleetHandle) -> bytes:
    """alpha's real server and CA, but a client certificate from a CA alpha does not trust."""
    real = yaml.safe_load(fleet.layout.kubeconfig("alpha").read_text())
    rogue_ca = certs.new_ca("rogue")
    client = certs.issue(rogue_ca, "intruder", ("system:masters",))
    doc = yaml.safe_load(
        certs.kubeconfig("alpha", real["clusters"][0]["cluster"]["server"], rogue_ca, client, "x")
    )
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = real["clusters"][0]["cluster"][
        "certificate-authority-data"
    ]
    return yaml.safe_dump(doc).encode()


async def test_bad_kubeconfigs_are_reported_and_contained(
    fleet: FleetHandle, alpha_route: str
) -> None:
    mgmt, lay = fleet.kube["mgmt"], fleet.layout
    tenant = unique("broken")
    await mgmt.create(SECRETS, secret(tenant, tenant, b"this: [is not: a kubeconfig"), NAMESPACE)
    try:
        # Adding the Secret makes the tenant's namespace and record, with the cause.
        async def reason_is(want: str) -> bool:
            cond = await tenant_condition(mgmt, tenant, "Connected")
            assert cond.get("status") == "False" and cond.get("reason") == want, cond
            return True

        await eventually(lambda: reason_is("InvalidKubeconfig"), what="InvalidKubeconfig")

        # Changing the Secret restarts the tenant's loops with the new kubeconfig.
        unreachable = yaml.safe_load(lay.kubeconfig("alpha").read_text())
        unreachable["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
        await mgmt.patch(
            SECRETS,
            tenant,
            {
                "data": {
                    "kubeconfig": base64.b64encode(yaml.safe_dump(unreachable).encode()).decode()
                }
            },
            NAMESPACE,
        )
        await eventually(lambda: reason_is("Unreachable"), what="Unreachable")

        await mgmt.patch(
            SECRETS,
            tenant,
            {"data": {"kubeconfig": base64.b64encode(unauthorized_kubeconfig(fleet)).decode()}},
            NAMESPACE,
        )
        await eventually(lambda: reason_is("Unauthorized"), what="Unauthorized")
        obj = await mgmt.get(TENANTS, tenant, f"tenant-{tenant}")
        assert "401" in obj["status"]["lastError"] or "Unauthorized" in obj["status"]["lastError"]

        # Meanwhile every other tenant is served as before.
        for _ in range(5):
            status, _ = await lb_get(lay, alpha_route)
            assert status == 200
    finally:
        await mgmt.delete(SECRETS, tenant, NAMESPACE)

    # Deleting the Secret removes everything made for the tenant, then the Secret itself.
    async def gone() -> bool:
        assert await mgmt.get_or_none(SECRETS, tenant, NAMESPACE) is None
        ns = await mgmt.get_or_none(NAMESPACES, f"tenant-{tenant}")
        assert ns is None or ns["metadata"].get("deletionTimestamp"), ns
        return True

    await eventually(gone, timeout=60, what="the tenant's Secret and namespace to go")


async def test_deregistering_and_registering_a_tenant(fleet: FleetHandle) -> None:
    beta, mgmt, lay = fleet.kube["beta"], fleet.kube["mgmt"], fleet.layout
    ns = unique("rereg")
    # What the fleet registered beta with (`kubelbd register`: a ServiceAccount token), to
    # register it again with.
    original = await mgmt.get(SECRETS, "beta", NAMESPACE)
    await create_namespace(beta, ns)
    try:
        await deploy_app(beta, ns, "app")
        h = f"{unique('beta')}.example.test"
        await beta.create(
            INGRESSES, ingress_obj("app", [rule(h, ("/", "Prefix", backend("app")))]), ns
        )
        await until_served(lay, h)

        # Deregistered while kubelbd is down: the finalizer keeps the Secret (and its
        # kubeconfig) until kubelbd is back to clean up.
        await stop_kubelbd()
        try:
            await mgmt.delete(SECRETS, "beta", NAMESPACE)
            held = await mgmt.get(SECRETS, "beta", NAMESPACE)
            assert held["metadata"].get("deletionTimestamp"), held["metadata"]
            assert held["metadata"]["finalizers"] == ["kubelb.io/cleanup"]
        finally:
            await start_kubelbd()
        await until_served(lay, h, status=404)

        async def cleaned() -> bool:
            assert await mgmt.get_or_none(SECRETS, "beta", NAMESPACE) is None
            assert await beta.get_or_none(SERVICES, "kubelb-app", ns) is None
            assert await beta.get_or_none(INGRESS_CLASSES, "kubelb") is None
            ns_obj = await mgmt.get_or_none(NAMESPACES, "tenant-beta")
            assert ns_obj is None or ns_obj["metadata"].get("deletionTimestamp")
            return True

        await eventually(cleaned, timeout=60, what="beta's objects to be removed")
    finally:
        data = (await mgmt.get_or_none(SECRETS, "beta", NAMESPACE)) is None
        if data:
            kubeconfig = kubeconfig_of(original)
            await eventually(
                lambda: _recreate(
                    mgmt, secret("beta", "beta", kubeconfig), tenant_policy(lay.cluster("beta"))
                ),
                timeout=60,
                what="re-registering beta",
            )

    # Registered again: the same Ingress is served again, with a fresh IngressClass.
    await until_served(lay, h, timeout=60)
    assert (await beta.get(INGRESS_CLASSES, "kubelb"))["spec"]["controller"] == (
        "kubelb.io/ingress-controller"
    )
    assert original["metadata"]["finalizers"] == ["kubelb.io/cleanup"]

    async def synced() -> bool:
        cond = await tenant_condition(mgmt, "beta", "Synced")
        assert cond.get("status") == "True", cond
        return True

    await eventually(synced, timeout=60, what="beta synced again")
    await delete_namespace(beta, ns)


async def _recreate(mgmt: Kube, obj: Obj, policy: Obj) -> bool:
    # The old tenant namespace must be fully gone before the new one can be made.
    ns = await mgmt.get_or_none(NAMESPACES, "tenant-beta")
    assert ns is None, "tenant-beta still terminating"
    # As an operator registers a tenant: its policy first (it went with its namespace).
    await mgmt.create(NAMESPACES, {"metadata": {"name": "tenant-beta"}})
    await mgmt.create(TENANTS, tenant_object("beta", policy), "tenant-beta")
    await mgmt.create(SECRETS, obj, NAMESPACE)
    return True


async def test_default_ingress_class_annotation_is_honoured(fleet: FleetHandle) -> None:
    kube, lay = fleet.kube["alpha"], fleet.layout
    ns = unique("dflt")
    await create_namespace(kube, ns)
    annotation = "ingressclass.kubernetes.io/is-default-class"
    try:
        await deploy_app(kube, ns, "plain")
        h = f"{unique('classless')}.example.test"
        await kube.create(
            INGRESSES,
            ingress_obj("plain", [rule(h, ("/", "Prefix", backend("plain")))], class_name=None),
            ns,
        )
        # An Ingress of our class, created after it: once that one is served, kubelbd has
        # seen the class-less one too (one watch, in order), and left it alone.
        witness = f"{unique('witness')}.example.test"
        await kube.create(
            INGRESSES,
            ingress_obj("witness", [rule(witness, ("/", "Prefix", backend("plain")))]),
            ns,
        )
        await until_served(lay, witness)
        status, _ = await lb_get(lay, h)
        assert status == 404  # no class, and ours is not the default
        await kube.patch(
            INGRESS_CLASSES, "kubelb", {"metadata": {"annotations": {annotation: "true"}}}
        )
        await until_served(lay, h)
        await kube.patch(
            INGRESS_CLASSES, "kubelb", {"metadata": {"annotations": {annotation: None}}}
        )
        await until_served(lay, h, status=404)
    finally:
        await kube.patch(
            INGRESS_CLASSES, "kubelb", {"metadata": {"annotations": {annotation: None}}}
        )
        await delete_namespace(kube, ns)


async def test_route_changes_do_not_rewrite_the_tenant_status_each_time(
    fleet: FleetHandle,
) -> None:
    """The Synced message counts routes; writing it on every change would cost the management
    API server as much as the route records: message-only changes are coalesced (10 s)."""
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    ns = unique("churn")
    await create_namespace(kube, ns)
    try:
        await deploy_app(kube, ns, "app")
        before = await tenant_condition(mgmt, "alpha", "Synced")
        assert before.get("status") == "True", before
        _, rv = await mgmt.list(TENANTS, "tenant-alpha")
        writes: list[Obj] = []

        async def watch() -> None:
            async for kind, obj in mgmt.watch(TENANTS, rv, "tenant-alpha"):
                if kind == "MODIFIED":
                    writes.append(obj)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for i in range(3):
                h = f"{unique(f'churn{i}')}.example.test"
                await kube.create(
                    INGRESSES, ingress_obj(f"r{i}", [rule(h, ("/", "Prefix", backend("app")))]), ns
                )
                await until_served(lay, h)
            tg.cancel_scope.cancel()
        # At most one immediate write (when the last was long ago) during three quick changes;
        # before, each change rewrote the status, and moved lastTransitionTime with it.
        assert len(writes) <= 1, [conditions(w).get("Synced") for w in writes]
        after = await tenant_condition(mgmt, "alpha", "Synced")
        assert after["lastTransitionTime"] == before["lastTransitionTime"], (before, after)
    finally:
        await delete_namespace(kube, ns)


VAP = Resource("admissionregistration.k8s.io/v1", "validatingadmissionpolicies", namespaced=False)
VAP_BINDINGS = Resource(
    "admissionregistration.k8s.io/v1", "validatingadmissionpolicybindings", namespaced=False
)


async def test_an_object_the_tenant_refuses_does_not_hold_up_other_changes(
    fleet: FleetHandle,
) -> None:
    """One Ingress whose NodePort twin the tenant API server refuses is retried with a backoff
    on its own; the tenant's other changes go on at once. The reconcile loop used to sleep out
    that backoff itself (0.2 s doubling to 30 s), holding every change of the tenant behind it."""
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    ns, policy = unique("refused"), unique("kubelb-test-refuse")
    # An admission policy (CEL, inside the API server) refusing the twin of one Service.
    rule_ = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
             "resources": ["services"]}  # fmt: skip
    await kube.create(VAP, {
        "metadata": {"name": policy},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [rule_]},
            "validations": [{
                "expression": f"object.metadata.namespace != '{ns}' || "
                              "!object.metadata.name.startsWith('kubelb-refused')",
                "message": "refused by the test's admission policy",
            }],
        },
    })  # fmt: skip
    await kube.create(VAP_BINDINGS, {
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"]},
    })  # fmt: skip
    await create_namespace(kube, ns)
    try:
        probe = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubelb-refused-x"},
                 "spec": {"ports": [{"port": 80}]}}  # fmt: skip

        async def policy_active() -> bool:
            try:
                await kube.create(SERVICES, probe, ns)
            except ApiError:
                return True
            await kube.delete(SERVICES, "kubelb-refused-x", ns)
            return False

        await eventually(policy_active, what="the admission policy to refuse")
        await deploy_app(kube, ns, "refused")
        await deploy_app(kube, ns, "app")
        await kube.create(
            INGRESSES,
            ingress_obj("bad", [rule(f"{unique('bad')}.example.test", ("/", "Prefix",
                                                                          backend("refused")))]),
            ns,
        )  # fmt: skip

        async def failing() -> bool:
            synced = await tenant_condition(mgmt, "alpha", "Synced")
            return synced.get("status") == "False" and f"{ns}/bad" in synced.get("message", "")

        await eventually(failing, what="alpha to report the refused Ingress")
        for i in range(6):
            h = f"{unique(f'next{i}')}.example.test"
            await kube.create(
                INGRESSES, ingress_obj(f"ok{i}", [rule(h, ("/", "Prefix", backend("app")))]), ns
            )
            await until_served(lay, h, timeout=5)
        assert (await tenant_condition(mgmt, "alpha", "Synced")).get("status") == "False"
    finally:
        await delete_namespace(kube, ns)
        await kube.delete(VAP_BINDINGS, policy)
        await kube.delete(VAP, policy)
