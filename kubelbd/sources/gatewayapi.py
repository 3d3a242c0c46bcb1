"""What the Gateway API sources (gateway.py, httproute.py) share: where the kinds live,
kubelbd's GatewayClass, which listeners of a Gateway kubelbd serves, record names, and how
a status document the data plane decided is written (its conditions stamped).

Pure. The two source modules import this one, never each other (pyproject.toml).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from ..objects import MANAGED_BY, MANAGER, Obj, Resource
from ..records.conditions import stamp
from ..records.names import GATEWAY_CONTROLLER, dotted
from ..records.policy import Policy
from ..records.problems import Problem
from . import shapes
from .base import TenantView
from .common import HOST, normalize_host
from .dnsnames import not_allowed

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"
GATEWAYS = Resource(API_VERSION, "gateways")
HTTPROUTES = Resource(API_VERSION, "httproutes")
GRPCROUTES = Resource(API_VERSION, "grpcroutes")
TLSROUTES = Resource(API_VERSION, "tlsroutes")
TCPROUTES = Resource(API_VERSION, "tcproutes")
UDPROUTES = Resource(API_VERSION, "udproutes")
GATEWAY_CLASSES = Resource(API_VERSION, "gatewayclasses", namespaced=False)
REFERENCE_GRANTS = Resource(f"{GROUP}/v1beta1", "referencegrants")

#: listeners served per Gateway, as the Gateway API CRD allows (a tenant may loosen its CRD),
#: and read at all (the rest are one problem)
MAX_LISTENERS = 64
MAX_LISTENERS_READ = 2 * MAX_LISTENERS
#: the GatewayClass kubelbd keeps in every tenant, and the controller it names
CLASS_NAME = "kubelb"
CONTROLLER = GATEWAY_CONTROLLER
#: what kubelbd does, as Gateway API names its features (pkg/features): core Gateway,
#: HTTPRoute, GRPCRoute, TLSRoute (passthrough, terminate, both on one port), TCPRoute and
#: UDPRoute, listener isolation, 421 for a host another
#: HTTPS listener serves, a listener on 8080, method and query parameter matches, a
#: parentRef's port, response headers changed, the Host and path rewritten, redirects of
#: scheme, port and path and with every status code, backends in HTTP/2 (h2c) and
#: WebSocket, timeouts, BackendTLSPolicy (with subjectAltNames), named rules (accepted:
#: nothing in kubelbd refers to a rule by its name yet); sorted
SUPPORTED_FEATURES = (
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayPort8080",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendTimeout",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
    "TCPRoute",
    "TLSRoute",
    "TLSRouteModeMixed",
    "TLSRouteModeTerminate",
    "UDPRoute",
)
#: the listener protocols served in this slice, and the route kinds each takes
SERVED_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP", "UDP")
ROUTE_KINDS = {
    "HTTP": ("HTTPRoute", "GRPCRoute"),
    "HTTPS": ("HTTPRoute", "GRPCRoute"),
    "TLS": ("TLSRoute",),
    "TCP": ("TCPRoute",),
    "UDP": ("UDPRoute",),
}
#: the tenant's own GatewayClasses naming kubelbd's controller that it reports on
MAX_CLASSES = 16
#: certificateRefs read per listener (Gateway API's own limit), and the Secrets of them
#: copied (the first usable one is served: a few to fall back on are enough)
MAX_CERTIFICATE_REFS = 64
MAX_CERTIFICATES = 4


def gateway_record(namespace: str, name: str) -> str:
    """A Gateway's LoadBalancer record: `<ns>.<name>.gateway`. A Service's is `<ns>.<svc>`
    and a Service name has no dot, so the two never meet; a name past the limit is cut and
    hashed (records.names.dotted), which makes it longer than any Service's record."""
    return dotted(namespace, f"{name}.gateway")


