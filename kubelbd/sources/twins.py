"""The NodePort twin kubelbd creates for a ClusterIP Service, so Envoy can reach its pods.

Users change nothing: the twin selects the same pods and exposes the same ports. It is labelled
as kubelbd's, owned by the original Service (deleting that deletes the twin) and removed by
kubelbd when no object of ours needs it any more. Pure: the tenant side creates and deletes.

A Service whose EndpointSlices the tenant writes by hand (one without a selector, headless or
not) has endpoints no selector can give its twin: each such slice gets a mirror, the same
endpoints labelled for the twin (`mirror`), as Kubernetes' own mirroring controller does for
Endpoints. A mirror is owned by the twin, so it goes with it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from typing import Any

from ..objects import MANAGED_BY, MANAGER, Obj, labels_of
from . import shapes

TWIN_OF = "kubelb.io/nodeport-for"
PREFIX = "kubelb-"
NODE_PORT_RANGE = (30000, 32768)  # Kubernetes' default --service-node-port-range, end excluded


def needs_twin(svc: Obj) -> bool:
    """A Service Envoy cannot reach as it is: it must get a kubelbd-owned NodePort twin (a
    malformed one gets none: the objects that use it say why)."""
    if not shapes.fits(shapes.Service, svc):
        return False
    return bool((svc.get("spec") or {}).get("type", "ClusterIP") == "ClusterIP")


def twin_name(service: str) -> str:
    name = PREFIX + service
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(service.encode()).hexdigest()[:8]
    return f"{name[:54]}-{digest}"


def service_owner(name: str, uid: str) -> Obj:
    """An ownerReference to a Service (no blockOwnerDeletion: docs in the tenant RBAC)."""
    return {"apiVersion": "v1", "kind": "Service", "name": name, "uid": uid}


def twin(svc: Obj) -> Obj:
    meta = svc["metadata"]
    spec = svc.get("spec") or {}
    ports = [
        {
            k: v
            for k, v in {
                "name": p.get("name"),
                "port": p["port"],
                "targetPort": p.get("targetPort", p["port"]),
                "protocol": p.get("protocol", "TCP"),
            }.items()
            if v is not None
        }
        for p in spec.get("ports") or []
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": twin_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {MANAGED_BY: MANAGER, TWIN_OF: meta["name"]},
            "annotations": {"kubelb.io/description": "NodePort for the kubelbd load balancer"},
            "ownerReferences": [service_owner(meta["name"], meta.get("uid", ""))],
        },
        "spec": {
            "type": "NodePort",
            "selector": dict(spec.get("selector") or {}),
            "ports": ports,
        },
    }


def is_twin(svc: Obj) -> bool:
    labels = labels_of(svc)
    return labels.get(MANAGED_BY) == MANAGER and TWIN_OF in labels


def original_of(svc: Obj) -> str | None:
    """The name of the Service a twin stands in for (None: not a twin)."""
    return labels_of(svc).get(TWIN_OF) if is_twin(svc) else None


def same_twin(existing: Obj, desired: Obj) -> bool:
    """Whether an existing twin already is what `desired` asks for (nodePorts aside); one
    the tenant has made malformed is not."""
    if not shapes.fits(shapes.Service, existing):
        return False

    def shape(svc: Obj) -> tuple[Any, ...]:
        spec = svc.get("spec") or {}
        ports = sorted(
            (
                p.get("name") or "",  # an explicit null is no name too
                p["port"],
                str(p.get("targetPort") or p["port"]),
                p.get("protocol") or "TCP",
            )
            for p in spec.get("ports") or []
        )
        return (spec.get("type"), tuple(sorted((spec.get("selector") or {}).items())), tuple(ports))

    return shape(existing) == shape(desired)


def node_ports(svc: Obj) -> list[Any]:
    if not shapes.fits(shapes.Service, svc):
        return []
    return [p.get("nodePort") for p in (svc.get("spec") or {}).get("ports") or []]


def assigned_node_ports(svc: Obj) -> dict[tuple[int, str], int]:
    """(port, protocol) -> nodePort of a Service's ports that have one."""
    if not shapes.fits(shapes.Service, svc):
        return {}
    return {
        (p["port"], p.get("protocol", "TCP")): p["nodePort"]
        for p in (svc.get("spec") or {}).get("ports") or []
        if p.get("nodePort")
    }


def free_node_ports(
    services: Iterable[Obj],
    count: int,
    rng: random.Random,
    allowed: tuple[int, int] = (NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] - 1),
) -> list[int]:
    """`count` distinct ports of the default NodePort range, and inside `allowed` (the
    operator's node-port range, ends included), that none of `services` uses (as far as
    kubelbd knows; the API server has the last word), or [] if there are not enough."""
    used = {p for s in services for p in node_ports(s)}
    low, high = max(NODE_PORT_RANGE[0], allowed[0]), min(NODE_PORT_RANGE[1] - 1, allowed[1])
    free = [p for p in range(low, high + 1) if p not in used]
    return rng.sample(free, count) if 0 < count <= len(free) else []


# ---- EndpointSlices written by hand ----------------------------------------------------------

#: the label of a slice's Service, and of the controller that manages a slice (a slice
#: without one is written by hand: those are mirrored)
SERVICE_NAME = "kubernetes.io/service-name"
SLICE_MANAGER = "endpointslice.kubernetes.io/managed-by"
#: kubelbd's value of SLICE_MANAGER (so the EndpointSlice controller leaves mirrors alone)
MIRRORED_BY = "kubelb.io"
#: slices mirrored per Service (Kubernetes' mirroring controller keeps up to 1000 endpoints
#: in one slice; a tenant needs no more than a few slices by hand)
MAX_MIRRORED = 16


def service_of(slice_: Obj) -> str | None:
    """The Service a slice belongs to (its label), or None."""
    name = labels_of(slice_).get(SERVICE_NAME)
    return name or None


def mirror(slice_: Obj, twin: Obj) -> Obj | None:
    """The mirror of a hand-written slice for `twin` (created: it has a uid), or None when
    the slice does not have a shape that can be mirrored."""
    if not shapes.fits(shapes.EndpointSlice, slice_):
        return None
    meta, twin_meta = slice_["metadata"], twin["metadata"]
    original = labels_of(twin).get(TWIN_OF, "")
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": twin_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {
                MANAGED_BY: MANAGER,
                TWIN_OF: original,
                SERVICE_NAME: twin_meta["name"],
                SLICE_MANAGER: MIRRORED_BY,
            },
            "ownerReferences": [service_owner(twin_meta["name"], twin_meta["uid"])],
        },
        "addressType": slice_["addressType"],
        "ports": [
            {k: p[k] for k in ("name", "port", "protocol", "appProtocol") if p.get(k) is not None}
            for p in slice_.get("ports") or []
        ],
        "endpoints": [
            {
                k: e[k]
                for k in ("addresses", "conditions", "nodeName", "zone")
                if e.get(k) is not None
            }
            for e in slice_.get("endpoints") or []
        ],
    }


def same_mirror(existing: Obj, desired: Obj) -> bool:
    """Whether a mirror in the tenant already says what `desired` does."""
    fields = ("addressType", "ports", "endpoints")
    labels = desired["metadata"]["labels"]
    return all(existing.get(f) == desired[f] for f in fields) and all(
        labels_of(existing).get(k) == v for k, v in labels.items()
    )
