"""The overview's shapes: plain frozen dataclasses, so a renderer only reads them and
`orjson` dumps them as they are (`kubelbd ... -o json`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

#: condition types whose "True" is the bad news (all others: "False" is)
BAD_WHEN_TRUE = frozenset({"Conflict"})


@dataclass(frozen=True)
class Check:
    """One condition of a record, as the data plane or the tenant side wrote it."""

    type: str
    status: str  # True | False | Unknown
    reason: str
    message: str
    since: str  # lastTransitionTime ("" when absent)

    @property
    def ok(self) -> bool | None:
        """Good news (True), bad news (False), or not decided yet (None)."""
        if self.status not in ("True", "False"):
            return None
        return (self.status == "True") != (self.type in BAD_WHEN_TRUE)


def healthy(checks: tuple[Check, ...]) -> bool:
    """Every health condition reported and good (a tenant nobody reported on is not)."""
    return bool(checks) and all(c.ok for c in checks)


@dataclass(frozen=True)
class TenantView:
    name: str
    healthy: bool  # a field, not a property: `-o json` carries it
    checks: tuple[Check, ...]
    node_addresses: tuple[str, ...]
    last_error: str
    routes: int
    load_balancers: int


@dataclass(frozen=True)
class CertificateView:
    """A certificate a Route names, as the management cluster holds it."""

    secret: str  # `<tenant>/<namespace>.<secretName>`: the name Envoy's SDS knows it by
    source: str  # tenant | acme | cert-manager (the Route's tls entry)
    hosts: tuple[str, ...]  # the Route's hosts it is for
    names: tuple[str, ...]  # the names the certificate itself carries
    expires: dt.datetime | None
    days_left: int | None
    problem: str  # why it cannot be read ("" when it can)


@dataclass(frozen=True)
class RouteView:
    tenant: str
    name: str
    source: str  # e.g. "Ingress shop/web"
    hosts: tuple[str, ...]  # every host the record claims ("*" for the catch-all)
    served: tuple[str, ...]  # the ones the data plane reports served (status.hosts)
    state: str  # Serving | Degraded | Pending | NotServed | Invalid
    checks: tuple[Check, ...]
    certificates: tuple[CertificateView, ...]

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"

    def certificate_for(self, host: str) -> CertificateView | None:
        return next((c for c in self.certificates if host in c.hosts), None)


@dataclass(frozen=True)
class LoadBalancerView:
    tenant: str
    name: str
    source: str
    address: str
    ports: str
    state: str
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Refusal:
    """Something refused or broken, as a record's condition says (newest first in lists)."""

    since: str
    tenant: str
    kind: str  # Tenant | Route | LoadBalancer
    name: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class EnvoyFacts:
    """What Envoy's admin says it holds (`reachable` False: it could not be asked)."""

    reachable: bool
    #: host (or "*.domain", "*") -> the tenant whose virtual host serves it over HTTP
    http_hosts: dict[str, str] = field(default_factory=dict)
    #: SNI name -> the SDS secret the HTTPS listener serves it with
    https_hosts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Overview:
    generated: dt.datetime
    tenants: tuple[TenantView, ...]
    routes: tuple[RouteView, ...]
    load_balancers: tuple[LoadBalancerView, ...]
    refusals: tuple[Refusal, ...]
    envoy: EnvoyFacts | None  # None: not asked


@dataclass(frozen=True)
class Answer:
    """`kubelbd why HOST`: who serves a host, with what, or why nobody does."""

    host: str
    #: the route host that matched it: itself, a wildcard ("*.example.com") or "*"
    matched: str
    owner: str | None  # the tenant serving it, from its Route's status
    route: str | None  # that Route's id, `<tenant>/<record name>`
    source: str | None  # the tenant object it was made from
    certificate: CertificateView | None
    envoy_http: str | None  # the tenant Envoy's HTTP tables serve it for (None: not held)
    envoy_https: str | None  # the secret Envoy's HTTPS listener serves it with
    #: why not, or what is off (empty: served as the records say, and Envoy agrees)
    reasons: tuple[str, ...]
    claimants: tuple[str, ...]  # every Route claiming it (ids), the owner first

    @property
    def served(self) -> bool:
        return self.owner is not None
