"""The HTTPRoute source: a tenant HTTPRoute attached to a Gateway of ours becomes a Route.

What route kinds share (attachment, backends, hostnames, status) is sources/routes.py; what
is HTTPRoute's is how a match becomes a path: its path (Exact or PathPrefix), header, query
parameter and method matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..objects import Obj
from ..records.problems import Problem, Translation
from ..records.types import HTTPPath, PathType, RouteSpec
from . import routes, shapes
from .base import TenantView
from .common import PATH_CHARS, normalize_path
from .gatewayapi import HTTPROUTES

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def path_of(match: Mapping[str, Any], problems: list[Problem]) -> HTTPPath | None:
    """A match as a path without backends (None: it cannot be served; a problem says why)."""
    path = match.get("path") or {}
    kind = path.get("type") or "PathPrefix"
    value = path.get("value") or "/"
    types: dict[str, PathType] = {"Exact": "Exact", "PathPrefix": "Prefix"}
    if kind not in types:
        problems.append(routes.unsupported(f"path {value[:64]!r}: match type {kind[:32]!r}"))
        return None
    if not PATH_CHARS.fullmatch(value):
        problems.append(Problem("InvalidPath", f"path {value[:64]!r} cannot be matched"))
        return None
    out: HTTPPath = {
        "path": normalize_path(value, types[kind]),
        "pathType": types[kind],
        "backends": [],
    }
    headers = routes.value_matches(match.get("headers") or [], "header", True, problems)
    params = routes.value_matches(
        match.get("queryParams") or [], "query parameter", False, problems
    )
    if headers is None or params is None:
        return None
    if headers:
        out["headers"] = headers
    if params:
        out["queryParams"] = params
    method = match.get("method")
    if method is not None:
        if method not in METHODS:
            problems.append(routes.unsupported(f"method {method[:32]!r}"))
            return None
        out["method"] = method
    return out


def translate(route: Obj, view: TenantView) -> Translation[RouteSpec]:
    return HTTPRouteSource().translate(route, view)


class HTTPRouteSource(routes.RouteSource):
    """gateway.networking.k8s.io/v1 HTTPRoute (on a Gateway of ours) → Route."""

    kind = "HTTPRoute"
    resource = HTTPROUTES
    shape = shapes.HTTPRoute
    path_of = staticmethod(path_of)
