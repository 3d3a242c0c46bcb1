"""`kubelbd register` / `kubelbd unregister` on the real fleet, which registers its tenants
with `kubelbd register` (hack/kubefleet/lb.py `register_command`).

What is safe to do here: the fleet's own tenants are already registered, and a second
registration of the same cluster under another name would make two kubelbd tasks own the
same IngressClass `kubelb` and NodePort twins (and its unregister would delete them under
the real tenant). So the round trip unregisters and registers `beta` itself, as
test_tenants.py's deregistration test does, and ends with beta registered again by the
fleet's own command (also when it fails half way).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from kubefleet.layout import ROOT
from kubefleet.lb import NAMESPACE, register_command, tenant_policy

from kubelbd.kube import ApiError, Kube, parse_kubeconfig
from kubelbd.objects import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    INGRESS_CLASSES,
    INGRESSES,
    NAMESPACES,
    SECRETS,
    SERVICES,
    Obj,
    Resource,
)
from kubelbd.records.names import TENANTS
from kubelbd.tenant.registry import kubeconfig_of
from kubelbd.tenant.sync import Connector

from .support import (
    FleetHandle,
    backend,
    create_namespace,
    delete_namespace,
    deploy_app,
    eventually,
    ingress_obj,
    rule,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e

SELF_SUBJECT_REVIEWS = Resource("authentication.k8s.io/v1", "selfsubjectreviews", False)
ACCESS_REVIEWS = Resource("authorization.k8s.io/v1", "selfsubjectaccessreviews", False)
PODS = Resource("v1", "pods")
SERVICE_ACCOUNT = "system:serviceaccount:kubelb-system:kubelbd"

#: (verb, group, resource, subresource) kubelbd's role grants, and some it must not
ALLOWED = [
    ("list", "networking.k8s.io", "ingresses", ""),
    ("watch", "", "secrets", ""),
    ("patch", "networking.k8s.io", "ingresses", "status"),
    ("create", "", "events", ""),
    ("watch", "", "configmaps", ""),  # BackendTLSPolicy's CA certificates
]
DENIED = [
    ("list", "", "pods", ""),
    ("patch", "", "configmaps", ""),
    ("create", "", "namespaces", ""),
    ("get", "", "secrets", ""),
    ("update", "", "services", ""),
    ("delete", "networking.k8s.io", "ingresses", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
]


async def kubelbd_cli(*args: str) -> str:
    """Run the kubelbd command; fail the test with its message if it fails."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kubelbd", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"kubelbd {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


@asynccontextmanager
async def as_kubelbd(mgmt: Kube, tenant: str) -> AsyncIterator[Kube]:
    """A client of the tenant with its registration kubeconfig, made as kubelbd makes it."""
    secret = await mgmt.get(SECRETS, tenant, NAMESPACE)
    client = await Connector()(kubeconfig_of(secret), tenant)
    try:
        yield client
    finally:
        await client.aclose()


async def allowed(kube: Kube, verb: str, group: str, resource: str, subresource: str) -> bool:
    review: Obj = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "verb": verb, "group": group, "resource": resource, "subresource": subresource,
            }
        },
    }  # fmt: skip
    return bool((await kube.create(ACCESS_REVIEWS, review)).get("status", {}).get("allowed"))


@pytest.mark.parametrize("tenant", ["alpha", "beta"])
async def test_the_fleet_registers_a_least_privilege_token(fleet: FleetHandle, tenant: str) -> None:
    mgmt = fleet.kube["mgmt"]
    secret = await mgmt.get(SECRETS, tenant, NAMESPACE)
    user = parse_kubeconfig(kubeconfig_of(secret))["users"][0]["user"]
    assert set(user) == {"token"}, "a ServiceAccount token, not the admin's certificate"

    async with as_kubelbd(mgmt, tenant) as kube:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        me = await kube.create(SELF_SUBJECT_REVIEWS, review)
        assert me["status"]["userInfo"]["username"] == SERVICE_ACCOUNT
        for attrs in ALLOWED:
            assert await allowed(kube, *attrs), attrs
        for attrs in DENIED:
            assert not await allowed(kube, *attrs), attrs
        await kube.list(INGRESSES)  # and for real: what the role grants works...
        with pytest.raises(ApiError) as refused:
            await kube.list(PODS)  # ...what it does not is refused
        assert refused.value.status == 403

    record = await mgmt.get(TENANTS, tenant, f"tenant-{tenant}")
    assert record["spec"] == tenant_policy(fleet.layout.cluster(tenant))


