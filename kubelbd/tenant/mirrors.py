"""Mirrors of the EndpointSlices a tenant writes by hand, for the NodePort twins of their
Services (sources/twins.py says what a mirror is).

Two informers: the slices no controller manages (no `endpointslice.kubernetes.io/managed-by`
label: written by hand) and kubelbd's mirrors (that label, kubelbd's value). Controller-made
slices, most of a cluster's, are never listed. A Service is looked at again when one of its
hand-written slices, its twin or one of its mirrors changes; its mirrors then follow the
slices exactly, and go when it has no twin any more (the twin's deletion takes them too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..kube import ApiError, Kube
from ..kube.informer import ErrorHandler, EventHandler, Informer
from ..objects import ENDPOINT_SLICES, Obj, labels_of
from ..sources import twins
from ..sources.base import Ref

log = logging.getLogger(__name__)

HAND_WRITTEN = f"!{twins.SLICE_MANAGER}"
MIRRORS = f"{twins.SLICE_MANAGER}={twins.MIRRORED_BY}"


class Mirrors:
    def __init__(
        self,
        kube: Kube,
        on_event: EventHandler,
        on_error: Callable[[str], ErrorHandler],
        twin: Callable[[str, str], Obj | None],
    ) -> None:
        self.tenant = kube.name
        self._twin = twin  # the twin of a Service (namespace, name), when there is one
        self.hand = Informer(
            kube, ENDPOINT_SLICES, on_event, label_selector=HAND_WRITTEN,
            on_error=on_error("endpointslices"),
        )  # fmt: skip
        self.mirrors = Informer(
            kube, ENDPOINT_SLICES, on_event, label_selector=MIRRORS,
            on_error=on_error("endpointslices (mirrors)"),
        )  # fmt: skip
        #: Services (namespace, name) whose mirrors are to be looked at
        self.dirty: set[Ref] = set()

    def informers(self) -> list[Informer]:
        return [self.hand, self.mirrors]

    def on_slice(self, obj: Obj) -> None:
        """A slice written by hand (its Service) or a mirror (its twin's original) changed."""
        labels = labels_of(obj)
        service = labels.get(twins.TWIN_OF) or twins.service_of(obj)
        if service:
            self.dirty.add((obj["metadata"]["namespace"], service))

    async def reconcile(self, kube: Kube) -> None:
        """Mirror the hand-written slices of each dirty Service to its twin; delete mirrors
        that mirror nothing. One that fails is dirty again, with those not reached yet; one
        that changes meanwhile is dirty again too (the set is taken, not emptied after)."""
        batch, self.dirty = sorted(self.dirty), set()
        if not batch:
            return
        slices: dict[Ref, list[Obj]] = {}  # (namespace, Service) -> its hand-written slices
        for s in self.hand.cache.values():
            service = twins.service_of(s)
            if service:
                slices.setdefault((s["metadata"].get("namespace", ""), service), []).append(s)
        made: dict[Ref, dict[str, Obj]] = {}  # (namespace, Service) -> its mirrors by name
        for m in self.mirrors.cache.values():
            original = labels_of(m).get(twins.TWIN_OF)
            if original:
                ref = (m["metadata"].get("namespace", ""), original)
                made.setdefault(ref, {})[m["metadata"]["name"]] = m
        failed: ApiError | ConnectionError | None = None
        for i, ref in enumerate(batch):
            try:
                await self._one(kube, *ref, slices.get(ref, []), made.get(ref, {}))
            except (ApiError, ConnectionError) as e:
                # That Service's mirrors are retried; the others go on.
                self.dirty.add(ref)
                failed = failed or e
            except BaseException:
                self.dirty.update(batch[i:])
                raise
        if failed is not None:
            raise failed

    async def _one(
        self, kube: Kube, ns: str, service: str, slices: list[Obj], existing: dict[str, Obj]
    ) -> None:
        twin = self._twin(ns, service)
        desired: dict[str, Obj] = {}
        if twin is not None and twin["metadata"].get("uid"):
            ordered = sorted(slices, key=lambda s: str(s["metadata"].get("name")))
            for s in ordered[: twins.MAX_MIRRORED]:
                m = twins.mirror(s, twin)
                if m is None:
                    log.warning("tenant %s: EndpointSlice %s/%s cannot be mirrored",
                                self.tenant, ns, s["metadata"].get("name"))  # fmt: skip
                    continue
                desired[m["metadata"]["name"]] = m
        for name, m in sorted(desired.items()):
            have = existing.get(name)
            if have is not None and twins.same_mirror(have, m):
                continue
            if have is None and f"{ns}/{name}" in self.hand.cache:
                log.warning("tenant %s: EndpointSlice %s/%s exists and is not kubelbd's",
                            self.tenant, ns, name)  # fmt: skip
                continue
            try:
                await kube.apply(ENDPOINT_SLICES, m)
            except ApiError as e:
                if e.status != 422:
                    raise
                # What the tenant wrote, the API server refuses for the mirror: not retried.
                log.warning("tenant %s: mirror of EndpointSlice %s/%s refused: %s",
                            self.tenant, ns, name, e)  # fmt: skip
                continue
            log.info("tenant %s: mirrored EndpointSlice %s/%s", self.tenant, ns, name)
        for name in sorted(set(existing) - set(desired)):
            try:
                await kube.delete(ENDPOINT_SLICES, name, ns)
            except ApiError as e:
                if not e.not_found:
                    raise
            log.info("tenant %s: removed EndpointSlice mirror %s/%s", self.tenant, ns, name)
