"""The HTTPRoute source: a tenant HTTPRoute attached to a Gateway of ours becomes a Route.

The attachment is decided here, where the Gateway, its listeners' `allowedRoutes` and the
namespaces' labels are seen: each parentRef becomes a `ParentRef` naming the Gateway's
record and the listeners the route is attached to, or why it is not (Gateway API's reasons:
NoMatchingParent, NotAllowedByListeners, NoMatchingListenerHostname). The data plane serves
the rules on those listeners only, never on the shared front.

Rules: one per hostname of the route (as the tenant wrote them, lower-cased; each one the
tenant may have; none: "" — every host the listener takes, at the Gateway's own address, so
no other tenant's); the hostnames a listener takes of them are the data plane's to work out.
Each match of a rule is a path with its header, query parameter and method matches, and the
rule's backendRefs resolved to nodePorts as an Ingress's backends are (sources/common.py).
What cannot be served is kept with a `problem` on the backend (a rule with an unsupported
filter, or no backend that resolves, answers 500 rather than fall through to another rule).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..objects import NAMESPACES, Obj, Resource, labels_of
from ..records.names import ROUTE
from ..records.problems import Problem, Translation
from ..records.status import SourceStatus
from ..records.types import (
    Backend,
    HeaderMatch,
    HTTPPath,
    HTTPRule,
    ParentRef,
    ParentRefSpec,
    PathType,
    RouteSpec,
)
from . import gatewayapi, httpfilters, shapes
from .base import References, StatusPatch, TenantView
from .common import HOST, PATH_CHARS, normalize_host, normalize_path, resolve_backend
from .dnsnames import not_allowed
from .gatewayapi import GATEWAYS, GROUP, HTTPROUTES, REFERENCE_GRANTS

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
#: a regular expression kubelbd hands on: short, and nothing RE2 (Envoy's engine) lacks or
#: that makes its program large (lookaround, backreferences, counted repetition, groups
#: with flags); Envoy refusing one would refuse the other routes sharing its table too
MAX_REGEX = 128
#: RFC 9110 field names (tchar), as Envoy checks a header matcher's; query parameter names
#: printable and not empty
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]{1,256}$")
_QUERY_NAME = re.compile(r"^[\x21-\x7e]{1,256}$")
_NOT_RE2 = re.compile(r"\(\?|\\[0-9]|\{|\\[pPC]")
#: problems one route may list in its record before the rest are summed up in one
MAX_PROBLEMS = 32


def _unsupported(what: str) -> Problem:
    return Problem("UnsupportedValue", what)


def regex_problem(value: str) -> str | None:
    """Why a regular expression is not handed to Envoy (None: it is)."""
    if len(value) > MAX_REGEX:
        return f"a regular expression of more than {MAX_REGEX} characters"
    if _NOT_RE2.search(value):
        return f"{value[:64]!r}: lookaround, backreferences, {{n}} and (?...) are not supported"
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError):
        return f"{value[:64]!r} is not a regular expression"
    return None


# ---- attachment ------------------------------------------------------------------------------


def parent_ref(ref: Mapping[str, Any]) -> ParentRefSpec:
    """The parentRef as the tenant wrote it, without nulls (echoed in status.parents)."""
    out: ParentRefSpec = {}
    for k in ("group", "kind", "namespace", "name", "sectionName", "port"):
        if ref.get(k) is not None:
            out[k] = ref[k]
    return out


def names_a_gateway(ref: Mapping[str, Any]) -> bool:
    return (ref.get("group") in (None, GROUP)) and (ref.get("kind") in (None, "Gateway"))


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (of the right shape) against labels; an operator it does not
    know matches nothing."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def allows_route(
    listener: Mapping[str, Any], gateway_ns: str, route_ns: str, view: TenantView
) -> bool:
    """Whether a listener's allowedRoutes take a route (of a kind it takes) from
    `route_ns`."""
    allowed = listener.get("allowedRoutes") or {}
    namespaces = allowed.get("namespaces") or {}
    where = namespaces.get("from") or "Same"
    if where == "All":
        return True
    if where == "Same":
        return route_ns == gateway_ns
    if where == "Selector":
        namespace = view.get(NAMESPACES, "", route_ns)
        return namespace is not None and selector_matches(
            namespaces.get("selector") or {}, labels_of(namespace)
        )
    return False  # None, or what this version does not know


def hostnames_meet(listener: str, route: str) -> bool:
    """Whether a listener's hostname and a route's have a name in common (Gateway API: a
    wildcard `*.x` is every name below x, at any depth, and x itself is not one of them)."""

    def covers(wildcard: str, name: str) -> bool:
        return wildcard.startswith("*.") and name.endswith(wildcard[1:])

    return listener == route or covers(listener, route) or covers(route, listener)


def attach(
    ref: Mapping[str, Any], route_ns: str, hostnames: list[str], view: TenantView
) -> ParentRef:
    """One parentRef, resolved: the Gateway's record and the listeners it takes the route
    on, or why none."""
    out: ParentRef = {
        "ref": parent_ref(ref), "gateway": "", "listeners": [],
        "accepted": False, "reason": "NoMatchingParent", "message": "",
    }  # fmt: skip
    ns = ref.get("namespace") or route_ns
    name = ref["name"]
    if not names_a_gateway(ref):
        out["message"] = f"{ref.get('kind')!s:.64} is not a kind of parent kubelbd serves"
        return out
    gateway = view.get(GATEWAYS, ns, name)
    if gateway is None:
        out["message"] = f"Gateway {ns}/{name} not found"
        return out
    if not gatewayapi.is_our_gateway(gateway, view):
        out["message"] = f"Gateway {ns}/{name} is not of a GatewayClass of kubelbd's"
        return out
    out["gateway"] = gatewayapi.gateway_record(ns, name)
    if not shapes.fits(shapes.Gateway, gateway):
        out["message"] = f"Gateway {ns}/{name} is malformed"
        return out
    found = gatewayapi.listeners(gateway, view)
    section, port = ref.get("sectionName"), ref.get("port")
    if section is not None and section not in found.names:
        out["message"] = f"Gateway {ns}/{name} has no listener {section[:253]!r}"
        return out
    candidates = [
        listener
        for listener in found.served
        if (section is None or listener["name"] == section)
        and (port is None or listener["port"] == port)
    ]
    if not candidates:
        what = " and ".join(
            w for w in (section and f"named {section!r}", port and f"on port {port}") if w
        )
        out["message"] = f"Gateway {ns}/{name} serves no listener {what}".rstrip()
        return out
    allowed = [
        c
        for c in candidates
        if "HTTPRoute" in found.resolved[c["name"]].kinds and allows_route(c, ns, route_ns, view)
    ]
    if not allowed:
        out["reason"] = "NotAllowedByListeners"
        out["message"] = f"no listener of Gateway {ns}/{name} allows this route"
        return out
    attached = [
        c["name"]
        for c in allowed
        if not c.get("hostname")
        or not hostnames
        or any(hostnames_meet(c["hostname"], h) for h in hostnames)
    ]
    if not attached:
        out["reason"] = "NoMatchingListenerHostname"
        out["message"] = f"no hostname of the route is one a listener of {ns}/{name} takes"
        return out
    out["accepted"], out["reason"], out["message"] = True, "Accepted", "attached"
    out["listeners"] = attached
    return out


# ---- backends --------------------------------------------------------------------------------


def backend_target(
    ref: Mapping[str, Any], route_ns: str, view: TenantView
) -> tuple[str, str] | Problem:
    """The Service (namespace, name) a backendRef may name, or why it may not."""
    group, kind = ref.get("group") or "", ref.get("kind") or "Service"
    name = ref["name"]
    if group != "" or kind != "Service":
        return Problem(
            "InvalidKind", f"backend {kind[:64]!s} of group {group[:64]!r}: Services only"
        )
    ns = ref.get("namespace") or route_ns
    grants = gatewayapi.grants_in(view, ns)
    if ns != route_ns and not gatewayapi.granted(
        grants, ("HTTPRoute", route_ns), ("Service", name)
    ):
        return Problem(
            "RefNotPermitted",
            f"Service {ns}/{name}: no ReferenceGrant in {ns} lets HTTPRoutes of {route_ns} use it",
        )
    if ref.get("port") is None:
        return Problem("UnsupportedValue", f"Service {ns}/{name}: backendRef has no port")
    return (ns, name)


def broken(message: str) -> Backend:
    return {"service": "", "port": "", "problem": message}


def resolve(
    ref: Mapping[str, Any], route_ns: str, view: TenantView, problems: list[Problem]
) -> Backend:
    target = backend_target(ref, route_ns, view)
    weight = ref.get("weight")
    ns = ref.get("namespace") or route_ns
    # Another namespace's Service is named with its namespace.
    label = ref["name"] if ns == route_ns else f"{ns}/{ref['name']}"
    if isinstance(target, Problem):
        problems.append(target)
        out = broken(target.message)
    elif ref.get("filters"):
        types = ", ".join(sorted({f["type"][:64] for f in ref["filters"]}))
        message = f"backendRef {label}: filters {types} are not supported"
        problems.append(Problem("UnsupportedFilter", message))
        out = broken(message)
    else:
        spec = {"service": {"name": ref["name"], "port": {"number": ref["port"]}}}
        out = resolve_backend(ns, spec, view, problems)
    out["service"] = label
    if ref.get("port") is not None:
        out["port"] = str(ref["port"])
    out["weight"] = 1 if weight is None else weight
    return out


# ---- matches ---------------------------------------------------------------------------------


def value_matches(
    items: Iterable[Mapping[str, Any]], what: str, lower: bool, problems: list[Problem]
) -> list[HeaderMatch] | None:
    """Header (names lower-cased) or query parameter matches; the first of a name counts,
    as Gateway API says. None: one cannot be served (the match is not)."""
    out: list[HeaderMatch] = []
    seen: set[str] = set()
    for item in items:
        name = item["name"].lower() if lower else item["name"]
        if not (_HEADER_NAME if lower else _QUERY_NAME).fullmatch(name):
            # Envoy refuses a listener whose matcher names no valid header or parameter:
            # never handed one (the CRD's own validation is the tenant's to change).
            problems.append(_unsupported(f"{what} name {name[:64]!r}"))
            return None
        kind = item.get("type") or "Exact"
        if kind not in ("Exact", "RegularExpression"):
            problems.append(_unsupported(f"{what} {name[:64]!r}: match type {kind[:32]!r}"))
            return None
        why = regex_problem(item["value"]) if kind == "RegularExpression" else None
        if why is not None:
            problems.append(_unsupported(f"{what} {name[:64]!r}: {why}"))
            return None
        if name in seen:
            continue
        seen.add(name)
        out.append({"name": name, "value": item["value"],
                    "type": "Exact" if kind == "Exact" else "RegularExpression"})  # fmt: skip
    return out


def path_of(match: Mapping[str, Any], problems: list[Problem]) -> HTTPPath | None:
    """A match as a path without backends (None: it cannot be served; a problem says why)."""
    path = match.get("path") or {}
    kind = path.get("type") or "PathPrefix"
    value = path.get("value") or "/"
    types: dict[str, PathType] = {"Exact": "Exact", "PathPrefix": "Prefix"}
    if kind not in types:
        problems.append(_unsupported(f"path {value[:64]!r}: match type {kind[:32]!r}"))
        return None
    if not PATH_CHARS.fullmatch(value):
        problems.append(Problem("InvalidPath", f"path {value[:64]!r} cannot be matched"))
        return None
    out: HTTPPath = {
        "path": normalize_path(value, types[kind]),
        "pathType": types[kind],
        "backends": [],
    }
    headers = value_matches(match.get("headers") or [], "header", True, problems)
    params = value_matches(match.get("queryParams") or [], "query parameter", False, problems)
    if headers is None or params is None:
        return None
    if headers:
        out["headers"] = headers
    if params:
        out["queryParams"] = params
    method = match.get("method")
    if method is not None:
        if method not in METHODS:
            problems.append(_unsupported(f"method {method[:32]!r}"))
            return None
        out["method"] = method
    return out


def paths_of(
    rule: Mapping[str, Any], ns: str, view: TenantView, problems: list[Problem]
) -> list[HTTPPath]:
    filters = httpfilters.of_rule(rule)
    if filters.problem is not None:
        problems.append(filters.problem)
        backends: list[Backend] = []  # served, as nothing: 500
    else:
        # No backendRefs is allowed, and answers 500 (an empty target); its references are
        # all resolved, so ResolvedRefs stays True.
        backends = [resolve(ref, ns, view, problems) for ref in rule.get("backendRefs") or []]
    out = []
    for match in rule.get("matches") or [{}]:
        path = path_of(match, problems)
        if path is not None:
            path["backends"] = copy.deepcopy(backends)
            filters.apply(path)
            out.append(path)
    return out


# ---- the route -------------------------------------------------------------------------------


def hostnames_of(spec: Mapping[str, Any], policy: Any, problems: list[Problem]) -> list[str] | None:
    """The route's hostnames the tenant may have; [] when it names none (every host the
    listener takes); None when it named some and none is left."""
    named = spec.get("hostnames") or []
    out: list[str] = []
    for raw in named:
        host = normalize_host(raw)
        if not HOST.fullmatch(host):
            problems.append(Problem("InvalidHost", f"hostname {host[:253]!r} is not a DNS name"))
        elif not policy.allows_host(host):
            problems.append(not_allowed(host))
        elif host not in out:
            out.append(host)
    return out if out or not named else None


def translate(route: Obj, view: TenantView) -> Translation[RouteSpec]:
    malformed = shapes.problem(shapes.HTTPRoute, route)
    if malformed is not None:
        refused: RouteSpec = {
            "source": shapes.source_ref("HTTPRoute", route), "rules": [], "parents": [],
            "problems": [malformed.spec()],
        }  # fmt: skip
        return Translation(refused, [malformed])
    meta = route.get("metadata") or {}
    ns = meta.get("namespace", "")
    spec = route.get("spec") or {}
    problems: list[Problem] = []
    hostnames = hostnames_of(spec, view.policy, problems)
    parents = [attach(ref, ns, hostnames or [], view) for ref in spec.get("parentRefs") or []]
    paths = [p for rule in spec.get("rules") or [] for p in paths_of(rule, ns, view, problems)]
    rules: list[HTTPRule] = []
    if hostnames is not None and paths:
        for host in hostnames or [""]:
            rules.append({"host": host, "paths": copy.deepcopy(paths)})
    out: RouteSpec = {
        "source": shapes.source_ref("HTTPRoute", route),
        "rules": rules,
        "parents": parents,
    }
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS + 1
        last = Problem(problems[MAX_PROBLEMS - 1].reason, f"and {more} more problems")
        problems = [*problems[: MAX_PROBLEMS - 1], last]
    if problems:
        out["problems"] = [p.spec() for p in problems]
    return Translation(out, problems)


def is_ours(route: Obj, view: TenantView) -> bool:
    """Whether any parentRef names a Gateway of ours."""
    if not shapes.fits(shapes.ParentRefsOf, route):
        return False
    ns = (route.get("metadata") or {}).get("namespace", "")
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        if names_a_gateway(ref):
            gateway = view.get(GATEWAYS, ref.get("namespace") or ns, ref["name"])
            if gateway is not None and gatewayapi.is_our_gateway(gateway, view):
                return True
    return False


def references(route: Obj, view: TenantView) -> References:
    """Backend Services it may use (a cross-namespace one only with its grant: no twin for
    a Service the route may not name), and the Gateways, namespaces and grants it reads."""
    if not shapes.fits(shapes.HTTPRoute, route):
        return References()
    ns = (route.get("metadata") or {}).get("namespace", "")
    spec = route.get("spec") or {}
    backends: set[tuple[str, str]] = set()
    others: set[tuple[Resource, tuple[str, str]]] = {(NAMESPACES, ("", ns))}
    for rule in spec.get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            target = backend_target(ref, ns, view)
            target_ns = ref.get("namespace") or ns
            if target_ns != ns:
                # Every grant in that namespace, also one made later (References).
                others.add((REFERENCE_GRANTS, (target_ns, "")))
            if not isinstance(target, Problem):
                backends.add(target)
    for ref in spec.get("parentRefs") or []:
        others.add((GATEWAYS, (ref.get("namespace") or ns, ref["name"])))
    return References(backends=frozenset(backends), others=frozenset(others))


def status_patch(route: Obj, status: SourceStatus, now: str) -> StatusPatch | None:
    """`status.parents`: kubelbd's entries are the data plane's document (none, once the
    record is gone), other controllers' are kept. A merge patch replaces the whole list, so
    it carries the resourceVersion it was made from: a write another controller made
    meanwhile makes it fail (409) and it is made again from the newer object."""
    if not status.document and not status.final:
        return None
    want = gatewayapi.document(status.document) if status.document else []
    have = gatewayapi.current_status(route).get("parents")
    have = have if isinstance(have, list) else []
    mine = gatewayapi.ours(have)
    if gatewayapi.without_times(mine) == want:
        return None
    others = [e for e in have if e not in mine]
    parents = others + gatewayapi.stamped(want, mine, now)
    body: Obj = {"status": {"parents": parents}}
    version = (route.get("metadata") or {}).get("resourceVersion")
    if isinstance(version, str) and version:
        body["metadata"] = {"resourceVersion": version}
    return StatusPatch(body)


class HTTPRouteSource:
    """gateway.networking.k8s.io/v1 HTTPRoute (on a Gateway of ours) → Route."""

    kind = "HTTPRoute"
    api_version = gatewayapi.API_VERSION
    resource = HTTPROUTES
    depends_on: tuple[Resource, ...] = ()
    #: a change to a Gateway it names, its namespace (labels) or a grant translates it again
    referenced: tuple[Resource, ...] = (GATEWAYS, NAMESPACES, REFERENCE_GRANTS)
    record = ROUTE

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        return is_ours(obj, view)

    def record_name(self, namespace: str, name: str) -> str:
        return gatewayapi.httproute_record(namespace, name)

    def references(self, obj: Obj, view: TenantView) -> References:
        return references(obj, view)

    def translate(self, obj: Obj, view: TenantView) -> Translation[RouteSpec]:
        return translate(obj, view)

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        return status_patch(obj, status, gatewayapi.now())

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        return []

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        return []
