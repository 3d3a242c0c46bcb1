"""What Gateway API's route kinds (HTTPRoute, GRPCRoute) share: their attachment to
Gateways, their backends, header matches, hostnames, the record they become and the status
they are given. Pure.

The attachment is decided here, where the Gateway, its listeners' `allowedRoutes` and the
namespaces' labels are seen: each parentRef becomes a `ParentRef` naming the Gateway's
record and the listeners the route is attached to, or why it is not (Gateway API's reasons:
NoMatchingParent, NotAllowedByListeners, NoMatchingListenerHostname). The data plane serves
the rules on those listeners only, never on the shared front.

Rules: one per hostname of the route (as the tenant wrote them, lower-cased; each one the
tenant may have; none: "" — every host the listener takes, at the Gateway's own address, so
no other tenant's); the hostnames a listener takes of them are the data plane's to work out.
Each match of a rule is a path (its kind's module says how a match becomes one) with the
rule's backendRefs resolved to nodePorts as an Ingress's backends are (sources/common.py).
What cannot be served is kept with a `problem` on the backend (a rule with an unsupported
filter, or no backend that resolves, answers 500 rather than fall through to another rule).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..objects import CONFIGMAPS, NAMESPACES, Obj, Resource, labels_of
from ..records.names import ROUTE
from ..records.problems import Problem, Translation, capped
from ..records.status import SourceStatus
from ..records.types import (
    Backend,
    HeaderMatch,
    HTTPPath,
    HTTPRule,
    ParentRef,
    ParentRefSpec,
    RouteSpec,
    UpstreamTLS,
)
from . import backendtls, gatewayapi, httpfilters, shapes
from .backendtls import BACKEND_TLS_POLICIES
from .base import References, StatusPatch, TenantView
from .common import HOST, normalize_host, resolve_backend
from .dnsnames import not_allowed
from .gatewayapi import GATEWAYS, GROUP, REFERENCE_GRANTS

#: a regular expression kubelbd hands on: short, and nothing RE2 (Envoy's engine) lacks or
#: that makes its program large (lookaround, backreferences, counted repetition, groups
#: with flags); Envoy refusing one would refuse the other routes sharing its table too
MAX_REGEX = 128
#: RFC 9110 field names (tchar), as Envoy checks a header matcher's; query parameter names
#: printable and not empty
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]{1,256}$")
_QUERY_NAME = re.compile(r"^[\x21-\x7e]{1,256}$")
_NOT_RE2 = re.compile(r"\(\?|\\[0-9]|\{|\\[pPC]")


def unsupported(what: str) -> Problem:
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


#: what one route may have, as Gateway API's CRD allows (a tenant may loosen its CRD; what
#: is past these is refused with a problem): parentRefs, hostnames, rules, matches per rule
#: and in all, backendRefs per rule
MAX_PARENTS = 32
MAX_HOSTNAMES = 16
MAX_RULES = 16
MAX_RULE_MATCHES = 64
MAX_MATCHES = 128
MAX_BACKENDS = 16


def parent_refs(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A route's parentRefs: each once, at most MAX_PARENTS."""
    out: list[Mapping[str, Any]] = []
    for ref in spec.get("parentRefs") or []:
        if ref not in out:
            out.append(ref)
        if len(out) == MAX_PARENTS:
            break
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
    kind: str, ref: Mapping[str, Any], route_ns: str, hostnames: list[str], view: TenantView
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
    found = gatewayapi.listeners(gateway, view, certificates=False)
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
        if kind in found.resolved[c["name"]].kinds and allows_route(c, ns, route_ns, view)
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
    kind: str, ref: Mapping[str, Any], route_ns: str, view: TenantView
) -> tuple[str, str] | Problem:
    """The Service (namespace, name) a backendRef may name, or why it may not."""
    group, ref_kind = ref.get("group") or "", ref.get("kind") or "Service"
    name = ref["name"]
    if group != "" or ref_kind != "Service":
        return Problem(
            "InvalidKind", f"backend {ref_kind[:64]!s} of group {group[:64]!r}: Services only"
        )
    ns = ref.get("namespace") or route_ns
    grants = gatewayapi.grants_in(view, ns)
    if ns != route_ns and not gatewayapi.granted(grants, (kind, route_ns), ("Service", name)):
        return Problem(
            "RefNotPermitted",
            f"Service {ns}/{name}: no ReferenceGrant in {ns} lets {kind}s of {route_ns} use it",
        )
    if ref.get("port") is None:
        return Problem("UnsupportedValue", f"Service {ns}/{name}: backendRef has no port")
    return (ns, name)


def broken(message: str) -> Backend:
    return {"service": "", "port": "", "problem": message}


