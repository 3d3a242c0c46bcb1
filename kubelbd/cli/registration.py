"""Registering a tenant cluster with kubelbd, and unregistering it: both sides in one go.

A tenant admin's kubeconfig is needed once, by the operator's command, never by kubelbd: it
grants kubelbd the least-privilege ClusterRole of docs/security.md through a ServiceAccount
of its own (`tenant-rbac.yaml`, the same document as deploy/tenant-clusterrole.yaml), and the
long-lived token of that ServiceAccount becomes the registration kubeconfig. The management
cluster gets only that token, the tenant's CA and the server URL.

Every write is a server-side apply under a field manager of its own, so running register
again converges both sides on the flags given (a policy field left out now is removed, one
the operator set by other means stays) and changes nothing where nothing changed.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar, cast

import anyio
import yaml

from ..kube import ApiError, Kube, KubeconfigError
from ..objects import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    INGRESS_CLASSES,
    NAMESPACES,
    SECRETS,
    SERVICE_ACCOUNTS,
    Obj,
    Resource,
    labels_of,
)
from ..records.names import TENANT_LABEL, TENANTS, namespace_of
from ..records.objects import namespace_object, tenant_object
from ..records.types import TenantSpec
from ..tenant.registry import KUBECONFIG_KEY
from ..tenant.sync import Connect, Connector

#: who wrote what register wrote (kubelbd's own writes are `kubelbd`'s)
FIELD_MANAGER = "kubelbd-register"
TOKEN_TYPE = "kubernetes.io/service-account-token"
POLL_INTERVAL = 0.25
#: the kinds tenant-rbac.yaml holds, by (apiVersion, kind)
_RESOURCES: dict[tuple[str, str], Resource] = {
    ("v1", "Namespace"): NAMESPACES,
    ("v1", "ServiceAccount"): SERVICE_ACCOUNTS,
    ("v1", "Secret"): SECRETS,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): CLUSTER_ROLES,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): CLUSTER_ROLE_BINDINGS,
}

T = TypeVar("T")
Say = Callable[[str], None]


class RegistrationError(Exception):
    """What stops a registration or an unregistration, in words for the operator."""


def rbac_text() -> str:
    """tenant-rbac.yaml as shipped in the package."""
    return resources.files("kubelbd.cli").joinpath("tenant-rbac.yaml").read_text()


def rbac_documents() -> list[Obj]:
    """The objects a tenant grants kubelbd, in the order they must be made (a namespace
    before what is in it, the ServiceAccount before its token)."""
    return [d for d in yaml.safe_load_all(rbac_text()) if d]


def resource_of(doc: Obj) -> Resource:
    return _RESOURCES[(doc["apiVersion"], doc["kind"])]


def token_secret(docs: Sequence[Obj]) -> Obj:
    """The Secret the token controller fills with the ServiceAccount's token."""
    (secret,) = (d for d in docs if d["kind"] == "Secret" and d.get("type") == TOKEN_TYPE)
    return secret


def token_kubeconfig(server: str, ca_data: str, token: str) -> bytes:
    """A self-contained kubeconfig: CA and token inline, one context. `ca_data` is base64
    PEM, as the token Secret's `ca.crt` holds it."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tenant",
                    "cluster": {"server": server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": "kubelbd", "user": {"token": token}}],
            "contexts": [{"name": "kubelbd", "context": {"cluster": "tenant", "user": "kubelbd"}}],
            "current-context": "kubelbd",
        },
        sort_keys=False,
    ).encode()


def registration_secret(tenant: str, namespace: str, kubeconfig: bytes) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": tenant, "namespace": namespace, "labels": {TENANT_LABEL: tenant}},
        "data": {KUBECONFIG_KEY: base64.b64encode(kubeconfig).decode()},
    }


async def poll(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """`check`'s first answer that is not None, asked until `timeout` seconds have passed."""
    with anyio.move_on_after(timeout):
        while True:
            answer = await check()
            if answer is not None:
                return answer
            await anyio.sleep(POLL_INTERVAL)
    raise RegistrationError(f"timed out after {timeout:.0f} s waiting for {what}")


