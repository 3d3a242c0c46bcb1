"""The shapes of the tenant objects kubelbd reads, checked before anything reads them.

A tenant's API server is the tenant's: nothing it sends has been validated, so an Ingress
may carry a list where a dict belongs, a number where a string does, a port past 65535. The
sources check the fields they read against these TypedDicts (pydantic, strict: a bool is
not an int, a number is not a string) before they look at them; an object that does not fit
is refused with a problem naming the field (a condition and an Event), never an exception.
Fields kubelbd does not read are not checked. Optional fields may be null, as the sources
read them (`x or {}`).
"""

from __future__ import annotations

from typing import Annotated, Any, Required, TypeVar

from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from ..objects import Obj
from ..records.problems import Problem
from ..records.types import SourceRef

T = TypeVar("T")

#: a TCP or UDP port
Port = Annotated[int, Field(ge=1, le=65535)]
#: what the API server stores in an integer field (a resource's generation)
Int64 = Annotated[int, Field(ge=0, le=2**63 - 1)]


class Metadata(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: Int64
    creationTimestamp: str
    # annotations and labels: objects.annotations_of and labels_of keep the strings alone


class _Address(TypedDict, total=False):
    ip: Any
    hostname: Any


class _LoadBalancerStatus(TypedDict, total=False):
    ingress: list[_Address] | None


class _Status(TypedDict, total=False):
    loadBalancer: _LoadBalancerStatus | None


class WithStatus(TypedDict, total=False):
    """status.loadBalancer.ingress, where Ingress and Service keep their address."""

    status: _Status | None


# ---- Ingress ---------------------------------------------------------------------------------


class _PortRef(TypedDict, total=False):
    number: int
    name: str


class _ServiceRef(TypedDict, total=False):
    name: str
    port: _PortRef | None


class _IngressBackend(TypedDict, total=False):
    service: _ServiceRef | None
    resource: Any


class _IngressPath(TypedDict, total=False):
    path: str | None
    pathType: str | None
    backend: _IngressBackend | None


class _RuleHTTP(TypedDict, total=False):
    paths: list[_IngressPath] | None


class _IngressRule(TypedDict, total=False):
    host: str | None
    http: _RuleHTTP | None


class _IngressTLS(TypedDict, total=False):
    hosts: list[str] | None
    secretName: str | None


class _IngressSpec(TypedDict, total=False):
    ingressClassName: str | None
    rules: list[_IngressRule] | None
    defaultBackend: _IngressBackend | None
    tls: list[_IngressTLS] | None


class Ingress(TypedDict, total=False):
    metadata: Metadata
    spec: _IngressSpec | None


class _ClassSpec(TypedDict, total=False):
    ingressClassName: str | None


class IngressClassOf(TypedDict, total=False):
    """What says which class an Ingress is of (and its annotation: objects.annotations_of)."""

    spec: _ClassSpec | None


class _IngressClassSpec(TypedDict, total=False):
    controller: str | None


class IngressClass(TypedDict, total=False):
    spec: _IngressClassSpec | None


# ---- Service ---------------------------------------------------------------------------------


class _ServicePort(TypedDict, total=False):
    name: str | None
    port: Required[Port]
    protocol: str
    nodePort: Port | None
    targetPort: int | str


class _ServiceSpec(TypedDict, total=False):
    type: str
    ports: list[_ServicePort] | None
    loadBalancerClass: str | None
    sessionAffinity: str
    loadBalancerIP: str | None
    selector: dict[str, str] | None


class Service(TypedDict, total=False):
    metadata: Metadata
    spec: _ServiceSpec | None


class _ServiceTypeSpec(TypedDict, total=False):
    type: str
    loadBalancerClass: str | None


class ServiceType(TypedDict, total=False):
    """What says whether a Service is a LoadBalancer of ours, or needs a twin."""

    spec: _ServiceTypeSpec | None


class _SlicePort(TypedDict, total=False):
    name: str | None
    port: Port | None
    protocol: str | None
    appProtocol: str | None


class _EndpointConditions(TypedDict, total=False):
    ready: bool | None
    serving: bool | None
    terminating: bool | None


class _Endpoint(TypedDict, total=False):
    addresses: Required[list[str]]
    conditions: _EndpointConditions | None
    nodeName: str | None
    zone: str | None


class EndpointSlice(TypedDict, total=False):
    """A slice written by hand, as far as its mirror copies it (sources/twins.py)."""

    metadata: Required[Metadata]
    addressType: Required[str]
    ports: list[_SlicePort] | None
    endpoints: list[_Endpoint] | None


# ---- Gateway API -----------------------------------------------------------------------------


class _Requirement(TypedDict, total=False):
    key: Required[str]
    operator: Required[str]
    values: list[str] | None


class LabelSelector(TypedDict, total=False):
    matchLabels: dict[str, str] | None
    matchExpressions: list[_Requirement] | None


class _RouteNamespaces(TypedDict, total=False):
    # "from" is a Python keyword: the functional form
    selector: LabelSelector | None


_RouteNamespacesFrom = TypedDict("_RouteNamespacesFrom", {"from": str | None}, total=False)


class _AllowedNamespaces(_RouteNamespaces, _RouteNamespacesFrom, total=False):
    pass


class _RouteGroupKind(TypedDict, total=False):
    group: str | None
    kind: Required[str]


class _AllowedRoutes(TypedDict, total=False):
    namespaces: _AllowedNamespaces | None
    kinds: list[_RouteGroupKind] | None


class _SecretObjectRef(TypedDict, total=False):
    group: str | None
    kind: str | None
    name: Required[str]
    namespace: str | None


class _ListenerTLS(TypedDict, total=False):
    mode: str | None
    certificateRefs: list[_SecretObjectRef] | None


class _Listener(TypedDict, total=False):
    name: Required[str]
    port: Required[Port]
    protocol: Required[str]
    hostname: str | None
    allowedRoutes: _AllowedRoutes | None
    tls: _ListenerTLS | None


class _GatewayAddress(TypedDict, total=False):
    type: str | None
    value: str | None


class _GatewaySpec(TypedDict, total=False):
    gatewayClassName: Required[str]
    listeners: list[_Listener] | None
    addresses: list[_GatewayAddress] | None


class Gateway(TypedDict, total=False):
    metadata: Metadata
    spec: Required[_GatewaySpec]


class _GatewayClassNameSpec(TypedDict, total=False):
    gatewayClassName: str


class GatewayClassOf(TypedDict, total=False):
    """What says which GatewayClass a Gateway is of."""

    spec: _GatewayClassNameSpec | None


class _ParentRef(TypedDict, total=False):
    group: str | None
    kind: str | None
    namespace: str | None
    name: Required[str]
    sectionName: str | None
    port: Port | None


class _ParentRefsSpec(TypedDict, total=False):
    parentRefs: list[_ParentRef] | None


class ParentRefsOf(TypedDict, total=False):
    """What says which Gateways a Route asks to attach to."""

    metadata: Metadata
    spec: _ParentRefsSpec | None


class _PathMatch(TypedDict, total=False):
    type: str | None
    value: str | None


class _ValueMatch(TypedDict, total=False):
    type: str | None
    name: Required[str]
    value: Required[str]


class _RouteMatch(TypedDict, total=False):
    path: _PathMatch | None
    headers: list[_ValueMatch] | None
    queryParams: list[_ValueMatch] | None
    method: str | None


class _Header(TypedDict, total=False):
    name: Required[str]
    value: Required[str]


class _HeaderModifier(TypedDict, total=False):
    set: list[_Header] | None
    add: list[_Header] | None
    remove: list[str] | None


class _PathModifier(TypedDict, total=False):
    type: Required[str]
    replaceFullPath: str | None
    replacePrefixMatch: str | None


class _RequestRedirect(TypedDict, total=False):
    scheme: str | None
    hostname: str | None
    port: Port | None
    statusCode: int | None
    path: _PathModifier | None


class _URLRewrite(TypedDict, total=False):
    hostname: str | None
    path: _PathModifier | None


class _Filter(TypedDict, total=False):
    type: Required[str]
    requestHeaderModifier: _HeaderModifier | None
    responseHeaderModifier: _HeaderModifier | None
    requestRedirect: _RequestRedirect | None
    urlRewrite: _URLRewrite | None


class _BackendRef(TypedDict, total=False):
    group: str | None
    kind: str | None
    name: Required[str]
    namespace: str | None
    port: Port | None
    weight: Annotated[int, Field(ge=0, le=1000000)] | None
    filters: list[_Filter] | None


class _Timeouts(TypedDict, total=False):
    request: str | None
    backendRequest: str | None


class _L4RouteRule(TypedDict, total=False):
    """What every route kind's rule has: its backends (all a TCP or UDP rule has)."""

    backendRefs: list[_BackendRef] | None


class _FilteredRule(_L4RouteRule, total=False):
    filters: list[_Filter] | None


class _RouteRule(_FilteredRule, total=False):
    matches: list[_RouteMatch] | None
    timeouts: _Timeouts | None


class _HTTPRouteSpec(_ParentRefsSpec, total=False):
    hostnames: list[str] | None
    rules: list[_RouteRule] | None


class HTTPRoute(TypedDict, total=False):
    metadata: Metadata
    spec: _HTTPRouteSpec | None


class _L4RouteSpec(_ParentRefsSpec, total=False):
    rules: list[_L4RouteRule] | None


class L4Route(TypedDict, total=False):
    """A TCPRoute or a UDPRoute: its rules are backendRefs only."""

    metadata: Metadata
    spec: _L4RouteSpec | None


class _TLSRouteSpec(_L4RouteSpec, total=False):
    hostnames: list[str] | None


class TLSRoute(TypedDict, total=False):
    """A TLSRoute: SNI hostnames, and rules of backendRefs only."""

    metadata: Metadata
    spec: _TLSRouteSpec | None


class _MethodMatch(TypedDict, total=False):
    type: str | None
    service: str | None
    method: str | None


class _GRPCRouteMatch(TypedDict, total=False):
    method: _MethodMatch | None
    headers: list[_ValueMatch] | None


class _GRPCRouteRule(_FilteredRule, total=False):
    matches: list[_GRPCRouteMatch] | None


class _GRPCRouteSpec(_ParentRefsSpec, total=False):
    hostnames: list[str] | None
    rules: list[_GRPCRouteRule] | None


class GRPCRoute(TypedDict, total=False):
    metadata: Metadata
    spec: _GRPCRouteSpec | None


class _GrantFrom(TypedDict, total=False):
    group: Required[str]
    kind: Required[str]
    namespace: Required[str]


class _GrantTo(TypedDict, total=False):
    group: Required[str]
    kind: Required[str]
    name: str | None


class _GrantSpec(TypedDict, total=False):
    to: list[_GrantTo] | None


_GrantSpecFrom = TypedDict("_GrantSpecFrom", {"from": list[_GrantFrom] | None}, total=False)


class _ReferenceGrantSpec(_GrantSpec, _GrantSpecFrom, total=False):
    pass


class ReferenceGrant(TypedDict, total=False):
    spec: _ReferenceGrantSpec | None


class _LocalRef(TypedDict, total=False):
    """Gateway API's LocalObjectReference: an object of the referring one's namespace."""

    group: Required[str]
    kind: Required[str]
    name: Required[str]


class _PolicyTargetRef(_LocalRef, total=False):
    sectionName: str | None


class _SubjectAltName(TypedDict, total=False):
    type: Required[str]
    hostname: str | None
    uri: str | None


class _BackendTLSValidation(TypedDict, total=False):
    caCertificateRefs: list[_LocalRef] | None
    wellKnownCACertificates: str | None
    hostname: Required[str]
    subjectAltNames: list[_SubjectAltName] | None


class _BackendTLSPolicySpec(TypedDict, total=False):
    targetRefs: Required[list[_PolicyTargetRef]]
    validation: Required[_BackendTLSValidation]


class BackendTLSPolicy(TypedDict, total=False):
    """How to speak TLS to the Services it targets (Gateway API v1)."""

    metadata: Metadata
    spec: Required[_BackendTLSPolicySpec]


# ---- checking --------------------------------------------------------------------------------


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def problem(shape: type[T], obj: Any) -> Problem | None:
    """Why `obj` does not have `shape` (the first field that does not fit), or None."""
    adapter = _ADAPTERS.get(shape)
    if adapter is None:
        adapter = _ADAPTERS[shape] = TypeAdapter(shape)
    try:
        adapter.validate_python(obj, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the object"
        return Problem("InvalidObject", f"{where}: {first['msg']}")
    return None


def fits(shape: type[T], obj: Any) -> bool:
    return problem(shape, obj) is None


def source_ref(kind: str, obj: Obj, generation: bool = True) -> SourceRef:
    """Which object a record refused for its shape was made from: its metadata fields that
    fit, empty (or 0) for those that do not."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}

    def text(field: str) -> str:
        value = meta.get(field)
        return value if isinstance(value, str) else ""

    ref: SourceRef = {
        "kind": kind,
        "namespace": text("namespace"),
        "name": text("name"),
        "uid": text("uid"),
        "creationTimestamp": text("creationTimestamp"),
    }
    if generation:
        value = meta.get("generation")
        ref["generation"] = (
            value
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
            else 0
        )
    return ref
