"""The Service source: a tenant Service of type LoadBalancer becomes a LoadBalancer spec.

Which Services are ours (no loadBalancerClass, or ours), their ports with the nodePorts Envoy
dials, and what cannot be served (SCTP, a port without a nodePort, an unknown PROXY protocol
version).
"""

from __future__ import annotations

from ..objects import SERVICES, Obj, Resource, annotations_of
from ..records.names import LOADBALANCER, dotted
from ..records.policy import Policy
from ..records.problems import Problem, Translation
from ..records.status import SourceStatus
from ..records.types import L4Port, L4Protocol, LoadBalancerSpec
from . import dnsnames, shapes
from .base import References, StatusPatch, TenantView, load_balancer_status_patch

LB_CLASS = "kubelb.io/lb"
PROXY_PROTOCOL_ANNOTATION = "kubelb.io/proxy-protocol"
SUPPORTED: tuple[L4Protocol, ...] = ("TCP", "UDP")
AFFINITIES = ("None", "ClientIP")


def is_ours(svc: Obj, lb_class: str = LB_CLASS) -> bool:
    if not shapes.fits(shapes.ServiceType, svc):
        return False  # whose it is cannot be told: not ours to report on either
    spec = svc.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return False
    cls = spec.get("loadBalancerClass")
    return cls is None or cls == lb_class


def lb_name(namespace: str, name: str) -> str:
    return dotted(namespace, name)


def translate(svc: Obj, policy: Policy) -> Translation[LoadBalancerSpec]:
    malformed = shapes.problem(shapes.Service, svc)
    if malformed is not None:
        refused: LoadBalancerSpec = {
            "source": shapes.source_ref("Service", svc, generation=False), "ports": [],
            "sessionAffinity": "None", "proxyProtocol": "", "problems": [malformed.spec()],
        }  # fmt: skip
        return Translation(refused, [malformed])
    meta = svc["metadata"]
    spec = svc.get("spec") or {}
    problems: list[Problem] = []
    ports: list[L4Port] = []
    seen: set[tuple[int, str]] = set()
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
        outside = policy.node_port_problem(p["nodePort"])
        if outside is not None:
            problems.append(Problem("NodePortRefused", f"port {label}: {outside}"))
            continue
        if (p["port"], protocol) in seen:
            message = f"port {p['port']}/{protocol} is listed twice"
            problems.append(Problem("DuplicatePort", message))
            continue
        seen.add((p["port"], protocol))
        port: L4Port = {"port": p["port"], "protocol": protocol, "nodePort": p["nodePort"]}
        if p.get("name"):
            port["name"] = p["name"]
        ports.append(port)
    pp = annotations_of(svc).get(PROXY_PROTOCOL_ANNOTATION, "")
    if pp not in ("", "v2"):
        problems.append(
            Problem("InvalidAnnotation", f"{PROXY_PROTOCOL_ANNOTATION}: {pp!r} (only v2)")
        )
        pp = ""
    affinity = spec.get("sessionAffinity", "None")
    if affinity not in AFFINITIES:
        problems.append(Problem("InvalidField", f"sessionAffinity {affinity!r} is not supported"))
        affinity = "None"
    out: LoadBalancerSpec = {
        "source": {
            "kind": "Service",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "creationTimestamp": meta.get("creationTimestamp", ""),
        },
        "ports": sorted(ports, key=lambda p: (p["port"], p["protocol"])),
        "sessionAffinity": affinity,
        "proxyProtocol": pp,
    }
    if spec.get("loadBalancerIP"):
        out["requestedAddress"] = spec["loadBalancerIP"]
    dns = dnsnames.read(annotations_of(svc), policy, meta["namespace"], meta["name"], names=True)
    problems += dns.problems
    if dns.options():
        out["dns"] = dns.options()
    if problems:
        out["problems"] = [p.spec() for p in problems]
    return Translation(out, problems)


class LoadBalancerServiceSource:
    """v1 Service of type LoadBalancer → LoadBalancer."""

    kind = "Service"
    api_version = "v1"
    resource = SERVICES
    depends_on: tuple[Resource, ...] = ()
    referenced: tuple[Resource, ...] = ()
    record = LOADBALANCER

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        return is_ours(obj)

    def record_name(self, namespace: str, name: str) -> str:
        return lb_name(namespace, name)

    def references(self, obj: Obj, view: TenantView) -> References:
        return References()  # a LoadBalancer Service has nodePorts of its own

    def translate(self, obj: Obj, view: TenantView) -> Translation[LoadBalancerSpec]:
        return translate(obj, view.policy)

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        return load_balancer_status_patch(obj, status)

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        return []

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        return []
