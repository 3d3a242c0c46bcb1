"""The durable records in the management cluster: names, labels and shapes, in one place.

A tenant's records live in namespace `tenant-<name>`: one Tenant (its node addresses and
health), one Route per Ingress. They are what the data plane is rendered from, so kubelbd can
serve everything after a restart even while a tenant's API server is unreachable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .ir import RouteRecord, TenantRecord
from .kube import Obj, Resource
from .l4ir import LBRecord

GROUP = "kubelb.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ROUTES = Resource(API_VERSION, "routes")
LOADBALANCERS = Resource(API_VERSION, "loadbalancers")
TENANTS = Resource(API_VERSION, "tenants")

TENANT_LABEL = "kubelb.io/tenant"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubelbd"
NAMESPACE_PREFIX = "tenant-"
CLEANUP_FINALIZER = "kubelb.io/cleanup"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def valid_tenant_name(name: str) -> bool:
    return bool(_DNS_LABEL.match(name)) and len(NAMESPACE_PREFIX + name) <= 63


def namespace_of(tenant: str) -> str:
    return NAMESPACE_PREFIX + tenant


def labels(tenant: str) -> dict[str, str]:
    return {TENANT_LABEL: tenant, MANAGED_BY: MANAGER}


def record_object(kind: str, tenant: str, name: str, spec: Obj) -> Obj:
    """A Route or LoadBalancer record for `spec` (made from the tenant object it names)."""
    source = spec.get("source") or {}
    meta_labels = labels(tenant) | {
        "kubelb.io/source-namespace": str(source.get("namespace", ""))[:63],
    }
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace_of(tenant), "labels": meta_labels},
        "spec": spec,
    }


def lb_record(obj: Obj) -> LBRecord | None:
    tenant = tenant_of(obj)
    if tenant is None:
        return None
    meta = obj["metadata"]
    return LBRecord(tenant, meta["name"], obj.get("spec") or {}, int(meta.get("generation", 0)))


def tenant_object(tenant: str, addresses: list[str], address_type: str) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "Tenant",
        "metadata": {"name": tenant, "namespace": namespace_of(tenant), "labels": labels(tenant)},
        "spec": {"nodeAddressType": address_type, "nodeAddresses": addresses},
    }


def namespace_object(tenant: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace_of(tenant), "labels": labels(tenant)},
    }


def tenant_of(obj: Obj) -> str | None:
    meta: dict[str, Any] = obj.get("metadata") or {}
    t = (meta.get("labels") or {}).get(TENANT_LABEL)
    if t:
        return str(t)
    ns = str(meta.get("namespace", ""))
    return ns.removeprefix(NAMESPACE_PREFIX) if ns.startswith(NAMESPACE_PREFIX) else None


def route_record(obj: Obj) -> RouteRecord | None:
    tenant = tenant_of(obj)
    if tenant is None:
        return None
    meta = obj["metadata"]
    return RouteRecord(tenant, meta["name"], obj.get("spec") or {}, int(meta.get("generation", 0)))


def tenant_record(obj: Obj) -> TenantRecord | None:
    tenant = tenant_of(obj)
    if tenant is None:
        return None
    addresses = (obj.get("spec") or {}).get("nodeAddresses") or []
    return TenantRecord(tenant, tuple(str(a) for a in addresses))


def dispatch(
    kind: str,
    obj: Obj,
    upsert: Callable[[Obj], None],
    delete: Callable[[str, str, str | None], None],
) -> None:
    """Route a watch event on a record to upsert(obj) or delete(tenant, name, uid)."""
    if kind != "DELETED":
        upsert(obj)
        return
    tenant = tenant_of(obj)
    if tenant is not None:
        delete(tenant, obj["metadata"]["name"], obj["metadata"].get("uid"))
