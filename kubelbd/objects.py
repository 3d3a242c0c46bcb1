"""Plain Kubernetes objects, and where each kind lives in the API: the bottom layer.

Objects stay the dicts the API server sent (decoded once by orjson): decoding thousands of
watch events into model classes costs more than a reconcile, and every stage reads dicts.
`Resource` names a kind's place in the API without any client attached, so the pure stages
can say what they watch and the client alone knows how to ask for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: enough to build any URL for it."""

    group_version: str
    plural: str
    namespaced: bool = True

    def path(
        self,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


NAMESPACES = Resource("v1", "namespaces", namespaced=False)
NODES = Resource("v1", "nodes", namespaced=False)
PODS = Resource("v1", "pods")
SERVICES = Resource("v1", "services")
SECRETS = Resource("v1", "secrets")
CONFIGMAPS = Resource("v1", "configmaps")
EVENTS = Resource("v1", "events")
ENDPOINT_SLICES = Resource("discovery.k8s.io/v1", "endpointslices")
LEASES = Resource("coordination.k8s.io/v1", "leases")
INGRESSES = Resource("networking.k8s.io/v1", "ingresses")
INGRESS_CLASSES = Resource("networking.k8s.io/v1", "ingressclasses", namespaced=False)
DEPLOYMENTS = Resource("apps/v1", "deployments")
CRDS = Resource("apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)
SERVICE_ACCOUNTS = Resource("v1", "serviceaccounts")
CLUSTER_ROLES = Resource("rbac.authorization.k8s.io/v1", "clusterroles", namespaced=False)
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io/v1", "clusterrolebindings", namespaced=False
)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubelbd"


def meta(obj: Obj) -> Obj:
    return cast(Obj, obj.setdefault("metadata", {}))


def key(obj: Obj) -> str:
    """namespace/name (or name for cluster-scoped objects): the cache key everywhere."""
    m = obj.get("metadata") or {}
    ns = m.get("namespace")
    return f"{ns}/{m['name']}" if ns else str(m["name"])


def split_key(k: str) -> tuple[str, str]:
    """(namespace, name) of a cache key; namespace "" for cluster-scoped objects."""
    ns, slash, name = k.partition("/")
    return (ns, name) if slash else ("", ns)


def _strings(obj: Obj, field: str) -> dict[str, str]:
    """A string map of the metadata; a tenant's API server may send anything there, and
    whatever is not a string is left out (what the real API server would never store)."""
    meta = obj.get("metadata")
    value = meta.get(field) if isinstance(meta, dict) else None
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def labels_of(obj: Obj) -> dict[str, str]:
    return _strings(obj, "labels")


def annotations_of(obj: Obj) -> dict[str, str]:
    return _strings(obj, "annotations")


def managed_by_us(obj: Obj) -> bool:
    return labels_of(obj).get(MANAGED_BY) == MANAGER
