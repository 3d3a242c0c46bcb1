"""What kubelbd reports back about a tenant object, as data.

The data plane decides it (kubelbd.ir.status, from the IR and what Envoy applied) and the
tenant side writes it (through the object's Source, which knows where its kind keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .types import LoadBalancerIngress


@dataclass(frozen=True, slots=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """The status kubelbd wants on one tenant object, and the Events that explain it."""

    kind: str  # the source kind: Ingress, Service
    namespace: str
    name: str
    uid: str
    #: where the object is served: status.loadBalancer.ingress; () while it is not
    addresses: tuple[tuple[str, str], ...] = ()  # (ip|hostname, value)
    events: tuple[Event, ...] = ()
    #: the object's generation the events were found at: the same problem is reported again
    #: after the object changed (kinds without a generation report each problem once)
    generation: int = 0
    #: the record is gone: take back what kubelbd wrote (the object may stay, no longer
    #: ours), then forget the object
    final: bool = False
    #: the object's DNS name, with its first address (status.loadBalancer.ingress[0] has
    #: both, so that a consumer taking the address first still takes the address)
    hostname: str = ""
    #: kinds whose status is more than an address (Gateway API): the status document the
    #: data plane decided, as canonical JSON (hashable, compared as a whole); the source's
    #: status_patch knows where it goes
    document: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    def ingress(self) -> list[LoadBalancerIngress]:
        out: list[LoadBalancerIngress] = []
        for field_, value in self.addresses:
            out.append({"hostname": value} if field_ == "hostname" else {"ip": value})
        if self.hostname and out and "ip" in out[0]:
            out[0]["hostname"] = self.hostname
        return out


def withdrawn(kind: str, namespace: str, name: str, uid: str) -> SourceStatus:
    """The last status of an object whose record is gone: no address, no Events."""
    return SourceStatus(kind, namespace, name, uid, final=True)