async def test_unregister_and_register_again(fleet: FleetHandle) -> None:
    beta, mgmt, lay = fleet.kube["beta"], fleet.kube["mgmt"], fleet.layout
    register = register_command(lay, lay.cluster("beta"))[3:]  # after `python -m kubelbd`
    ns = unique("unreg")
    await create_namespace(beta, ns)
    try:
        await deploy_app(beta, ns, "app")
        h = f"{unique('unreg')}.example.test"
        await beta.create(
            INGRESSES, ingress_obj("app", [rule(h, ("/", "Prefix", backend("app")))]), ns
        )
        await until_served(lay, h)
        # Once, so that the Secret is this command's (another test may have written it).
        await kubelbd_cli(*register)
        before = await mgmt.get(SECRETS, "beta", NAMESPACE)
        try:
            await round_trip(fleet, ns, h, before, register)
        finally:
            # Registered again by the fleet's own command, also after a failure (it waits
            # for the old namespaces, here and in beta, to finish terminating).
            await kubelbd_cli(*register, "--timeout=120")

        await until_served(lay, h, timeout=60)
        after = await mgmt.get(SECRETS, "beta", NAMESPACE)
        assert kubeconfig_of(after) != kubeconfig_of(before)  # a new token
        record = await mgmt.get(TENANTS, "beta", "tenant-beta")
        assert record["spec"] == tenant_policy(lay.cluster("beta"))
    finally:
        await delete_namespace(beta, ns)


async def round_trip(fleet: FleetHandle, ns: str, h: str, before: Obj, register: list[str]) -> None:
    """Register beta again (a no-op), then unregister it; both sides are then clean."""
    beta, mgmt, lay = fleet.kube["beta"], fleet.kube["mgmt"], fleet.layout
    admin = [
        f"--kubeconfig={lay.kubeconfig('beta')}",
        f"--mgmt-kubeconfig={lay.kubeconfig('mgmt')}",
    ]

    # Registering again with the same flags changes nothing, not even a resourceVersion.
    await kubelbd_cli(*register)
    again = await mgmt.get(SECRETS, "beta", NAMESPACE)
    assert again["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    # Unregister returns once kubelbd has cleaned up in the tenant (with its role there),
    # and then the role is gone too.
    await kubelbd_cli("unregister", "beta", *admin)
    assert await mgmt.get_or_none(SECRETS, "beta", NAMESPACE) is None
    assert await beta.get_or_none(SERVICES, "kubelb-app", ns) is None
    assert await beta.get_or_none(INGRESS_CLASSES, "kubelb") is None
    assert await beta.get_or_none(CLUSTER_ROLE_BINDINGS, "kubelbd") is None
    assert await beta.get_or_none(CLUSTER_ROLES, "kubelbd") is None
    system = await beta.get_or_none(NAMESPACES, "kubelb-system")
    assert system is None or system["metadata"].get("deletionTimestamp")
    await until_served(lay, h, status=404)

    old = await Connector()(kubeconfig_of(before), "beta")
    try:

        async def token_refused() -> bool:
            with pytest.raises(ApiError) as refused:
                await old.get_or_none(INGRESS_CLASSES, "kubelb")
            assert refused.value.status == 401, refused.value
            return True

        await eventually(token_refused, what="the old token to be refused")
    finally:
        await old.aclose()
