"""The shapes of the records, as mypy sees them: every spec and status kubelbd writes.

These TypedDicts are the contract between the tenant side (which writes records) and the data
plane (which renders Envoy from them): the API server stores them as JSON, so they stay plain
dicts, and the CRDs in `crds/` declare the same fields. `parse.py` checks a record read back
from the API against them before anything else looks at it.

A Route is kind-neutral: `source` names the tenant object it was made from (an Ingress today,
an HTTPRoute or GRPCRoute tomorrow), every path carries a list of weighted backends, and the
optional match and filter fields a later source kind needs can be added without breaking
what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Generic, Literal, NotRequired, TypeVar

from annotated_types import Ge
from typing_extensions import TypedDict

# ---- shared ---------------------------------------------------------------------------------


class SourceRef(TypedDict):
    """The tenant object a record was made from."""

    kind: str
    namespace: str
    name: str
    uid: str
    creationTimestamp: str
    generation: NotRequired[int]


class ProblemSpec(TypedDict):
    """Why part of the source object cannot be served: the Accepted condition and an Event."""

    reason: str
    message: str


class DesiredCondition(TypedDict):
    """A condition as a stage decides it; the writer adds lastTransitionTime."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    observedGeneration: NotRequired[int]


class Condition(DesiredCondition):
    lastTransitionTime: str


# ---- Route ----------------------------------------------------------------------------------

PathType = Literal["Exact", "Prefix", "ImplementationSpecific"]
CertificateSource = Literal["tenant", "acme", "cert-manager"]


class Backend(TypedDict):
    """A tenant Service port resolved to the nodePort Envoy dials; without nodePort the
    backend cannot be resolved and `problem` says why (its share of requests answers 503)."""

    service: str
    port: str  # number or name, as the source object gave it
    nodePort: NotRequired[int]
    weight: NotRequired[int]  # relative share among the path's backends; 1 when absent
    problem: NotRequired[str]
    #: "h2c": the backend speaks HTTP/2 in clear text (its Service port's appProtocol)
    protocol: NotRequired[Literal["h2c"]]
    #: Envoy speaks TLS to it: a key of the Route's `backendTLS` (a BackendTLSPolicy's)
    tls: NotRequired[str]


class SubjectAltName(TypedDict):
    type: Literal["Hostname", "URI"]
    value: str


class UpstreamTLS(TypedDict):
    """How Envoy speaks TLS to a backend, as a BackendTLSPolicy validates it: SNI
    `hostname`, a certificate signed by one of `caCertificates` (PEM: public, so carried in
    the record itself) for `hostname`, or for one of `subjectAltNames` when there are any."""

    hostname: str
    caCertificates: str
    subjectAltNames: NotRequired[list[SubjectAltName]]


class HeaderMatch(TypedDict):
    """A request header (or query parameter) a path also requires (Gateway API matches)."""

    name: str  # a header name in lower case; a query parameter as written
    value: str
    type: Literal["Exact", "RegularExpression"]


class HeaderValue(TypedDict):
    name: str
    value: str


class HeaderFilter(TypedDict, total=False):
    """Gateway API's RequestHeaderModifier / ResponseHeaderModifier: headers set (replacing),
    added (appended), removed."""

    set: list[HeaderValue]
    add: list[HeaderValue]
    remove: list[str]


class PathChange(TypedDict):
    """Gateway API's HTTPPathModifier: the whole path replaced (ReplaceFullPath), or the
    prefix the path matched (ReplacePrefixMatch, for a Prefix path only), by `value`."""

    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    value: str


class Redirect(TypedDict, total=False):
    """Gateway API's RequestRedirect: what the Location changes (the rest is the request's),
    and the status code."""

    scheme: str
    hostname: str
    port: int
    path: PathChange
    statusCode: int


class Rewrite(TypedDict, total=False):
    """Gateway API's URLRewrite: the Host and the path the backend gets."""

    hostname: str
    path: PathChange


class Timeouts(TypedDict, total=False):
    """Gateway API's rule timeouts, in milliseconds (0: none): the whole request, and each
    request to a backend."""

    request: int
    backendRequest: int


class HTTPPath(TypedDict):
    path: str
    pathType: PathType
    backends: list[Backend]
    #: Gateway API: every one must match too (an Ingress has none)
    headers: NotRequired[list[HeaderMatch]]
    queryParams: NotRequired[list[HeaderMatch]]
    method: NotRequired[str]
    #: Gateway API filters: the request's and the response's headers changed, or a redirect
    #: answered instead of forwarding
    requestHeaders: NotRequired[HeaderFilter]
    responseHeaders: NotRequired[HeaderFilter]
    redirect: NotRequired[Redirect]
    rewrite: NotRequired[Rewrite]
    timeouts: NotRequired[Timeouts]


