"""The GRPCRoute source: a tenant GRPCRoute attached to a Gateway of ours becomes a Route.

What route kinds share (attachment, backends, hostnames, status) is sources/routes.py; what
is GRPCRoute's is how a match becomes a path: a gRPC call is an HTTP/2 POST to
`/<service>/<method>`, so a method match is an Exact path (service and method) or a prefix
(a service's every method), beside its header matches; its backends speak HTTP/2 (h2c).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..records.problems import Problem
from ..records.types import HTTPPath
from . import routes, shapes
from .gatewayapi import GRPCROUTES

#: what Gateway API's CRD lets a service and a method be (a tenant may loosen it)
SERVICE = re.compile(r"\.?[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*")
METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
MAX_NAME = 1024


def path_of(match: Mapping[str, Any], problems: list[Problem]) -> HTTPPath | None:
    """A match as a path without backends (None: it cannot be served; a problem says why)."""
    method = match.get("method") or {}
    kind = method.get("type") or "Exact"
    service, name = method.get("service") or "", method.get("method") or ""
    if kind != "Exact":
        problems.append(routes.unsupported(f"method match type {kind[:32]!r}"))
        return None
    for what, value, pattern in (("service", service, SERVICE), ("method", name, METHOD)):
        if value and (len(value) > MAX_NAME or not pattern.fullmatch(value)):
            problems.append(routes.unsupported(f"{what} {value[:64]!r}"))
            return None
    if name and not service:
        problems.append(routes.unsupported(f"method {name[:64]!r} without its service"))
        return None
    out: HTTPPath
    if service and name:
        out = {"path": f"/{service}/{name}", "pathType": "Exact", "backends": []}
    else:
        out = {"path": f"/{service}" if service else "/", "pathType": "Prefix", "backends": []}
    headers = routes.value_matches(match.get("headers") or [], "header", True, problems)
    if headers is None:
        return None
    if headers:
        out["headers"] = headers
    return out


class GRPCRouteSource(routes.RouteSource):
    """gateway.networking.k8s.io/v1 GRPCRoute (on a Gateway of ours) → Route."""

    kind = "GRPCRoute"
    resource = GRPCROUTES
    shape = shapes.GRPCRoute
    path_of = staticmethod(path_of)
