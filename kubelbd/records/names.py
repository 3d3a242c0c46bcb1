"""Where records live and what they are called: API group, namespaces, labels, names.

A tenant's records live in namespace `tenant-<name>` of the management cluster: one Tenant
(its node addresses and health), one Route per HTTP source object, one LoadBalancer per
Service of type LoadBalancer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..objects import MANAGED_BY, MANAGER, Obj, Resource, labels_of

GROUP = "kubelb.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ROUTES = Resource(API_VERSION, "routes")
LOADBALANCERS = Resource(API_VERSION, "loadbalancers")
TENANTS = Resource(API_VERSION, "tenants")

TENANT_LABEL = "kubelb.io/tenant"
SOURCE_NAMESPACE_LABEL = "kubelb.io/source-namespace"
NAMESPACE_PREFIX = "tenant-"
CLEANUP_FINALIZER = "kubelb.io/cleanup"
#: Gateway API: the GatewayClass `kubelb`'s controllerName, and the one kubelbd writes into
#: the status of the routes it serves
GATEWAY_CONTROLLER = "kubelb.io/gateway-controller"
#: a management cluster copy of a certificate the data plane serves
TLS_LABEL = "kubelb.io/tls"
#: who made that copy: tenant (copied from the tenant), acme, cert-manager
TLS_SOURCE_LABEL = "kubelb.io/tls-source"
#: service mode: the management Service that fronts one LoadBalancer record
L4_RECORD_LABEL = "kubelb.io/l4-record"

MAX_NAME = 253
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def valid_tenant_name(name: str) -> bool:
    return bool(_DNS_LABEL.match(name)) and len(NAMESPACE_PREFIX + name) <= 63


def namespace_of(tenant: str) -> str:
    return NAMESPACE_PREFIX + tenant


def labels(tenant: str) -> dict[str, str]:
    return {TENANT_LABEL: tenant, MANAGED_BY: MANAGER}


def tenant_of(obj: Obj) -> str | None:
    """The tenant a management cluster object (a record, a certificate Secret) belongs to:
    the one whose namespace holds it, `tenant-<name>`, which kubelbd makes. Never the label
    alone: anyone who may write into some other namespace could speak for any tenant. A
    tenant label that names another tenant makes the object nobody's (see `misplaced`)."""
    ns = str((obj.get("metadata") or {}).get("namespace") or "")
    tenant = ns.removeprefix(NAMESPACE_PREFIX) if ns.startswith(NAMESPACE_PREFIX) else ""
    label = labels_of(obj).get(TENANT_LABEL)
    if not tenant or (label is not None and label != tenant):
        return None
    return tenant


def misplaced(obj: Obj) -> str | None:
    """Why a management cluster object is no tenant's (None: it is one's, see `tenant_of`)."""
    if tenant_of(obj) is not None:
        return None
    ns = str((obj.get("metadata") or {}).get("namespace") or "")
    label = labels_of(obj).get(TENANT_LABEL)
    if label is None:
        return f"namespace {ns!r} is not a tenant's ({NAMESPACE_PREFIX}<tenant>)"
    return f"labelled {TENANT_LABEL}={label!r} but in namespace {ns!r}, not {namespace_of(label)!r}"


def dotted(namespace: str, name: str) -> str:
    """`<namespace>.<name>`: unique, since namespaces cannot contain dots, and readable;
    hashed at the end when longer than an object name may be."""
    full = f"{namespace}.{name}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[: MAX_NAME - 11]}-{digest}"


def secret_id(tenant: str, name: str) -> str:
    """How the data plane names a certificate Secret: `<tenant>/<secret name>`."""
    return f"{tenant}/{name}"


def secret_tenant(sid: str) -> str:
    """The tenant of a `secret_id`."""
    return sid.split("/", 1)[0]


def copy_name(namespace: str, name: str) -> str:
    """The management cluster copy of a tenant Secret, in the tenant's namespace there (and
    the name an issued certificate gets): `<namespace>.<name>`."""
    return dotted(namespace, name)


@dataclass(frozen=True)
class RecordKind:
    """A kind of record, and how the tenant side hands it to the data plane."""

    kind: str
    resource: Resource
    #: rendered from the translation before the record is written (a Route: the write waits
    #: until Envoy has most likely applied). A LoadBalancer is written first: the data plane
    #: records its allocation in the record's status before Envoy listens on it.
    provisional: bool


ROUTE = RecordKind("Route", ROUTES, provisional=True)
LOADBALANCER = RecordKind("LoadBalancer", LOADBALANCERS, provisional=False)
TENANT = RecordKind("Tenant", TENANTS, provisional=False)
KINDS = {k.kind: k for k in (ROUTE, LOADBALANCER, TENANT)}