async def not_terminating(kube: Kube, res: Resource, name: str, ns: str | None = None) -> bool:
    """Whether the object is absent or alive: not one still being deleted (a namespace that
    is terminating refuses new objects; a Secret being finalized cannot be written anew)."""
    obj = await kube.get_or_none(res, name, ns)
    return obj is None or not obj["metadata"].get("deletionTimestamp")


async def wait_not_terminating(
    kube: Kube, res: Resource, name: str, ns: str | None, timeout: float, what: str
) -> None:
    async def done() -> bool | None:
        return True if await not_terminating(kube, res, name, ns) else None

    await poll(done, timeout, what)


@dataclass(frozen=True)
class Registration:
    tenant: str
    #: the tenant's API server URL as kubelbd reaches it
    server: str
    #: kubelbd's namespace in the management cluster, where registration Secrets live
    namespace: str
    #: the operator's policy: only the fields given
    spec: TenantSpec
    timeout: float = 30.0


async def register(
    tenant: Kube, mgmt: Kube, reg: Registration, say: Say, connect: Connect | None = None
) -> bytes:
    """Grant kubelbd its role in the tenant and register the tenant in the management
    cluster; returns the registration kubeconfig. `connect` makes a client of it as kubelbd
    does (checked by kubelbd's own kubeconfig rules first)."""
    await _check_management(mgmt, reg)
    docs = rbac_documents()
    await _apply_tenant_side(tenant, docs, reg.timeout)
    kubeconfig = await _token_kubeconfig(tenant, token_secret(docs), reg)
    await _check_token(kubeconfig, reg, say, connect or Connector())
    ns = namespace_of(reg.tenant)
    await wait_not_terminating(
        mgmt, NAMESPACES, ns, None, reg.timeout, f"namespace {ns} to be deleted (unregistered)"
    )
    # The policy before the Secret: kubelbd reads it before the tenant's task starts, so
    # the tenant is never served a moment without it.
    await mgmt.apply(NAMESPACES, namespace_object(reg.tenant), field_manager=FIELD_MANAGER)
    await mgmt.apply(
        TENANTS, tenant_object(reg.tenant, reg.spec or None), field_manager=FIELD_MANAGER
    )
    secret = registration_secret(reg.tenant, reg.namespace, kubeconfig)
    await mgmt.apply(SECRETS, secret, field_manager=FIELD_MANAGER)
    return kubeconfig


async def _check_management(mgmt: Kube, reg: Registration) -> None:
    """Before anything is made in the tenant: the management cluster answers, kubelbd's
    namespace is there, and no other Secret registers this tenant (kubelbd would use one
    of them), nor does the Secret of this name register another."""
    if await mgmt.get_or_none(NAMESPACES, reg.namespace) is None:
        raise RegistrationError(
            f"namespace {reg.namespace} does not exist in the management cluster "
            "(kubelbd's --namespace, where registration Secrets live)"
        )
    existing = await mgmt.get_or_none(SECRETS, reg.tenant, reg.namespace)
    if existing is not None and labels_of(existing).get(TENANT_LABEL) != reg.tenant:
        raise RegistrationError(
            f"Secret {reg.namespace}/{reg.tenant} exists and does not register tenant "
            f"{reg.tenant} ({TENANT_LABEL}={labels_of(existing).get(TENANT_LABEL)!r})"
        )
    others, _ = await mgmt.list(
        SECRETS, reg.namespace, labelSelector=f"{TENANT_LABEL}={reg.tenant}"
    )
    names = sorted(s["metadata"]["name"] for s in others if s["metadata"]["name"] != reg.tenant)
    if names:
        raise RegistrationError(
            f"tenant {reg.tenant} is already registered by Secret {', '.join(names)} in "
            f"{reg.namespace}: unregister that first"
        )
    await wait_not_terminating(
        mgmt,
        SECRETS,
        reg.tenant,
        reg.namespace,
        reg.timeout,
        f"Secret {reg.namespace}/{reg.tenant} to be released by kubelbd (unregistered; is "
        "kubelbd running?)",
    )


