"""The NodePort twin kubelbd creates for a ClusterIP Service, so Envoy can reach its pods.

Users change nothing: the twin selects the same pods and exposes the same ports. It is labelled
as kubelbd's, owned by the original Service (deleting that deletes the twin) and removed by
kubelbd when no object of ours needs it any more. Pure: the tenant side creates and deletes.
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
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": meta["name"],
                    "uid": meta.get("uid", ""),
                }
            ],
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
