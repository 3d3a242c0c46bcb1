"""An HTTPRoute rule's filters and timeouts, as the record carries them (pure): headers of
the request and of the response changed, the Host and path the backend gets rewritten, or a
redirect answered instead of forwarding; how long the whole request, and each request to a
backend, may take.

Every value is checked here for what Envoy would refuse (it would reject the whole listener
file, every tenant's change with it): header names are HTTP tokens and never pseudo-headers
or `host` (Envoy does not let a route rewrite those), values hold no line break or NUL, a
hostname is a DNS name, a path starts with `/` and holds no control character, space, `?`
or `#`. A filter kubelbd does not serve, or one that does not check out, leaves the rule
answering 500 (Gateway API's answer for a rule that cannot be served) with a problem; a
tenant that loosened its CRD gets the same, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..records.problems import Problem
from ..records.types import (
    HeaderFilter,
    HeaderValue,
    HTTPPath,
    PathChange,
    Redirect,
    Rewrite,
    Timeouts,
)
from .common import HOST

#: the filters served, by Gateway API's type names: an HTTPRoute's, and a GRPCRoute's (whose
#: CRD has neither redirects nor rewrites)
SERVED = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")
GRPC_SERVED = ("RequestHeaderModifier", "ResponseHeaderModifier")
#: RFC 9110 token: what a header name may be
TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,256}")
#: headers a route may not change in Envoy
RESERVED = frozenset({"host"})
MAX_VALUE = 4096
#: entries per list (set, add, remove), as Gateway API's CRD allows
MAX_HEADERS = 16
REDIRECT_CODES = (301, 302, 303, 307, 308)


class Filters:
    """What a rule's filters make of its paths, or the problem that leaves it answering 500."""

    def __init__(self) -> None:
        self.request_headers: HeaderFilter | None = None
        self.response_headers: HeaderFilter | None = None
        self.redirect: Redirect | None = None
        self.rewrite: Rewrite | None = None
        self.timeouts: Timeouts | None = None
        self.problem: Problem | None = None

    def apply(self, path: HTTPPath) -> None:
        """Onto one of the rule's paths."""
        if self.request_headers:
            path["requestHeaders"] = self.request_headers
        if self.response_headers:
            path["responseHeaders"] = self.response_headers
        if self.redirect is not None:
            path["redirect"] = self.redirect
        if self.rewrite:
            path["rewrite"] = self.rewrite
        if self.timeouts:
            path["timeouts"] = self.timeouts


def of_rule(rule: Mapping[str, Any], served: tuple[str, ...] = SERVED) -> Filters:
    """A rule's filters (those `served`) and timeouts (of the right shape), checked."""
    out = Filters()
    timeouts = timeouts_of(rule.get("timeouts") or {})
    if isinstance(timeouts, Problem):
        out.problem = timeouts
        return out
    out.timeouts = timeouts
    seen: set[str] = set()
    for f in rule.get("filters") or []:
        kind = f["type"]
        if kind not in served:
            out.problem = Problem("UnsupportedFilter", f"filter {kind[:64]} is not supported")
            return out
        if kind in seen:
            out.problem = Problem("UnsupportedValue", f"filter {kind} given twice")
            return out
        seen.add(kind)
        problem = _one(kind, f, out)
        if problem is not None:
            out.problem = problem
            return out
    if out.redirect is not None and out.rewrite:
        out.problem = Problem("UnsupportedValue", "a rule both redirects and rewrites")
        return out
    changes = [c.get("path") for c in (out.redirect, out.rewrite) if c]
    if any(c and c["type"] == "ReplacePrefixMatch" for c in changes) and not _prefixes(rule):
        # Gateway API's CRD refuses it; a tenant that loosened its CRD gets a problem.
        out.problem = Problem(
            "UnsupportedValue", "ReplacePrefixMatch needs every match to be a PathPrefix"
        )
    return out


def _prefixes(rule: Mapping[str, Any]) -> bool:
    """Whether every match of the rule is a path prefix (none: "/", a prefix). Read with
    care: a GRPCRoute's shape does not check a `path` its CRD does not have."""
    for m in rule.get("matches") or [{}]:
        path = (m.get("path") or {}) if isinstance(m, dict) else None
        if not isinstance(path, dict) or (path.get("type") or "PathPrefix") != "PathPrefix":
            return False
    return True


def _one(kind: str, f: Mapping[str, Any], out: Filters) -> Problem | None:
    if kind == "RequestRedirect":
        redirect = redirect_of(f.get("requestRedirect") or {})
        if isinstance(redirect, Problem):
            return redirect
        out.redirect = redirect
        return None
    if kind == "URLRewrite":
        rewrite = rewrite_of(f.get("urlRewrite") or {})
        if isinstance(rewrite, Problem):
            return rewrite
        out.rewrite = rewrite
        return None
    field = "requestHeaderModifier" if kind == "RequestHeaderModifier" else "responseHeaderModifier"
    headers = headers_of(f.get(field) or {})
    if isinstance(headers, Problem):
        return headers
    if kind == "RequestHeaderModifier":
        out.request_headers = headers
    else:
        out.response_headers = headers
    return None


