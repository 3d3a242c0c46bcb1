"""What every tenant object kind that kubelbd serves has to say about itself: the Source.

A Source is pure: it reads tenant objects (and, through a TenantView, the tenant's caches)
and returns data. The tenant side (kubelbd.tenant) does everything effectful for every
source alike: watching, reverse indexes, NodePort twins, certificate copies, record writes,
status writes. Adding a kind is a module here plus one line in `sources/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..objects import Obj, Resource
from ..records.names import RecordKind
from ..records.policy import Policy
from ..records.problems import Translation
from ..records.status import SourceStatus
from . import shapes

#: (namespace, name) of a namespaced object
Ref = tuple[str, str]


@dataclass(frozen=True)
class References:
    """The other tenant objects one source object uses.

    `backends` are Services whose pods Envoy must reach: kubelbd gives a ClusterIP one a
    NodePort twin, and a change to one (or to its twin) translates the object again.
    `tls_secrets` are the tenant's TLS Secrets it is served with: copied into the management
    cluster, and copied again when they change. `others` are anything else a translation
    reads (by resource; cluster-scoped objects with namespace ""): of the kinds the Source
    lists in `referenced`, which the tenant side watches, and a change to one translates the
    object again. A name "" stands for every object of that kind in the namespace (say,
    the ReferenceGrants of a namespace, one of which may be made later)."""

    backends: frozenset[Ref] = frozenset()
    tls_secrets: frozenset[Ref] = frozenset()
    others: frozenset[tuple[Resource, Ref]] = field(default_factory=frozenset)

    def indexed(self, services: Resource, secrets: Resource) -> set[tuple[Resource, Ref]]:
        """Every reference, by resource: what the tenant side's reverse index holds."""
        out = set(self.others)
        out |= {(services, r) for r in self.backends}
        out |= {(secrets, r) for r in self.tls_secrets}
        return out


@dataclass(frozen=True)
class StatusPatch:
    """How a kind's status is written: a JSON merge patch of the status subresource, or a
    server-side apply (fields owned by kubelbd's field manager, where other controllers
    write parts of the same status, as in Gateway API's per-parent status)."""

    body: Obj  # {"status": {...}}
    type: Literal["merge", "apply"] = "merge"


class TenantView(Protocol):
    """What a Source may read of its tenant: the caches (never the API server), and the
    operator's policy for the tenant, which every translation applies."""

    @property
    def policy(self) -> Policy: ...

    #: where a source may keep what it derives from the caches between translations (an
    #: index of a kind, keyed by what it was built from): the tenant's own, never shared
    memo: dict[str, Any]

    def get(self, resource: Resource, namespace: str, name: str) -> Obj | None: ...

    def all(self, resource: Resource) -> Iterable[Obj]: ...

    def twin(self, namespace: str, name: str) -> Obj | None:
        """The NodePort twin of a ClusterIP Service (also one being created right now)."""
        ...


class Source(Protocol):
    """One kind of tenant object that kubelbd serves, and the record it becomes."""

    #: the tenant kind, e.g. "Ingress", and its apiVersion (for Events on it)
    kind: str
    api_version: str
    #: what to watch in every tenant
    resource: Resource
    #: a change of any object of these kinds resyncs this source: its tenant objects are
    #: applied again and every object of it translated again (IngressClass for Ingress:
    #: which Ingresses are ours may change, and ours may have been edited or deleted)
    depends_on: tuple[Resource, ...]
    #: kinds `references(...).others` may name: watched, each change translates its users
    referenced: tuple[Resource, ...]
    #: which record an object of ours becomes
    record: RecordKind

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        """Whether kubelbd serves this object (its class, or lack of one)."""
        ...

    def record_name(self, namespace: str, name: str) -> str:
        """The record's name in the tenant's namespace: unique across source kinds."""
        ...

    def references(self, obj: Obj, view: TenantView) -> References: ...

    def translate(self, obj: Obj, view: TenantView) -> Translation[Any]:
        """The record spec (RouteSpec or LoadBalancerSpec) and what could not be served."""
        ...

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        """The status to write into the tenant object, or None when it holds it already."""
        ...

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        """Objects kubelbd keeps in every tenant for this kind (its IngressClass), applied
        on every resync of the kind; one with a `status` also gets that applied to its
        status subresource (each condition observed at the generation the apply left, its
        lastTransitionTime moving only with its status), e.g. a GatewayClass's Accepted."""
        ...

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        """Objects the tenant keeps that kubelbd only reports on, also on every resync of
        the kind: each as the cache has it, with the `status` wanted (applied to its status
        subresource as for `tenant_objects`), e.g. the tenant's own GatewayClasses that name
        kubelbd's controller."""
        ...


def load_balancer_status_patch(obj: Obj, status: SourceStatus) -> StatusPatch | None:
    """`status.loadBalancer.ingress`, where Ingress and Service keep their address; None
    when the object holds it already (the API server adds ipMode: compared without it)."""
    want = status.ingress()
    have: list[Any] = []
    if shapes.fits(shapes.WithStatus, obj):  # else whatever it holds is replaced
        have = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if [{k: v for k, v in i.items() if k in ("ip", "hostname")} for i in have] == want:
        return None
    return StatusPatch({"status": {"loadBalancer": {"ingress": want}}})
