"""The TLSRoute, TCPRoute and UDPRoute sources: a tenant TLSRoute, TCPRoute or UDPRoute
attached to a TLS, TCP or UDP listener of a Gateway of ours becomes a Route.

What route kinds share (attachment, backends, hostnames, status) is sources/routes.py. These
have no matches: a rule is its backendRefs, recorded as one path (`/`) so that the Route
record keeps one shape for every kind. A TCP or UDP listener proxies its connections
(datagrams) to the backends of the oldest route attached to it; a TLS listener chooses the
route by the connection's SNI among the route's hostnames (records one rule per hostname, as
for HTTPRoute).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..records.problems import Problem
from ..records.types import HTTPPath
from . import routes, shapes
from .gatewayapi import TCPROUTES, TLSROUTES, UDPROUTES


def path_of(match: Mapping[str, Any], problems: list[Problem]) -> HTTPPath | None:
    """A rule (no matches): every connection."""
    return {"path": "/", "pathType": "Prefix", "backends": []}


class TLSRouteSource(routes.RouteSource):
    """gateway.networking.k8s.io/v1 TLSRoute (on a Gateway of ours) → Route."""

    kind = "TLSRoute"
    resource = TLSROUTES
    shape = shapes.TLSRoute
    path_of = staticmethod(path_of)


class TCPRouteSource(routes.RouteSource):
    """gateway.networking.k8s.io/v1 TCPRoute (on a Gateway of ours) → Route."""

    kind = "TCPRoute"
    resource = TCPROUTES
    shape = shapes.L4Route
    path_of = staticmethod(path_of)


class UDPRouteSource(routes.RouteSource):
    """gateway.networking.k8s.io/v1 UDPRoute (on a Gateway of ours) → Route."""

    kind = "UDPRoute"
    resource = UDPROUTES
    shape = shapes.L4Route
    path_of = staticmethod(path_of)