class HTTPRule(TypedDict):
    host: str  # "" matches every host (the catch-all)
    paths: list[HTTPPath]


class TLSEntry(TypedDict):
    hosts: list[str]
    secretName: str
    source: CertificateSource


RouteOptions = TypedDict(
    "RouteOptions",
    {
        "sslRedirect": str,
        "cert-manager.io/cluster-issuer": str,
        "cert-manager.io/issuer": str,
    },
    total=False,
)


class DNSOptions(TypedDict, total=False):
    """How the record's names are published (kubelbd.dns): the names to write into the tenant
    object's status (a LoadBalancer's names from its Service's annotation; a Route's automatic
    name) and a TTL from the object's annotation (absent: the fleet's --dns-ttl)."""

    hostnames: list[str]
    ttl: int
    #: a LoadBalancer's name -> when kubelbd first saw it asked for (records/claims.py)
    claims: dict[str, str]


class ParentRefSpec(TypedDict, total=False):
    """A Gateway API parentRef as the tenant wrote it (echoed back in status.parents)."""

    group: str
    kind: str
    namespace: str
    name: str
    sectionName: str
    port: int


class ParentRef(TypedDict):
    """A Gateway a Route asked to attach to, as the tenant side resolved it (it sees the
    Gateway, its listeners' allowedRoutes and the namespaces' labels): the record's attachment
    is data, so the data plane serves and reports it without reading tenant objects."""

    ref: ParentRefSpec
    #: the Gateway's LoadBalancer record name ("" when the Gateway is not ours or missing)
    gateway: str
    #: the Gateway's listeners it is attached to (empty: not attached)
    listeners: list[str]
    #: Accepted for this parent, and why not (Gateway API's reasons: NoMatchingParent,
    #: NotAllowedByListeners, NoMatchingListenerHostname, ...)
    accepted: bool
    reason: str
    message: str


class RouteSpec(TypedDict):
    source: SourceRef
    rules: list[HTTPRule]
    #: host -> when kubelbd first saw this record claim it (its own clock, kept across
    #: rewrites): what ownership between tenants is decided by, never a tenant's timestamps
    claims: NotRequired[dict[str, str]]
    defaultBackend: NotRequired[Backend]
    tls: NotRequired[list[TLSEntry]]
    options: NotRequired[RouteOptions]
    dns: NotRequired[DNSOptions]
    #: Gateway API: served only on these Gateways' listeners, never on the shared one
    parents: NotRequired[list[ParentRef]]
    #: how Envoy speaks TLS to backends that say so (Backend.tls), by a digest of each
    backendTLS: NotRequired[dict[str, UpstreamTLS]]
    problems: NotRequired[list[ProblemSpec]]


class RouteStatus(TypedDict, total=False):
    observedGeneration: int
    hosts: str
    conditions: list[Condition]


class RouteReport(TypedDict):
    """A Route's status as the data plane decides it (conditions not stamped yet)."""

    observedGeneration: int
    hosts: str
    conditions: list[DesiredCondition]


# ---- LoadBalancer ---------------------------------------------------------------------------

L4Protocol = Literal["TCP", "UDP"]


class L4Port(TypedDict):
    port: int
    protocol: L4Protocol
    nodePort: int
    name: NotRequired[str]


GatewayProtocol = Literal["HTTP", "HTTPS", "TLS", "TCP", "UDP"]


class GatewayListener(TypedDict):
    """A Gateway listener Envoy serves at the Gateway's own address, on its real port."""

    name: str
    port: int
    protocol: GatewayProtocol
    hostname: NotRequired[str]  # absent: every host
    #: the route kinds it takes (absent, as in records written before: HTTPRoute)
    kinds: NotRequired[list[str]]
    #: TLS: whether it terminates TLS or passes the connection through (SNI chooses)
    tlsMode: NotRequired[Literal["Passthrough", "Terminate"]]
    #: HTTPS and TLS Terminate: the tenant Secrets it may be served with, by their copies' names
    #: (`<namespace>.<name>`, records.names.copy_name), in order; the first usable one is
    certificates: NotRequired[list[str]]
    #: the first reference that does not resolve (its ResolvedRefs condition)
    unresolved: NotRequired[ProblemSpec]


class LoadBalancerSpec(TypedDict):
    source: SourceRef
    ports: list[L4Port]
    sessionAffinity: str
    proxyProtocol: str
    requestedAddress: NotRequired[str]
    dns: NotRequired[DNSOptions]
    #: a Gateway: its listeners (its `ports` are empty: nothing is proxied as plain TCP)
    listeners: NotRequired[list[GatewayListener]]
    problems: NotRequired[list[ProblemSpec]]