def resolve(
    kind: str,
    ref: Mapping[str, Any],
    route_ns: str,
    view: TenantView,
    problems: list[Problem],
    upstream: dict[str, UpstreamTLS] | None = None,
) -> Backend:
    """A backendRef resolved to the nodePort Envoy dials; a GRPCRoute's backend speaks
    HTTP/2 whatever its Service port says. A BackendTLSPolicy that applies makes Envoy speak
    TLS to it (kept in `upstream`, by its key), or leaves it unserved when it cannot be used."""
    target = backend_target(kind, ref, route_ns, view)
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
        protocol = "UDP" if kind == "UDPRoute" else "TCP"
        out = resolve_backend(ns, spec, view, problems, protocol)
        if "nodePort" in out and kind in backendtls.ROUTE_KINDS:
            out = _in_tls(out, ns, ref, label, view, problems, upstream)
    out["service"] = label
    if ref.get("port") is not None:
        out["port"] = str(ref["port"])
    out["weight"] = 1 if weight is None else weight
    if kind == "GRPCRoute":
        out["protocol"] = "h2c"
    return out


def _in_tls(
    out: Backend,
    ns: str,
    ref: Mapping[str, Any],
    label: str,
    view: TenantView,
    problems: list[Problem],
    upstream: dict[str, UpstreamTLS] | None,
) -> Backend:
    """A resolved backend as the BackendTLSPolicy for it says: as it is (none applies),
    spoken to in TLS (its validation kept in `upstream`), or unserved (the policy cannot be
    used, or the route has too many validations): its share answers 500, never in plain
    text instead."""
    tls = backendtls.upstream(view, ns, ref["name"], ref["port"])
    if tls is None:
        return out
    if isinstance(tls, str):
        return broken(tls)
    key = backendtls.key_of(tls)
    if upstream is not None and key not in upstream:
        if len(upstream) >= backendtls.MAX_PER_ROUTE:
            message = (
                f"backendRef {label}: more than {backendtls.MAX_PER_ROUTE} different "
                "BackendTLSPolicy validations in one route"
            )
            problems.append(unsupported(message))
            return broken(message)
        upstream[key] = tls
    out["tls"] = key
    return out


# ---- matches ----------------------------------------------------------------------------------


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
            problems.append(unsupported(f"{what} name {name[:64]!r}"))
            return None
        kind = item.get("type") or "Exact"
        if kind not in ("Exact", "RegularExpression"):
            problems.append(unsupported(f"{what} {name[:64]!r}: match type {kind[:32]!r}"))
            return None
        why = regex_problem(item["value"]) if kind == "RegularExpression" else None
        if why is not None:
            problems.append(unsupported(f"{what} {name[:64]!r}: {why}"))
            return None
        if name in seen:
            continue
        seen.add(name)
        out.append({"name": name, "value": item["value"],
                    "type": "Exact" if kind == "Exact" else "RegularExpression"})  # fmt: skip
    return out


def _at_most(items: list[Any], limit: int, what: str, problems: list[Problem]) -> list[Any]:
    if len(items) > limit:
        problems.append(unsupported(f"{len(items)} {what}: at most {limit} are served"))
    return items[:limit]


def rule_paths(
    kind: str,
    rule: Mapping[str, Any],
    ns: str,
    view: TenantView,
    problems: list[Problem],
    path_of: Callable[[Mapping[str, Any], list[Problem]], HTTPPath | None],
    upstream: dict[str, UpstreamTLS] | None = None,
) -> list[HTTPPath]:
    """A rule's paths: each match as its kind's `path_of` makes it, with the rule's filters
    and timeouts, and its backends (how Envoy speaks TLS to them collected in `upstream`)."""
    served = httpfilters.GRPC_SERVED if kind == "GRPCRoute" else httpfilters.SERVED
    filters = httpfilters.of_rule(rule, served)
    if filters.problem is not None:
        problems.append(filters.problem)
        backends: list[Backend] = []  # served, as nothing: 500
    else:
        # No backendRefs is allowed, and answers 500 (an empty target); its references are
        # all resolved, so ResolvedRefs stays True.
        refs = _at_most(rule.get("backendRefs") or [], MAX_BACKENDS, "backendRefs", problems)
        backends = [resolve(kind, ref, ns, view, problems, upstream) for ref in refs]
    out = []
    for match in _at_most(rule.get("matches") or [{}], MAX_RULE_MATCHES, "matches", problems):
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
    named = _at_most(spec.get("hostnames") or [], MAX_HOSTNAMES, "hostnames", problems)
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


#: a rule's paths: (rule, route namespace, view, problems, upstream TLS collected) -> paths
PathsOf = Callable[
    [Mapping[str, Any], str, TenantView, list[Problem], dict[str, UpstreamTLS]], list[HTTPPath]
]