def _name_problem(name: str) -> Problem | None:
    if not TOKEN.fullmatch(name):
        return Problem("UnsupportedValue", f"header name {name[:64]!r} is not an HTTP token")
    if name.lower() in RESERVED:
        return Problem("UnsupportedValue", f"header {name[:64]!r} cannot be changed by a route")
    return None


def headers_of(modifier: Mapping[str, Any]) -> HeaderFilter | Problem:
    """A header modifier's set, add and remove lists, each name lower-cased (HTTP header
    names are case-insensitive; the first of a name counts, as Gateway API says)."""
    out: HeaderFilter = {}
    set_ = _values(modifier.get("set") or [])
    if isinstance(set_, Problem):
        return set_
    add = _values(modifier.get("add") or [])
    if isinstance(add, Problem):
        return add
    if set_:
        out["set"] = set_
    if add:
        out["add"] = add
    removed: list[str] = []
    for name in (modifier.get("remove") or [])[:MAX_HEADERS]:
        problem = _name_problem(name)
        if problem is not None:
            return problem
        if name.lower() not in removed:
            removed.append(name.lower())
    if removed:
        out["remove"] = removed
    return out


def _values(headers: list[Mapping[str, str]]) -> list[HeaderValue] | Problem:
    out: list[HeaderValue] = []
    for h in headers[:MAX_HEADERS]:
        problem = _name_problem(h["name"])
        if problem is not None:
            return problem
        if any(c in h["value"] for c in "\r\n\0") or len(h["value"]) > MAX_VALUE:
            return Problem("UnsupportedValue", f"header {h['name'][:64]!r}: value not allowed")
        if all(v["name"] != h["name"].lower() for v in out):
            out.append({"name": h["name"].lower(), "value": h["value"]})
    return out


#: what a path given by a filter may hold: no control character, space, `?` or `#` (Envoy
#: would carry them into the request line or the Location), and no backslash (in a regex
#: substitution it names a capture group: Envoy refuses one that does not exist)
PATH = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x5b\x5d-\x7e]{0,1023}")


def path_change_of(spec: Mapping[str, Any]) -> PathChange | Problem:
    """An HTTPPathModifier: its type and the one value that type names."""
    kind = spec.get("type")
    field = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
    if kind not in field:
        return Problem("UnsupportedValue", f"path modifier type {str(kind)[:32]!r}")
    value = spec.get(field[kind])
    if not isinstance(value, str) or not PATH.fullmatch(value):
        return Problem("UnsupportedValue", f"path {str(value)[:64]!r} is not one kubelbd serves")
    return {"type": kind, "value": value}


def hostname_of(value: str) -> str | Problem:
    host = value.lower()
    if not HOST.fullmatch(host) or host.startswith("*"):
        return Problem("UnsupportedValue", f"hostname {value[:253]!r}")
    return host


def _host_and_path(spec: Mapping[str, Any], out: Redirect | Rewrite) -> Problem | None:
    """The hostname and the path a redirect or a rewrite gives, checked, into `out`."""
    if spec.get("hostname") is not None:
        host = hostname_of(spec["hostname"])
        if isinstance(host, Problem):
            return host
        out["hostname"] = host
    if spec.get("path") is not None:
        path = path_change_of(spec["path"])
        if isinstance(path, Problem):
            return path
        out["path"] = path
    return None


def rewrite_of(spec: Mapping[str, Any]) -> Rewrite | Problem:
    """A URLRewrite: the Host and the path the backend gets."""
    out: Rewrite = {}
    return _host_and_path(spec, out) or out


def redirect_of(spec: Mapping[str, Any]) -> Redirect | Problem:
    """A RequestRedirect: scheme, hostname, port, path and status code."""
    out: Redirect = {"statusCode": spec.get("statusCode") or 302}
    if out["statusCode"] not in REDIRECT_CODES:
        return Problem("UnsupportedValue", f"redirect status code {out['statusCode']}")
    scheme = spec.get("scheme")
    if scheme is not None:
        if scheme not in ("http", "https"):
            return Problem("UnsupportedValue", f"redirect scheme {scheme[:16]!r}")
        out["scheme"] = scheme
    if spec.get("port") is not None:
        out["port"] = spec["port"]
    return _host_and_path(spec, out) or out


#: Gateway API's duration (GEP-2257): up to four number-unit parts, e.g. 1h30m, 500ms
DURATION = re.compile(r"(?:[0-9]{1,5}(?:h|m|s|ms)){1,4}")
_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


def duration_ms(value: str) -> int | None:
    """A Gateway API duration in milliseconds, or None when it is not one."""
    if not DURATION.fullmatch(value):
        return None
    return sum(int(n) * _MS[unit] for n, unit in _PART.findall(value))


def timeouts_of(spec: Mapping[str, Any]) -> Timeouts | Problem:
    """A rule's timeouts in milliseconds (0: none); a backend's may not be longer than the
    request's, as Gateway API says."""
    out: Timeouts = {}
    for field in ("request", "backendRequest"):
        value = spec.get(field)
        if value is None:
            continue
        ms = duration_ms(value)
        if ms is None:
            return Problem("UnsupportedValue", f"timeout {field} {value[:32]!r} is not a duration")
        out[field] = ms
    request, backend = out.get("request"), out.get("backendRequest")
    if request and backend is not None and backend > request:
        return Problem("UnsupportedValue", "timeout backendRequest is longer than request")
    return out