async def _apply_tenant_side(tenant: Kube, docs: Sequence[Obj], timeout: float) -> None:
    for doc in docs:
        if doc["kind"] == "Namespace":
            name = doc["metadata"]["name"]
            await wait_not_terminating(
                tenant,
                NAMESPACES,
                name,
                None,
                timeout,
                f"the tenant's namespace {name} to be deleted (unregistered)",
            )
        await tenant.apply(resource_of(doc), doc, field_manager=FIELD_MANAGER)


async def _token_kubeconfig(tenant: Kube, secret: Obj, reg: Registration) -> bytes:
    """Once the token controller has filled the Secret: the kubeconfig of its token."""
    name, ns = secret["metadata"]["name"], secret["metadata"]["namespace"]

    async def filled() -> Obj | None:
        data = (await tenant.get(SECRETS, name, ns)).get("data") or {}
        return cast(Obj, data) if data.get("token") and data.get("ca.crt") else None

    data = await poll(
        filled,
        reg.timeout,
        f"the token controller to fill Secret {ns}/{name} in the tenant (token, ca.crt): is "
        "kube-controller-manager running, with --root-ca-file?",
    )
    token = base64.b64decode(data["token"]).decode()
    return token_kubeconfig(reg.server, data["ca.crt"], token)


async def _check_token(kubeconfig: bytes, reg: Registration, say: Say, connect: Connect) -> None:
    """Connect with the registration kubeconfig as kubelbd will (kubelbd's kubeconfig rules,
    then one request its role allows) and fail here rather than on the Tenant record. The
    token and the new binding may take a moment to be honoured: 401 and 403 are asked again
    until the timeout. A server this host cannot reach may still be kubelbd's to reach: a
    warning, not a failure."""
    try:
        client = await connect(kubeconfig, reg.tenant)
    except KubeconfigError as e:
        raise RegistrationError(f"the registration kubeconfig is not one kubelbd takes: {e}") from e
    last: list[ApiError] = []

    async def accepted() -> bool | None:
        try:
            await client.get_or_none(INGRESS_CLASSES, "kubelb")
        except ApiError as e:
            if e.status not in (401, 403):
                raise
            last[:] = [e]
            return None
        return True

    try:
        await poll(accepted, reg.timeout, "the tenant to accept the token")
    except RegistrationError as e:
        raise RegistrationError(f"{e}: {last[-1]}" if last else str(e)) from None
    except ConnectionError as e:
        say(
            f"warning: {reg.server} cannot be reached from here ({e}); registering anyway, "
            "see the Tenant record's Connected condition"
        )
    finally:
        await client.aclose()


async def unregister(
    mgmt: Kube,
    tenant: Kube | None,
    name: str,
    namespace: str,
    say: Say,
    wait: bool = True,
    timeout: float = 60.0,
) -> None:
    """Delete the registration Secret; once kubelbd has released it (its finalizer ran:
    twins, IngressClass and records gone), remove kubelbd's role from the tenant, if its
    admin client is given. Without `wait` the role goes at once, and kubelbd's clean-up of
    the tenant cluster then fails (unauthorized): its twins and IngressClass stay."""
    secret = await mgmt.get_or_none(SECRETS, name, namespace)
    if secret is not None and labels_of(secret).get(TENANT_LABEL) != name:
        raise RegistrationError(
            f"Secret {namespace}/{name} does not register tenant {name}: left alone"
        )
    if secret is None:
        say(f"no registration Secret {namespace}/{name} in the management cluster")
    else:
        await mgmt.delete(SECRETS, name, namespace)
        if wait:

            async def gone() -> bool | None:
                return True if await mgmt.get_or_none(SECRETS, name, namespace) is None else None

            await poll(
                gone,
                timeout,
                f"kubelbd to release Secret {namespace}/{name} (finalizer kubelb.io/cleanup: "
                "it removes what it made in the tenant, then the records). Is kubelbd "
                "running? Run unregister again later, or with --force to remove kubelbd's "
                "role from the tenant now",
            )
    if tenant is None:
        say("no --kubeconfig: kubelbd's ServiceAccount and role stay in the tenant")
        return
    for doc in reversed(rbac_documents()):
        meta = doc["metadata"]
        await tenant.delete(resource_of(doc), meta["name"], meta.get("namespace"))