def translate(
    kind: str, shape: type[Any], paths_of: PathsOf, route: Obj, view: TenantView
) -> Translation[RouteSpec]:
    """A route of `kind` (checked against `shape`) as a Route record's spec; `paths_of`
    makes a rule's paths, as its kind matches requests."""
    malformed = shapes.problem(shape, route)
    if malformed is not None:
        refused: RouteSpec = {
            "source": shapes.source_ref(kind, route), "rules": [], "parents": [],
            "problems": [malformed.spec()],
        }  # fmt: skip
        return Translation(refused, [malformed])
    meta = route.get("metadata") or {}
    ns = meta.get("namespace", "")
    spec = route.get("spec") or {}
    problems: list[Problem] = []
    hostnames = hostnames_of(spec, view.policy, problems)
    parents = [attach(kind, ref, ns, hostnames or [], view) for ref in parent_refs(spec)]
    listed = _at_most(spec.get("rules") or [], MAX_RULES, "rules", problems)
    upstream: dict[str, UpstreamTLS] = {}
    paths = _at_most(
        [p for rule in listed for p in paths_of(rule, ns, view, problems, upstream)],
        MAX_MATCHES, "matches in all", problems,
    )  # fmt: skip
    rules: list[HTTPRule] = []
    if hostnames is not None and paths:
        for host in hostnames or [""]:
            rules.append({"host": host, "paths": copy.deepcopy(paths)})
    out: RouteSpec = {
        "source": shapes.source_ref(kind, route),
        "rules": rules,
        "parents": parents,
    }
    if upstream:
        out["backendTLS"] = {k: upstream[k] for k in sorted(upstream)}
    problems = capped(problems)
    if problems:
        out["problems"] = [p.spec() for p in problems]
    return Translation(out, problems)


def is_ours(route: Obj, view: TenantView) -> bool:
    """Whether any parentRef names a Gateway of ours."""
    if not shapes.fits(shapes.ParentRefsOf, route):
        return False
    ns = (route.get("metadata") or {}).get("namespace", "")
    for ref in parent_refs(route.get("spec") or {}):
        if names_a_gateway(ref):
            gateway = view.get(GATEWAYS, ref.get("namespace") or ns, ref["name"])
            if gateway is not None and gatewayapi.is_our_gateway(gateway, view):
                return True
    return False


def references(kind: str, shape: type[Any], route: Obj, view: TenantView) -> References:
    """Backend Services it may use (a cross-namespace one only with its grant: no twin for
    a Service the route may not name), and the Gateways, namespaces and grants it reads."""
    if not shapes.fits(shape, route):
        return References()
    ns = (route.get("metadata") or {}).get("namespace", "")
    spec = route.get("spec") or {}
    backends: set[tuple[str, str]] = set()
    others: set[tuple[Resource, tuple[str, str]]] = {(NAMESPACES, ("", ns))}
    for rule in spec.get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            target = backend_target(kind, ref, ns, view)
            target_ns = ref.get("namespace") or ns
            if target_ns != ns:
                # Every grant in that namespace, also one made later (References).
                others.add((REFERENCE_GRANTS, (target_ns, "")))
            if not isinstance(target, Problem):
                backends.add(target)
                if kind in backendtls.ROUTE_KINDS and isinstance(ref.get("port"), int):
                    others |= backendtls.references(view, *target, ref["port"])
    for ref in parent_refs(spec):
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


class RouteSource:
    """What a Gateway API route kind's Source is (sources.base.Source), but for its kind,
    its resource, the shape it is checked against and how one of its matches becomes a path
    (`path_of`): the subclass in the kind's module says those."""

    kind: str
    resource: Resource
    shape: type[Any]
    api_version = gatewayapi.API_VERSION
    depends_on: tuple[Resource, ...] = ()
    #: a change to a Gateway it names, its namespace (labels), a grant, or a BackendTLSPolicy
    #: or CA certificate of its backends translates it again
    referenced: tuple[Resource, ...] = (
        GATEWAYS, NAMESPACES, REFERENCE_GRANTS, BACKEND_TLS_POLICIES, CONFIGMAPS,
    )  # fmt: skip
    record = ROUTE

    @staticmethod
    def path_of(match: Mapping[str, Any], problems: list[Problem]) -> HTTPPath | None:
        """One match of a rule as a path without backends (None: it cannot be served)."""
        raise NotImplementedError

    def paths_of(
        self,
        rule: Mapping[str, Any],
        ns: str,
        view: TenantView,
        problems: list[Problem],
        upstream: dict[str, UpstreamTLS],
    ) -> list[HTTPPath]:
        return rule_paths(self.kind, rule, ns, view, problems, self.path_of, upstream)

    def record_name(self, namespace: str, name: str) -> str:
        return gatewayapi.route_record(self.kind, namespace, name)

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        return is_ours(obj, view)

    def references(self, obj: Obj, view: TenantView) -> References:
        return references(self.kind, self.shape, obj, view)

    def translate(self, obj: Obj, view: TenantView) -> Translation[RouteSpec]:
        return translate(self.kind, self.shape, self.paths_of, obj, view)

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        return status_patch(obj, status, gatewayapi.now())

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        return []

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        return []
