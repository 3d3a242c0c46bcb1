"""Records as API objects: what kubelbd sends to the management cluster's API server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..objects import Obj
from .names import API_VERSION, SOURCE_NAMESPACE_LABEL, TENANT, labels, namespace_of
from .types import LoadBalancerSpec, RouteSpec


def record_object(kind: str, tenant: str, name: str, spec: RouteSpec | LoadBalancerSpec) -> Obj:
    """A Route or LoadBalancer record for `spec` (made from the tenant object it names)."""
    meta_labels = labels(tenant) | {
        SOURCE_NAMESPACE_LABEL: spec["source"]["namespace"][:63],
    }
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace_of(tenant), "labels": meta_labels},
        "spec": spec,
    }


def status_object(kind: str, tenant: str, name: str, status: Mapping[str, Any]) -> Obj:
    """A server-side apply of `status` to the status subresource of a record."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace_of(tenant)},
        "status": dict(status),
    }


def tenant_object(tenant: str, spec: Mapping[str, Any] | None = None) -> Obj:
    """A Tenant record; kubelbd applies it without a spec (the operator's), tests and the
    fleet with one."""
    out: Obj = {
        "apiVersion": API_VERSION,
        "kind": TENANT.kind,
        "metadata": {"name": tenant, "namespace": namespace_of(tenant), "labels": labels(tenant)},
    }
    if spec is not None:
        out["spec"] = dict(spec)
    return out


def namespace_object(tenant: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace_of(tenant), "labels": labels(tenant)},
    }
