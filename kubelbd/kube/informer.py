"""List-then-watch one resource into a local cache, forever, with bookmarks and backoff.

Consumers never talk to the API server to read: they read the cache and are told, through a
synchronous callback, that something changed. The callback must be cheap (mark dirty, wake a
reconciler); all real work happens in the consumer's own task.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from functools import partial
from typing import Any

import anyio

from ..objects import Obj, Resource, key
from ..retry import Backoff
from .client import ApiError, Kube
from .packed import PackedCache

log = logging.getLogger(__name__)

#: how often a kind the API server does not serve (its CRD missing) is asked for again
NOT_SERVED_RETRY = 30.0


#: the annotation `kubectl apply` (client side, its default) keeps the whole applied object in
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _slim(obj: Obj) -> Obj:
    """The object without its managedFields and kubectl's copy of it, which no consumer reads:
    managedFields are about half of a record's or an Ingress's size in memory (9 of 17 KB, 4
    of 9.5 KB as parsed), the copy is the object again, and a cache holds every object of its
    kind (a fleet of 10,000 routes holds 10,000 of each). And the strings every object of a
    kind repeats (its apiVersion, kind, namespace, labels) are one string each, not one per
    object (each parse makes its own)."""
    _share(obj, "apiVersion", "kind")
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        _share(meta, "namespace")
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(LAST_APPLIED, None)
        labels = meta.get("labels")
        if isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values()):
            meta["labels"] = {sys.intern(k): sys.intern(v) for k, v in labels.items()}
    return obj


def _share(d: dict[str, Any], *fields: str) -> None:
    for f in fields:
        v = d.get(f)
        if type(v) is str:
            d[f] = sys.intern(v)


def _pack_into(cache: PackedCache, kept: Callable[[Obj], Obj], obj: Obj) -> Obj:
    """`kept(obj)` into `cache`; its identity is what the list goes on with."""
    whole = kept(obj)
    cache[key(whole)] = whole
    return identity_only(whole)


def identity_only(obj: Obj) -> Obj:
    """What an informer whose consumer keeps its own parsed copy of each object needs to keep
    of it (`stored=`): its identity, version and labels. That is enough to relist (versions
    compared, the gone ones told with their name, uid and labels), and it is what the
    records' informers of the data plane keep: a Route record is 6 KiB parsed, and there is
    one per route."""
    meta = obj.get("metadata") or {}
    kept = {f: meta[f] for f in _IDENTITY if f in meta}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": kept}


_IDENTITY = ("name", "namespace", "uid", "resourceVersion", "generation", "labels")


#: objects a page of a list (`limit`), and for a kind with a `keep`, whose objects may be
#: large (a ConfigMap: up to 1.5 MiB). Each page is slimmed (`_slim`) before the next is
#: read: listing 10,000 Route records at start-up whole, then slimming them, held 90 MiB of
#: managedFields at once, and pymalloc kept the arenas they were scattered over (kubelbd's
#: RSS after a restart at 10,000 routes was 100 MiB above its live objects).
LIST_PAGE, LIST_PAGE_KEPT = 500, 50

EventHandler = Callable[[str, Obj], None]
ErrorHandler = Callable[[Exception | None], None]


class Informer:
    """Keeps `cache` equal to the server's view of one resource (optionally filtered)."""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        on_event: EventHandler | None = None,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_error: ErrorHandler | None = None,
        backoff: Backoff | None = None,
        optional: bool = False,
        keep: Callable[[Obj], Obj] | None = None,
        stored: Callable[[Obj], Obj] | None = None,
        packed: bool = False,
    ) -> None:
        self.kube = kube
        #: what the cache keeps of each object (None: all of it), applied as it arrives
        self._keep = keep
        #: what the cache keeps of each object once `on_event` has seen all that `keep`
        #: left (None: the same), for a consumer that reads its events, never the cache
        self._stored = stored
        #: a kind kubelbd can do without: refused (403), it counts as not served, so that a
        #: tenant registered before kubelbd watched the kind keeps everything else
        self.optional = optional
        self.resource = resource
        self.namespace = namespace
        #: each object (or what `stored` keeps of it) kept as bytes, read back on every lookup
        #: (PackedCache)
        self._packed = packed
        self.cache: MutableMapping[str, Obj] = self._new_cache({})
        self.synced = anyio.Event()
        #: why the last list or watch failed (None once one succeeds): what a component that
        #: waits for this informer tells whoever asks why it is not ready
        self.last_error: Exception | None = None
        self.resource_version = ""
        #: False while the API server does not serve the kind at all (see _not_served)
        self.served = True
        self._on_event = on_event
        self._on_error = on_error
        self._params: dict[str, Any] = {}
        if label_selector:
            self._params["labelSelector"] = label_selector
        if field_selector:
            self._params["fieldSelector"] = field_selector
        self._backoff = backoff or Backoff()

    def __repr__(self) -> str:
        return f"Informer({self.kube.name}:{self.resource.plural})"

    async def run(self) -> None:
        while True:
            try:
                await self._list()
                self._report(None)
                self._backoff.reset()
                while True:
                    await self._watch_once()
            except ApiError as e:
                if e.gone:
                    log.debug("%r: resourceVersion too old, relisting", self)
                    continue
                if e.not_found:
                    await self._not_served()
                    continue
                if e.status == 403 and self.optional:
                    await self._not_served(e)
                    continue
                self._report(e)
            except (ConnectionError, OSError, TimeoutError) as e:
                self._report(e)
            delay = self._backoff.next()
            log.debug("%r: retrying in %.1fs", self, delay)
            await anyio.sleep(delay)

    async def _not_served(self, refused: ApiError | None = None) -> None:
        """The API server does not serve the kind (a CRD not installed in this cluster), or
        refuses an optional one (`refused`, reported as this informer's error): the cache is
        empty, which is the truth, and synced, so that nobody waits for it; asked again now
        and then, since the CRD (or the permission) may come."""
        if self.served:
            why = "refused" if refused is not None else "not served by this API server"
            log.info("%r: %s; asking again every %.0f s", self, why, NOT_SERVED_RETRY)
        self.served = False
        old, self.cache = self.cache, self._new_cache({})
        for o in old.values():
            self._emit("DELETED", o)
        self._report(refused)
        self.synced.set()
        await anyio.sleep(NOT_SERVED_RETRY)

    def _new_cache(self, objects: dict[str, Obj]) -> MutableMapping[str, Obj]:
        return PackedCache(objects) if self._packed else objects

    def _report(self, error: Exception | None) -> None:
        self.last_error = error
        if error is not None:
            log.warning("%r: %s", self, error)
        if self._on_error is not None:
            self._on_error(error)

    async def _list(self) -> None:
        keep, stored = self._keep, self._stored
        kept: Callable[[Obj], Obj] = _slim if keep is None else lambda o: keep(_slim(o))
        packed = PackedCache() if self._packed and stored is None else None
        if packed is not None:
            # Each object packed as its page comes, and only its identity listed: the whole
            # list is never held as dicts (10,000 Ingresses: 34 MiB, and the arenas they
            # were scattered over stayed with the process after it was freed).
            kept = partial(_pack_into, packed, kept)
        items, rv = await self.kube.list(
            self.resource,
            self.namespace,
            keep=kept,
            page=LIST_PAGE if keep is None else LIST_PAGE_KEPT,
            **self._params,
        )
        fresh = {key(o): o for o in items}
        old = self.cache
        if packed is not None:
            self.cache = packed
        else:
            self.cache = self._new_cache(
                fresh if stored is None else {k: stored(o) for k, o in fresh.items()}
            )
        self.resource_version = rv
        self.served = True
        for k, o in fresh.items():
            prev = old.get(k)
            version = o["metadata"].get("resourceVersion")
            if prev is not None and prev.get("metadata", {}).get("resourceVersion") == version:
                continue  # unchanged
            whole = o if packed is None else packed[k]  # the handler is given it all
            self._emit("ADDED" if prev is None else "MODIFIED", whole)
        for k in [k for k in old if k not in fresh]:
            self._emit("DELETED", old[k])
        self.synced.set()

    async def _watch_once(self) -> None:
        async for kind, obj in self.kube.watch(
            self.resource, self.resource_version, self.namespace, **self._params
        ):
            rv = obj.get("metadata", {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if kind == "BOOKMARK":
                continue
            _slim(obj)
            if self._keep is not None:
                obj = self._keep(obj)
            k = key(obj)
            if kind == "DELETED":
                self.cache.pop(k, None)
            else:
                self.cache[k] = obj if self._stored is None else self._stored(obj)
            self._emit(kind, obj)
            self._backoff.reset()

    def _emit(self, kind: str, obj: Obj) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, obj)
        except Exception:
            # A bug met by one object must not stop the watch (every other object of the
            # kind would go unseen) nor end the process: logged with the object's name.
            log.exception("%r: handling %s %s failed", self, kind, _name(obj))


def _name(obj: Obj) -> str:
    try:
        return key(obj)
    except (KeyError, TypeError):
        return "(an object without a name)"
