"""Stage 1 for Layer 4: a tenant Service of type LoadBalancer becomes a LoadBalancer spec.

Pure functions only. Which Services are ours (no loadBalancerClass, or ours), their ports with
the nodePorts Envoy dials, and what cannot be served (SCTP, a port without a nodePort).
"""

from __future__ import annotations

from typing import Any

from .ingress import Problem, Translation
from .kube import Obj

LB_CLASS = "kubelb.io/lb"
PROXY_PROTOCOL_ANNOTATION = "kubelb.io/proxy-protocol"
SUPPORTED = ("TCP", "UDP")


def is_ours(svc: Obj, lb_class: str = LB_CLASS) -> bool:
    spec = svc.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return False
    cls = spec.get("loadBalancerClass")
    return cls is None or cls == lb_class


def lb_name(namespace: str, name: str) -> str:
    """Namespaces cannot contain dots, so `<namespace>.<name>` is unique (and at most 127)."""
    return f"{namespace}.{name}"


def translate(svc: Obj) -> Translation:
    meta = svc["metadata"]
    spec = svc.get("spec") or {}
    problems: list[Problem] = []
    ports: list[dict[str, Any]] = []
    for p in spec.get("ports") or []:
        protocol = p.get("protocol", "TCP")
        label = p.get("name") or str(p.get("port"))
        if protocol not in SUPPORTED:
            problems.append(
                Problem(
                    "UnsupportedProtocol", f"port {label}: protocol {protocol} is not supported"
                )
            )
            continue
        if not p.get("nodePort"):
            problems.append(
                Problem(
                    "NoNodePort", f"port {label} has no nodePort (allocateLoadBalancerNodePorts?)"
                )
            )
            continue
        port = {"port": p["port"], "protocol": protocol, "nodePort": p["nodePort"]}
        if p.get("name"):
            port["name"] = p["name"]
        ports.append(port)
    pp = (meta.get("annotations") or {}).get(PROXY_PROTOCOL_ANNOTATION, "")
    if pp not in ("", "v2"):
        problems.append(
            Problem("InvalidAnnotation", f"{PROXY_PROTOCOL_ANNOTATION}: {pp!r} (only v2)")
        )
        pp = ""
    out: Obj = {
        "source": {
            "kind": "Service",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "creationTimestamp": meta.get("creationTimestamp", ""),
        },
        "ports": sorted(ports, key=lambda p: (p["port"], p["protocol"])),
        "sessionAffinity": spec.get("sessionAffinity", "None"),
        "proxyProtocol": pp,
    }
    if spec.get("loadBalancerIP"):
        out["requestedAddress"] = spec["loadBalancerIP"]
    return Translation(out, problems)
