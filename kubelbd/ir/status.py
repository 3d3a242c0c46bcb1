"""Status as data: what every record and tenant object should say, from the IR.

Pure functions of a record, the fleet's IR (hosts served and lost, certificates, allocations)
and whether Envoy has applied the configuration they describe. The data plane hands the
results to writers (kubelbd.kube.status_writer); nothing here knows how a status is written, so
every condition and Event kubelbd reports can be tested from inputs alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..records import conditions
from ..records.conditions import Desired
from ..records.names import LOADBALANCER, ROUTE, RecordKind
from ..records.problems import Problem, problems_of
from ..records.status import Event, SourceStatus
from ..records.types import (
    LBRecord,
    LoadBalancerIngress,
    LoadBalancerReport,
    RouteRecord,
    RouteReport,
    SourceRef,
)
from .allocation import AllocationError
from .http import IR

#: reasons that mean "on its way", not "broken": Normal Events, not Warnings
PROGRESS_REASONS = frozenset({"Issuing", "WaitingForCertManager"})


@dataclass(frozen=True)
class Report:
    """The status of one record, and of the tenant object it was made from.

    `status` is the record's status subresource without timestamps (the writer stamps the
    conditions); `source` is None when the tenant object should be left as it is."""

    kind: RecordKind  # ROUTE | LOADBALANCER
    tenant: str
    name: str
    status: RouteReport | LoadBalancerReport = field(compare=True, hash=False)
    source: SourceStatus | None = None

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"

    @property
    def conditions(self) -> list[Desired]:
        return list(self.status.get("conditions", []))


def _pending(generation: int) -> Desired:
    return conditions.desired(
        "Programmed", None, "Pending", "waiting for Envoy to apply the configuration", generation
    )


def _source(
    ref: SourceRef,
    addresses: Sequence[LoadBalancerIngress],
    events: list[Event],
    dns: DNSState | None,
) -> SourceStatus:
    pairs = tuple(
        ("hostname", a["hostname"]) if "hostname" in a else ("ip", a.get("ip", ""))
        for a in addresses
    )
    if dns is not None and dns.warn:
        events.append(Event("Warning", dns.reason, dns.message))
    # The name goes with the address once it resolves to it, and not before.
    name = dns.names[0] if dns is not None and dns.names and pairs else ""
    return SourceStatus(
        ref["kind"], ref["namespace"], ref["name"], ref["uid"], pairs, tuple(events),
        ref.get("generation", 0), hostname=name,
    )  # fmt: skip


def public_ingress(address: str) -> list[LoadBalancerIngress]:
    """How the public address appears in status.loadBalancer.ingress."""
    if not address:
        return []
    return [{"ip": address}] if _is_ip(address) else [{"hostname": address}]


@dataclass(frozen=True, slots=True)
class DNSState:
    """Whether a Route's served hosts are published in DNS, and why not (kubelbd.dns)."""

    published: bool
    reason: str
    message: str
    #: a fault of the name (another owner holds it, outside the zone): an Event too;
    #: waiting for the server is not
    warn: bool = False
    #: the object's own names (a Service's, an automatic one) for its status: only those the
    #: server has published
    names: tuple[str, ...] = ()


def route_report(
    route: RouteRecord,
    ir: IR,
    tls_problems: Sequence[Problem] = (),
    public_address: str = "",
    applied: bool = True,
    dns: DNSState | None = None,
) -> Report:
    """A Route's conditions (Accepted, Programmed, Conflict, CertificateReady when it has
    TLS, DNSPublished when kubelbd publishes names), the hosts it serves, and its Ingress's
    address and Events."""
    generation = route.generation
    served = ir.served.get(route.id, [])
    lost = ir.conflicts.get(route.id, [])
    problems = problems_of(route.spec.get("problems", []))
    where = f" at {public_address}" if public_address else ""
    accepted = conditions.accepted(problems, generation)
    if not applied:
        programmed = _pending(generation)
    elif served:
        programmed = conditions.desired(
            "Programmed", True, "Programmed", f"serving {', '.join(served)}{where}", generation
        )
    else:
        programmed = conditions.desired(
            "Programmed", False, "NoHosts", "no host of this route is served", generation
        )
    conflict_msg = "; ".join(f"host {h} is held by tenant {t}" for h, t in lost)
    conflict = (
        conditions.desired("Conflict", True, "HostConflict", conflict_msg, generation)
        if lost
        else conditions.desired("Conflict", False, "NoConflict", "", generation)
    )
    conds = [accepted, programmed, conflict]
    if route.spec.get("tls"):
        conds.append(
            conditions.desired(
                "CertificateReady", False, tls_problems[0].reason,
                "; ".join(p.message for p in tls_problems), generation,
            )
            if tls_problems
            else conditions.desired(
                "CertificateReady", True, "CertificateReady",
                "every TLS host is served with a valid certificate", generation,
            )
        )  # fmt: skip
    if dns is not None:
        conds.append(
            conditions.desired("DNSPublished", dns.published, dns.reason, dns.message, generation)
        )
    status: RouteReport = {
        "hosts": ",".join(served),
        "conditions": conds,
        "observedGeneration": generation,
    }
    source = None
    if applied:
        events = [Event("Warning", p.reason, p.message) for p in problems]
        if lost:
            events.append(Event("Warning", "HostConflict", conflict_msg))
        for p in tls_problems:
            # Waiting for an issuer is progress, not a fault.
            kind: Literal["Normal", "Warning"] = (
                "Normal" if p.reason in PROGRESS_REASONS else "Warning"
            )
            events.append(Event(kind, p.reason, p.message))
        addresses = public_ingress(public_address) if served else []
        source = _source(route.spec["source"], addresses, events, dns)
    return Report(ROUTE, route.tenant, route.name, status, source)


def lb_report(
    rec: LBRecord,
    ingress: Sequence[LoadBalancerIngress],
    failure: AllocationError | None = None,
    awaiting: str | None = None,
    applied: bool = True,
    dns: DNSState | None = None,
) -> Report:
    """A LoadBalancer's conditions (Accepted, Programmed, DNSPublished when kubelbd publishes
    names), its addresses, and its Service's. `awaiting` (service mode): the management
    Service whose address has not come yet."""
    generation = rec.generation
    problems = problems_of(rec.spec.get("problems", []))
    accepted = conditions.accepted(problems, generation)
    if not applied:
        programmed = _pending(generation)
    elif failure is not None:
        programmed = conditions.desired(
            "Programmed", False, failure.reason, failure.message, generation
        )
    elif awaiting is not None and not ingress:
        programmed = conditions.desired(
            "Programmed", False, "AwaitingAddress",
            "Envoy listens; waiting for the management cluster's load balancer to assign"
            f" an address to Service {awaiting}",
            generation,
        )  # fmt: skip
    else:
        where = ", ".join(i.get("ip") or i.get("hostname", "") for i in ingress)
        programmed = conditions.desired(
            "Programmed", True, "Programmed", f"serving at {where}", generation
        )
    conds = [accepted, programmed]
    if dns is not None:
        conds.append(
            conditions.desired("DNSPublished", dns.published, dns.reason, dns.message, generation)
        )
    status: LoadBalancerReport = {
        "conditions": conds,
        "ingress": list(ingress),
        "observedGeneration": generation,
    }
    source = None
    if applied:
        events = [Event("Warning", p.reason, p.message) for p in problems]
        if failure is not None:
            events.append(Event("Warning", failure.reason, failure.message))
        source = _source(rec.spec["source"], ingress, events, dns)
    return Report(LOADBALANCER, rec.tenant, rec.name, status, source)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