def route_record(kind: str, namespace: str, name: str) -> str:
    """A route's Route record: `<ns>.<name>.httproute` (`.grpcroute`, ...). An Ingress's is
    `<ns>.<name>` and an Ingress name may have dots, so an Ingress `x.httproute` and an
    HTTPRoute `x` of one namespace would share a record: only the owner of that namespace
    can make both (no other namespace, no other tenant), and a shorter scheme has the same
    hole."""
    return dotted(namespace, f"{name}.{kind.lower()}")


def is_our_gateway(gateway: Obj, view: TenantView) -> bool:
    """Whether kubelbd serves a Gateway: its GatewayClass is `kubelb` (kubelbd keeps it in
    every tenant), or one of the tenant's that names kubelbd's controller."""
    if not shapes.fits(shapes.GatewayClassOf, gateway):
        return False  # whose it is cannot be told: not ours to report on either
    name = (gateway.get("spec") or {}).get("gatewayClassName")
    return name == CLASS_NAME or (
        isinstance(name, str) and is_our_class(view.get(GATEWAY_CLASSES, "", name))
    )


def is_our_class(gateway_class: Obj | None) -> bool:
    """Whether a GatewayClass names kubelbd's controller."""
    spec = (gateway_class or {}).get("spec")
    return isinstance(spec, dict) and spec.get("controllerName") == CONTROLLER


def class_status() -> Obj:
    """What kubelbd says of a GatewayClass that names its controller (each condition's
    observedGeneration is the generation the object has when it is written)."""
    return {
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Accepted",
                "message": "handled by kubelbd",
            }
        ],
        "supportedFeatures": [{"name": f} for f in SUPPORTED_FEATURES],
    }


def gateway_class() -> Obj:
    """kubelbd's GatewayClass, with the status the tenant side applies to it."""
    return {
        "apiVersion": API_VERSION,
        "kind": "GatewayClass",
        "metadata": {"name": CLASS_NAME, "labels": {MANAGED_BY: MANAGER}},
        "spec": {
            "controllerName": CONTROLLER,
            "description": "kubelbd: served by the provider's shared Envoy",
        },
        "status": class_status(),
    }


def tenants_classes(view: TenantView) -> list[Obj]:
    """The tenant's own GatewayClasses that name kubelbd's controller (not `kubelb`), with
    the status kubelbd reports on them: at most MAX_CLASSES, by name, so that a tenant
    cannot make kubelbd write without bound."""
    ours = sorted(
        (c for c in view.all(GATEWAY_CLASSES) if is_our_class(c)),
        key=lambda c: str((c.get("metadata") or {}).get("name")),
    )
    return [
        {**c, "apiVersion": API_VERSION, "kind": "GatewayClass", "status": class_status()}
        for c in ours
        if isinstance(c.get("metadata"), dict) and c["metadata"].get("name") != CLASS_NAME
    ][:MAX_CLASSES]


# ---- references between namespaces ----------------------------------------------------------


def grants_in(view: TenantView, namespace: str) -> list[Obj]:
    """The ReferenceGrants of one namespace."""
    return [
        g
        for g in view.all(REFERENCE_GRANTS)
        if isinstance(g.get("metadata"), dict) and g["metadata"].get("namespace") == namespace
    ]


def granted(grants: Iterable[Obj], source: tuple[str, str], target: tuple[str, str]) -> bool:
    """Whether a ReferenceGrant (of the target's namespace) lets objects of kind `source[0]`
    in namespace `source[1]` name the `target` (kind "Service" or "Secret", core group; name).
    A grant of the wrong shape grants nothing."""
    (from_kind, from_ns), (to_kind, to_name) = source, target
    for grant in grants:
        if not shapes.fits(shapes.ReferenceGrant, grant):
            continue
        spec = grant.get("spec") or {}
        if any(
            f["group"] == GROUP and f["kind"] == from_kind and f["namespace"] == from_ns
            for f in spec.get("from") or []
        ) and any(
            t["group"] == "" and t["kind"] == to_kind and t.get("name") in (None, "", to_name)
            for t in spec.get("to") or []
        ):
            return True
    return False