class ListenerPort(TypedDict):
    port: int
    protocol: L4Protocol
    listenerPort: int


class LoadBalancerIngress(TypedDict, total=False):
    ip: str
    hostname: str


class LoadBalancerReport(TypedDict):
    """The report part of a LoadBalancer's status, as the data plane decides it."""

    observedGeneration: int
    ingress: list[LoadBalancerIngress]
    conditions: list[DesiredCondition]


class LoadBalancerStatus(TypedDict, total=False):
    # the allocation, written before Envoy listens on it
    address: str
    listenerPorts: list[ListenerPort]
    portsSummary: str
    # the report, written after Envoy applied it
    observedGeneration: int
    ingress: list[LoadBalancerIngress]
    conditions: list[Condition]


# ---- Tenant ---------------------------------------------------------------------------------


#: a count (checked when parsed: annotated-types is what pydantic reads constraints from)
Count = Annotated[int, Ge(0)]


class TenantLimitsSpec(TypedDict, total=False):
    routes: Count
    loadBalancers: Count
    certificates: Count


class TenantSpec(TypedDict, total=False):
    """The operator's policy for a tenant (kubelbd never writes it; records/policy.py)."""

    allowedDomains: list[str]
    nodeCIDRs: list[str]
    limits: TenantLimitsSpec
    clusterIssuers: list[str]


class NodeAddressClaim(TypedDict):
    address: str
    since: str  # when kubelbd first saw a node of this tenant with it


class TenantNodes(TypedDict, total=False):
    """Where the tenant's nodes are, as kubelbd accepted them (the tenant side writes it)."""

    nodeAddressType: str
    nodeAddresses: list[str]
    nodeAddressClaims: list[NodeAddressClaim]


class TenantStatus(TypedDict):
    conditions: list[Condition]
    lastError: str


# ---- records as the data plane holds them ---------------------------------------------------

AgeKey = tuple[str, str, str]


def fixed_width(time: str) -> str:
    """An RFC 3339 UTC time to the microsecond, so that times order as strings: the API
    server writes whole seconds (2026-01-02T03:04:05Z), kubelbd's claims microseconds."""
    if len(time) == 20 and time.endswith("Z"):
        return time[:-1] + ".000000Z"
    return time


SpecT = TypeVar("SpecT", RouteSpec, LoadBalancerSpec)


@dataclass(frozen=True)
class Record(Generic[SpecT]):
    """A record of one tenant; equal records have equal ids and generations."""

    tenant: str
    name: str
    spec: SpecT = field(compare=False, hash=False)
    generation: int = 0
    #: when the management cluster stored the record first ("" when unknown, e.g. a record
    #: not written yet): kubelbd's clock, not the tenant's
    recorded: str = field(default="", compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"

    @property
    def namespace(self) -> str:
        """The source object's namespace in the tenant."""
        return self.spec["source"]["namespace"]

    @property
    def created(self) -> str:
        """The source object's creation time ("9999" when unknown: youngest of all)."""
        return self.spec["source"].get("creationTimestamp") or "9999"


@dataclass(frozen=True)
class RouteRecord(Record[RouteSpec]):
    @cached_property  # a record is replaced, never changed; builds sort every route by it
    def age_key(self) -> AgeKey:
        """Oldest first; ties broken by tenant and record name, so the order is total."""
        return (self.created, self.tenant, self.name)

    def claim_key(self, host: str) -> AgeKey:
        """Who owns a host several tenants claim: the claim kubelbd saw first (a record
        from before claims were kept counts from when it was stored; one not stored yet
        is youngest), then tenant and name."""
        since = (self.spec.get("claims") or {}).get(host) or self.recorded or "9999"
        return (fixed_width(since), self.tenant, self.name)


@dataclass(frozen=True)
class LBRecord(Record[LoadBalancerSpec]):
    @property
    def service(self) -> str:
        return self.spec["source"]["name"]

    @property
    def age(self) -> tuple[str, str]:
        """Oldest first, by when the management cluster stored the record (a tenant's own
        timestamps could be backdated to take an address someone else asked for)."""
        return (fixed_width(self.recorded) if self.recorded else "9999", self.id)


@dataclass(frozen=True)
class TenantRecord:
    """What the data plane needs of a tenant: where its nodes are."""

    name: str
    addresses: tuple[str, ...] = ()
    #: (address, since): when kubelbd first saw each; the earliest claim of an address
    #: keeps it when two tenants list one (ir/nodes.py)
    claims: tuple[tuple[str, str], ...] = ()
