"""One tenant's caches: an informer per kind any source needs, read through a TenantView,
and the reverse index that says which objects of ours a change to another object touches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..kube import Kube
from ..kube.informer import ErrorHandler, EventHandler, Informer
from ..objects import ENDPOINT_SLICES, NODES, SECRETS, SERVICES, Obj, Resource
from ..records.policy import Policy
from ..sources import KEPT, OPTIONAL, PACKED
from ..sources.base import Ref, References, Source
from .mirrors import Mirrors
from .twins import Twins

#: an object of ours: (source kind, namespace/name)
ObjectId = tuple[str, str]

TLS_SECRETS = "type=kubernetes.io/tls"


def watched(sources: Sequence[Source]) -> list[Resource]:
    """Every kind the tenant task watches: each source's own and what it depends on, plus
    Services (backends and twins) and Nodes; TLS Secrets are watched on their own."""
    out = [NODES, SERVICES]
    for s in sources:
        for r in (s.resource, *s.depends_on, *s.referenced):
            if r not in out:
                out.append(r)
    return out


class TenantCaches:
    """The informers of one tenant; implements sources.TenantView."""

    def __init__(
        self,
        kube: Kube,
        sources: Sequence[Source],
        on_event: Callable[[Resource], EventHandler],
        on_error: Callable[[str], ErrorHandler],
        policy: Policy,
    ) -> None:
        #: the tenant's policy, as the tenant task last read it (it replaces it on a change)
        self.policy = policy
        #: what sources derive from these caches and keep (TenantView.memo)
        self.memo: dict[str, Any] = {}
        self.informers: dict[Resource, Informer] = {
            r: Informer(
                kube,
                r,
                on_event(r),
                on_error=on_error(r.plural),
                optional=r in OPTIONAL,
                keep=KEPT.get(r),
                packed=r in PACKED,
            )
            for r in watched(sources)
        }
        # TLS Secrets only: kubelbd never lists or watches any other kind of Secret.
        self.secrets = Informer(
            kube,
            SECRETS,
            on_event(SECRETS),
            field_selector=TLS_SECRETS,
            on_error=on_error("secrets"),
        )
        self.twins = Twins(
            kube.name, lambda: self.informers[SERVICES].cache, lambda: self.policy.node_ports
        )
        # EndpointSlices written by hand, and kubelbd's mirrors of them for the twins.
        self.mirrors = Mirrors(kube, on_event(ENDPOINT_SLICES), on_error, self.twins.get)

    def all_informers(self) -> list[Informer]:
        return [*self.informers.values(), self.secrets, *self.mirrors.informers()]

    def cache(self, resource: Resource) -> Mapping[str, Obj]:
        return self.informers[resource].cache

    # ---- TenantView ---------------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str, name: str) -> Obj | None:
        k = f"{namespace}/{name}" if resource.namespaced else name
        return self.informers[resource].cache.get(k)

    def all(self, resource: Resource) -> Iterable[Obj]:
        return self.informers[resource].cache.values()

    def twin(self, namespace: str, name: str) -> Obj | None:
        return self.twins.get(namespace, name)


class ReverseIndex:
    """Which objects of ours reference which other objects, both ways."""

    def __init__(self) -> None:
        #: a tuple, not a set: one per object of ours (10,000 at 10,000 routes), mostly of
        #: one or two references, which a set holds in 216 bytes and a tuple in 56
        self._refs: dict[ObjectId, tuple[tuple[Resource, Ref], ...]] = {}
        self._users: dict[tuple[Resource, Ref], set[ObjectId]] = {}

    def update(self, oid: ObjectId, refs: References | None) -> set[Ref]:
        """Set what `oid` references (None: nothing, it is gone); returns the backend Services
        it referenced before (their twins may be unused now: the object may have stopped
        using them, or stopped being ours)."""
        old = self._refs.pop(oid, ())
        for ref in old:
            users = self._users.get(ref)
            if users is not None:
                users.discard(oid)
                if not users:
                    del self._users[ref]
        new = refs.indexed(SERVICES, SECRETS) if refs is not None else set()
        if new:
            self._refs[oid] = tuple(new)
        for ref in new:
            self._users.setdefault(ref, set()).add(oid)
        return {r for res, r in old if res == SERVICES}

    def users(self, resource: Resource, ref: Ref) -> set[ObjectId]:
        return set(self._users.get((resource, ref), ()))
