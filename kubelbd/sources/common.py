"""What the HTTP sources (Ingress, HTTPRoute) share: hosts, paths, and backend Services
resolved to the nodePorts Envoy dials (a ClusterIP Service through its NodePort twin).

Pure, and no source kind's own: the kinds stay independent of one another (pyproject.toml).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..objects import SERVICES, Obj
from ..records.problems import Problem
from ..records.types import Backend
from . import shapes, twins
from .base import TenantView

# Envoy's own constraint on path_separated_prefix (and what any sane prefix must satisfy).
PATH_CHARS = re.compile(r"^/[^?#\s\x00-\x1f\x7f]{0,1023}$")  # Gateway API's 1,024 at most
# RFC 1123: labels of at most 63 characters, at most 253 in all.
HOST = re.compile(
    r"^(?=.{1,253}$)(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


def normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def normalize_path(path: str | None, path_type: str) -> str:
    """Prefix matching is element-wise, so a trailing slash carries no meaning there."""
    path = path or "/"
    if path_type in ("Prefix", "ImplementationSpecific"):
        stripped = path.rstrip("/")
        return stripped or "/"
    return path


#: the appProtocol values that say a Service port speaks HTTP/2 in clear text (Kubernetes'
#: standard one, and the bare names Istio and Envoy Gateway take too; gRPC without TLS is h2c)
H2C = frozenset({"kubernetes.io/h2c", "h2c", "grpc"})


def service_port(svc: Obj, port: Mapping[str, Any]) -> Obj | None:
    for p in (svc.get("spec") or {}).get("ports") or []:
        if "number" in port and p.get("port") == port["number"]:
            return dict(p)
        if "name" in port and p.get("name") == port["name"]:
            return dict(p)
    return None


def port_label(port: Mapping[str, Any]) -> str:
    return str(port["number"]) if "number" in port else str(port.get("name", ""))


def resolve_backend(
    namespace: str, backend: Obj, view: TenantView, problems: list[Problem], protocol: str = "TCP"
) -> Backend:
    """A Service port (of `protocol`) resolved to the nodePort Envoy dials, through the
    Service's NodePort twin when it is a ClusterIP one."""
    svc_ref = backend.get("service")
    if not svc_ref:
        problems.append(Problem("UnsupportedBackend", "resource backends are not supported"))
        return {"service": "", "port": "", "problem": "resource backends are not supported"}
    name = svc_ref.get("name", "")
    port_ref = svc_ref.get("port") or {}
    out: Backend = {"service": name, "port": port_label(port_ref)}

    def fail(reason: str, message: str) -> Backend:
        problems.append(Problem(reason, message))
        out["problem"] = message
        return out

    svc = view.get(SERVICES, namespace, name)
    if svc is None:
        return fail("BackendNotFound", f"Service {namespace}/{name} not found")
    malformed = shapes.problem(shapes.Service, svc)
    if malformed is not None:
        return fail("InvalidBackend", f"Service {namespace}/{name}: {malformed.message}")
    svc_type = (svc.get("spec") or {}).get("type", "ClusterIP")
    if svc_type == "ExternalName":
        return fail("UnsupportedBackend", f"Service {namespace}/{name} is of type ExternalName")
    port = service_port(svc, port_ref)
    if port is None:
        return fail(
            "BackendPortNotFound", f"Service {namespace}/{name} has no port {port_label(port_ref)}"
        )
    if port.get("protocol", "TCP") != protocol:
        return fail("UnsupportedBackend", f"Service port {port_label(port_ref)} is not {protocol}")
    if port.get("appProtocol") in H2C:
        out["protocol"] = "h2c"
    if not twins.needs_twin(svc):
        if not port.get("nodePort"):
            return fail("BackendPending", f"Service {namespace}/{name} has no nodePort yet")
        node_port = port["nodePort"]
    else:
        twin = view.twin(namespace, name)
        if twin is not None and not shapes.fits(shapes.Service, twin):
            return fail(
                "InvalidBackend", f"the NodePort for Service {namespace}/{name} is malformed"
            )
        twin_port = service_port(twin, {"number": port["port"]}) if twin else None
        if twin_port is None or not twin_port.get("nodePort"):
            return fail(
                "BackendPending", f"NodePort for Service {namespace}/{name} not allocated yet"
            )
        node_port = twin_port["nodePort"]
    refused = view.policy.node_port_problem(node_port)
    if refused is not None:
        return fail("NodePortRefused", f"Service {namespace}/{name}: {refused}")
    out["nodePort"] = node_port
    return out