# ---- listeners -------------------------------------------------------------------------------


def listener_problem(listener: Mapping[str, Any], reason: str, message: str) -> Problem:
    """A problem with one listener: its message starts `listener <name>: ` so that whoever
    reports listener conditions can tell which one (the record lists served ones only)."""
    return Problem(reason, f"listener {str(listener.get('name'))[:253]}: {message}")


@dataclass
class Resolved:
    """What a served listener's references resolve to: the route kinds it takes, the tenant
    Secrets it may be served with (HTTPS, in order), and the first reference that does not
    resolve (its ResolvedRefs condition: InvalidRouteKinds, InvalidCertificateRef,
    RefNotPermitted)."""

    kinds: list[str]
    certificates: list[tuple[str, str]] = field(default_factory=list)
    unresolved: Problem | None = None


@dataclass
class Listeners:
    """A Gateway's listeners as kubelbd serves them: `served` (raw listeners, hostnames
    normalized), in the Gateway's order, with what their references resolve to; the others
    refused with a problem each."""

    served: list[Obj] = field(default_factory=list)
    resolved: dict[str, Resolved] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: every listener name the Gateway has (a parentRef's sectionName may name a refused one)
    names: set[str] = field(default_factory=set)


def listeners(gateway: Obj, view: TenantView, certificates: bool = True) -> Listeners:
    """Which listeners of a Gateway (of the right shape) are served: a protocol of
    SERVED_PROTOCOLS, a hostname that is a DNS name the tenant may have, no earlier listener
    with the same name, with the same port and hostname, or with another protocol on the same
    port (TLS listeners in Passthrough and Terminate mode may share one). Without
    `certificates`, certificateRefs are not looked at (a route's attachment does not depend
    on them)."""
    out = Listeners()
    seen: dict[tuple[int, str, str], str] = {}
    #: (port, transport) -> (protocol, first listener's name): TCP and UDP may share a port
    protocols: dict[tuple[int, str], tuple[str, str]] = {}
    listed = (gateway.get("spec") or {}).get("listeners") or []
    if len(listed) > MAX_LISTENERS_READ:
        unread = len(listed) - MAX_LISTENERS_READ
        message = f"{unread} listeners past the first {MAX_LISTENERS_READ} are not read"
        out.problems.append(Problem("TooManyListeners", message))
    for listener in listed[:MAX_LISTENERS_READ]:
        name = listener["name"]
        if name in out.names:
            out.problems.append(listener_problem(listener, "DuplicateName", "listed twice"))
            continue
        out.names.add(name)
        refused = _refused(listener, len(out.served), view.policy)
        if refused is not None:
            out.problems.append(refused)
            continue
        port, protocol = listener["port"], listener["protocol"]
        host = normalize_host(listener.get("hostname") or "")
        transport = "UDP" if protocol == "UDP" else "TCP"
        first = protocols.setdefault((port, transport), (protocol, name))
        if first[0] != protocol:
            message = f"port {port} is listener {first[1]}'s, with protocol {first[0]}"
            out.problems.append(listener_problem(listener, "ProtocolConflict", message))
            continue
        if protocol in ("TCP", "UDP"):
            host = ""  # a hostname means nothing to a TCP or UDP listener
        other = seen.get((port, transport, host))
        if other is not None:
            message = f"port {port} and hostname {host!r} are listener {other}'s"
            out.problems.append(listener_problem(listener, "HostnameConflict", message))
            continue
        seen[(port, transport, host)] = name
        served = dict(listener)
        if host:
            served["hostname"] = host
        else:
            served.pop("hostname", None)
        out.served.append(served)
        out.resolved[name] = _resolve(listener, gateway, view, certificates)
    return out


def _refused(listener: Obj, served: int, policy: Policy) -> Problem | None:
    """Why a listener is not served (Accepted False), by itself, or None."""
    protocol, port = listener["protocol"], listener.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        # Envoy refuses a listener on no port: never handed one, whatever the CRD allows.
        return listener_problem(listener, "InvalidPort", f"port {port!r}")
    if served >= MAX_LISTENERS:
        message = f"more than {MAX_LISTENERS} listeners (Gateway API's own limit)"
        return listener_problem(listener, "TooManyListeners", message)
    if protocol not in SERVED_PROTOCOLS:
        message = f"protocol {protocol[:32]!r} is not supported ({', '.join(SERVED_PROTOCOLS)})"
        return listener_problem(listener, "UnsupportedProtocol", message)
    mode = tls_mode(listener)
    if protocol == "HTTPS" and mode != "Terminate":
        message = f"TLS mode {mode[:32]!r}: HTTPS listeners terminate TLS"
        return listener_problem(listener, "UnsupportedValue", message)
    if protocol == "TLS" and mode not in ("Terminate", "Passthrough"):
        message = f"TLS mode {mode[:32]!r}: Terminate or Passthrough"
        return listener_problem(listener, "UnsupportedValue", message)
    host = normalize_host(listener.get("hostname") or "")
    if host and not HOST.fullmatch(host):
        return listener_problem(
            listener, "InvalidHostname", f"hostname {host[:253]!r} is not a DNS name"
        )
    if host and not policy.allows_host(host):
        refused = not_allowed(host)
        return listener_problem(listener, refused.reason, refused.message)
    return None


def tls_mode(listener: Mapping[str, Any]) -> str:
    """A listener's TLS mode (Gateway API's default: Terminate)."""
    return str((listener.get("tls") or {}).get("mode") or "Terminate")


def terminates(listener: Mapping[str, Any]) -> bool:
    """Whether a listener terminates TLS (an HTTPS one, or a TLS one in Terminate mode): it
    is served with one of its certificateRefs."""
    protocol = listener.get("protocol")
    return protocol == "HTTPS" or (protocol == "TLS" and tls_mode(listener) == "Terminate")


def _resolve(listener: Obj, gateway: Obj, view: TenantView, certificates: bool) -> Resolved:
    """A served listener's route kinds and certificates (see Resolved)."""
    kinds, unresolved = _route_kinds(listener)
    out = Resolved(kinds, unresolved=unresolved)
    if not terminates(listener) or not certificates:
        return out
    gateway_ns = (gateway.get("metadata") or {}).get("namespace", "")
    refs = ((listener.get("tls") or {}).get("certificateRefs") or [])[:MAX_CERTIFICATE_REFS]
    problems = []
    for ref in refs:
        target = certificate_target(ref, gateway_ns, view)
        if isinstance(target, Problem):
            problems.append(target)
        elif len(out.certificates) < MAX_CERTIFICATES:
            out.certificates.append(target)
    if not refs:
        message = "a listener that terminates TLS needs certificateRefs"
        problems.append(Problem("InvalidCertificateRef", message))
    if out.unresolved is None and problems:
        p = problems[0]
        out.unresolved = listener_problem(listener, p.reason, p.message)
    return out


def _route_kinds(listener: Obj) -> tuple[list[str], Problem | None]:
    """The route kinds a listener takes (its allowedRoutes.kinds that its protocol serves;
    by default all of those), and InvalidRouteKinds when it names one it cannot take."""
    kinds = ROUTE_KINDS[listener["protocol"]]
    asked = (listener.get("allowedRoutes") or {}).get("kinds")
    if not asked:
        return list(kinds), None
    taken = [k["kind"] for k in asked if k.get("group") in (None, GROUP) and k["kind"] in kinds]
    if len(taken) == len(asked):
        return sorted(set(taken)), None
    bad = next(k for k in asked if k.get("group") not in (None, GROUP) or k["kind"] not in kinds)
    group = str(bad.get("group") or GROUP)[:64]
    message = f"route kind {bad['kind'][:64]!r} of group {group!r}: {', '.join(kinds)} only"
    return sorted(set(taken)), listener_problem(listener, "InvalidRouteKinds", message)


def certificate_target(
    ref: Mapping[str, Any], gateway_ns: str, view: TenantView
) -> tuple[str, str] | Problem:
    """The tenant Secret (namespace, name) a certificateRef may name, or why it may not."""
    group, kind = ref.get("group") or "", ref.get("kind") or "Secret"
    name, ns = ref["name"], ref.get("namespace") or gateway_ns
    if group != "" or kind != "Secret":
        message = f"certificateRef {kind[:64]} of group {group[:64]!r}: Secrets only"
        return Problem("InvalidCertificateRef", message)
    if ns != gateway_ns and not granted(
        grants_in(view, ns), ("Gateway", gateway_ns), ("Secret", name)
    ):
        message = (
            f"Secret {ns}/{name}: no ReferenceGrant in {ns} lets Gateways of {gateway_ns} use it"
        )
        return Problem("RefNotPermitted", message)
    return (ns, name)


# ---- status documents ------------------------------------------------------------------------


def document(text: str) -> Any:
    """The data plane's status document (canonical JSON), parsed."""
    return json.loads(text)


def without_times(value: Any) -> Any:
    """A status with every condition's lastTransitionTime left out: what the data plane's
    documents are compared with."""
    if isinstance(value, dict):
        return {
            k: (
                [without_times(c) for c in v]
                if k == "conditions" and isinstance(v, list)
                else without_times(v)
            )
            for k, v in value.items()
            if k != "lastTransitionTime"
        }
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def _identity(item: Any) -> str | None:
    """What an entry of a status list is matched by across writes: a listener by name, a
    Route's parent by parentRef and controller, a policy's ancestor by ancestorRef and
    controller."""
    if not isinstance(item, dict):
        return None
    if "name" in item:
        return f"name:{json.dumps(item['name'], sort_keys=True)}"
    for ref in ("parentRef", "ancestorRef"):
        if ref in item:
            return json.dumps([item.get(ref), item.get("controllerName")], sort_keys=True)
    return None


def stamped(new: Any, old: Any, now: str) -> Any:
    """`new` (a status document without times) with a lastTransitionTime on every condition:
    the one `old` (what the object holds) has for it while its status holds, else `now`.
    Conditions in lists are matched by type; other list entries by identity (see above)."""
    if isinstance(new, dict):
        before = old if isinstance(old, dict) else {}
        out: dict[str, Any] = {}
        for k, v in new.items():
            if k == "conditions" and isinstance(v, list):
                out[k] = stamp(v, _conditions(before.get(k)), now)
            else:
                out[k] = stamped(v, before.get(k), now)
        return out
    if isinstance(new, list):
        olds = old if isinstance(old, list) else []
        by_id = {i: o for o in olds if (i := _identity(o)) is not None}
        return [stamped(v, by_id.get(_identity(v) or ""), now) for v in new]
    return new


def _conditions(value: Any) -> list[Obj]:
    """The conditions a tenant object holds that a lastTransitionTime can be kept from."""
    if not isinstance(value, list):
        return []
    return [
        c
        for c in value
        if isinstance(c, dict)
        and isinstance(c.get("type"), str)
        and isinstance(c.get("lastTransitionTime"), str)
    ]


def now() -> str:
    """The time a condition that changed now is stamped with (as the API server writes it)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_status(obj: Obj) -> dict[str, Any]:
    status = obj.get("status")
    return cast(dict[str, Any], status) if isinstance(status, dict) else {}


def ours(entries: Iterable[Any]) -> list[Any]:
    """Route parent statuses kubelbd wrote (controllerName ours)."""
    return [e for e in entries if isinstance(e, dict) and e.get("controllerName") == CONTROLLER]
