"""An in-memory Kubernetes API server behind the methods of kubelbd.kube.Kube.

Why a fake: the orchestration (tenant tasks, the registry, the data plane loop, informers,
status writers, issuers) had no unit tests, and the issue asked for them with a fake API
client, so that they run in milliseconds and the API can misbehave on cue (a refused write,
a 410 Gone, a kind that is not installed). Everything end to end still runs against real API
servers in e2e/; this fake keeps only what kubelbd relies on:

- one resourceVersion counter per server; uid, creationTimestamp, and a generation (for
  every group but the core one) bumped when anything but metadata and status changes (a
  custom resource's `data` too), never by a status write;
- 404 for a missing object or namespace, 409 for an existing name or a stale
  resourceVersion, 422 for a nodePort taken or out of range (a NodePort or LoadBalancer
  Service gets free nodePorts, and keeps its own on update);
- finalizers and deletionTimestamp, garbage collection of owned objects, and a namespace
  taking its objects with it (at once: there is no Terminating phase);
- server-side apply as kubelbd uses it: the fields given replace what the object had (labels,
  annotations, finalizers, ownerReferences; spec, data, type); on the status subresource the
  top-level status keys are owned per field manager, and a key the manager applied before
  and omits now is removed (how kubelbd frees an allocation);
- merge patches (a resourceVersion in them is a precondition) and strategic ones as far as
  `$deleteFromPrimitiveList` goes; equality label and field selectors;
- watches replaying every change after a resourceVersion, with 410 Gone for one from before a
  compaction (`compact()`), also for a watch that falls behind one (`watches_held()`).

Every call passes a checkpoint first, as a real request would yield. Errors are injected with
`fail()`; `stored()`, `changes()` and `calls` let a test look without calling. `client()` is
another client of the same server (kubelbd closes the clients it makes).
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import yaml

from kubelbd.kube import ApiError, Kube, parse_kubeconfig
from kubelbd.objects import Obj, Resource

#: (group_version, plural, namespace or "" when cluster-scoped, name)
Key = tuple[str, str, str, str]

NODE_PORTS = range(30000, 32768)
REASONS = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 410: "Gone", 422: "Invalid"}
#: metadata only the server writes (name and namespace: the URL's)
SYSTEM_FIELDS = "name namespace uid creationTimestamp generation resourceVersion deletionTimestamp"


def _content(obj: Obj) -> Obj:
    """What a generation counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@dataclass(frozen=True)
class Change:
    """One write, as a watch sees it."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: Key
    obj: Obj  # never mutated once written


@dataclass(frozen=True)
class Call:
    method: str
    plural: str
    namespace: str
    name: str
    subresource: str
    at: float  # anyio.current_time()


@dataclass
class _Failure:
    method: str  # "*": any
    resource: Resource | None  # None: any
    name: str | None
    status: int  # 0: a ConnectionError
    times: float


def _error(status: int, message: str) -> ApiError:
    reason = REASONS.get(status, "InternalError")
    return ApiError(status, reason, message, {"kind": "Status", "code": status, "reason": reason})


def _key(res: Resource, namespace: str | None, name: str) -> Key:
    return (res.group_version, res.plural, (namespace or "") if res.namespaced else "", name)


def _selects(selector: str | None, value_of: Callable[[str], Any]) -> bool:
    """Equality-based selectors: a=b, a==b, a!=b, a, !a; comma-separated terms all hold."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            k, want = term.split("!=", 1)
            ok = value_of(k) is None or str(value_of(k)) != want
        elif "=" in term:
            k, want = term.replace("==", "=").split("=", 1)
            ok = value_of(k) is not None and str(value_of(k)) == want
        elif term.startswith("!"):
            ok = value_of(term[1:]) is None
        else:
            ok = value_of(term) is not None
        if not ok:
            return False
    return True


def _field(obj: Obj, path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _matcher(
    res: Resource, namespace: str | None, params: dict[str, Any]
) -> Callable[[Key, Obj], bool]:
    def match(key: Key, obj: Obj) -> bool:
        if key[:2] != (res.group_version, res.plural):
            return False
        if res.namespaced and namespace and key[2] != namespace:
            return False
        labels = obj["metadata"].get("labels") or {}
        return _selects(params.get("labelSelector"), labels.get) and _selects(
            params.get("fieldSelector"), lambda path: _field(obj, path)
        )

    return match


def _merge(target: Any, patch: Any, strategic: bool) -> Any:
    """RFC 7386 merge patch; `strategic` adds `$deleteFromPrimitiveList/<field>`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if strategic and k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            out[name] = [x for x in out.get(name) or [] if x not in v]
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v, strategic)
    return out


class _Server:
    def __init__(self) -> None:
        self.host = f"https://{uuid.uuid4().hex[:12]}.fake.invalid"
        self.objects: dict[Key, Obj] = {}  # never mutated once stored: writes store copies
        self.status_owners: dict[Key, dict[str, set[str]]] = {}
        self.rv = 1
        self.log: list[Change] = []
        self.compacted = 0
        self.held = 0
        self.failures: list[_Failure] = []
        #: (method, resource plural) -> a gate such calls wait at until it is set (`hold`)
        self.gates: dict[tuple[str, str], anyio.Event] = {}
        #: the same for the answers of writes already made (`hold_answers`)
        self.answer_gates: dict[tuple[str, str], anyio.Event] = {}
        self.calls: list[Call] = []
        self._changed: anyio.Event | None = None

    # ---- the event log -------------------------------------------------------------------------

    def _write(self, type_: str, key: Key, obj: Obj) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if type_ == "DELETED":
            self.objects.pop(key, None)
            self.status_owners.pop(key, None)
        else:
            self.objects[key] = obj
        self.log.append(Change(self.rv, type_, key, obj))
        self.notify()
        return obj

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # ---- writes --------------------------------------------------------------------------------

    def find(self, key: Key) -> Obj:
        obj = self.objects.get(key)
        if obj is None:
            raise _error(404, f'{key[1]} "{key[3]}" not found')
        return obj

    def create(self, res: Resource, obj: Obj, namespace: str | None) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if not namespace:
                raise _error(400, "the namespace of the object is missing")
            self.find(("v1", "namespaces", "", namespace))  # 404: namespace not found
            meta["namespace"] = namespace
        key = _key(res, namespace, meta.get("name", ""))
        if not key[3]:
            raise _error(400, "name is required")
        if key in self.objects:
            raise _error(409, f'{res.plural} "{key[3]}" already exists')
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if res.group_version != "v1":
            meta["generation"] = 1
        self._node_ports(key, obj, None)
        return self._write("ADDED", key, obj)

    def update(self, key: Key, new: Obj, subresource: str | None) -> Obj:
        """Store `new` as the object's next state: only its status for subresource "status",
        everything but its status (and the server's own metadata) otherwise."""
        old = self.find(key)
        if subresource == "status":
            out = copy.deepcopy(old)
            out["status"] = copy.deepcopy(new.get("status"))
            if out["status"] is None:
                del out["status"]
        else:
            out = copy.deepcopy(new)
            meta = out.setdefault("metadata", {})
            for f in SYSTEM_FIELDS.split():
                meta.pop(f, None)
                if f in old["metadata"]:
                    meta[f] = old["metadata"][f]
            out.pop("status", None)
            if "status" in old:
                out["status"] = copy.deepcopy(old["status"])
            if "generation" in meta and _content(out) != _content(old):
                meta["generation"] += 1
            self._node_ports(key, out, old)
        if out == old:
            return old  # nothing changed: no new resourceVersion, no event
        meta = out["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.remove(key, out)
            return out
        return self._write("MODIFIED", key, out)

    def delete(self, key: Key) -> None:
        obj = self.find(key)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                marked = copy.deepcopy(obj)
                marked["metadata"]["deletionTimestamp"] = _now()
                self._write("MODIFIED", key, marked)
            return
        self.remove(key, copy.deepcopy(obj))

    def remove(self, key: Key, obj: Obj) -> None:
        """Gone: and with it what it owns, or (a namespace) what is in it."""
        self._write("DELETED", key, obj)
        uid = obj["metadata"].get("uid")
        for k, o in list(self.objects.items()):
            owned = any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
            inside = key[:2] == ("v1", "namespaces") and k[2] == key[3]
            if (owned or inside) and k in self.objects:
                self.delete(k)

    def _node_ports(self, key: Key, svc: Obj, old: Obj | None) -> None:
        if key[:2] != ("v1", "services"):
            return
        spec = svc.get("spec") or {}
        if spec.get("type") not in ("NodePort", "LoadBalancer"):
            return
        kept = {
            (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
            for p in ((old or {}).get("spec") or {}).get("ports") or []
        }
        used = {
            p.get("nodePort")
            for k, o in self.objects.items()
            if k[:2] == key[:2] and k != key
            for p in (o.get("spec") or {}).get("ports") or []
            if p.get("nodePort")
        }
        for p in spec.get("ports") or []:
            port = p.get("nodePort") or kept.get((p.get("port"), p.get("protocol", "TCP")))
            invalid = f"spec.ports.nodePort: Invalid value: {port}: provided port"
            if port and port not in NODE_PORTS:
                raise _error(422, f"{invalid} is not in the valid range 30000-32767")
            if port in used:
                raise _error(422, f"{invalid} is already allocated")
            p["nodePort"] = port or next(n for n in NODE_PORTS if n not in used)
            used.add(p["nodePort"])


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube(Kube):
    """A client of one in-memory API server; see the module docstring."""

    def __init__(self, name: str = "", server: _Server | None = None) -> None:
        # Kube.__init__ is not called: there is no transport and no HTTP session.
        self._server = server or _Server()
        self.name = name
        self.host = self._server.host
        self.closed = False

    def client(self, name: str = "") -> FakeKube:
        """Another client of the same server."""
        return FakeKube(name or self.name, self._server)

    async def aclose(self) -> None:
        self.closed = True

    async def _call(
        self,
        method: str,
        res: Resource,
        namespace: str | None,
        name: str | None,
        subresource: str | None = None,
    ) -> None:
        await anyio.lowlevel.checkpoint()
        now = anyio.current_time()
        if self.closed:
            raise ConnectionError(f"{self.name}: {method} {res.plural}: client closed")
        s = self._server
        s.calls.append(
            Call(method, res.plural, namespace or "", name or "", subresource or "", now)
        )
        gate = s.gates.get((method, res.plural))
        if gate is not None:
            await gate.wait()
        for f in s.failures:
            if (
                f.times > 0
                and f.method in (method, "*")
                and f.resource in (None, res)
                and f.name in (None, name)
            ):
                f.times -= 1
                where = f"{self.name}: {method} {res.plural} {name or ''}"
                if f.status == 0:
                    raise ConnectionError(f"{where}: connection refused (injected)")
                raise _error(f.status, f"{where}: injected failure")

    # ---- what a test does besides calling -------------------------------------------------------

    def fail(
        self,
        method: str,
        resource: Resource | None = None,
        name: str | None = None,
        status: int = 500,
        times: float = 1,
    ) -> None:
        """The next `times` calls of `method` ("*": any) on `resource` (None: any), and `name`
        if given, raise ApiError(status), or ConnectionError for status 0. `times` may be
        math.inf (say, a kind that is not installed: status 404)."""
        self._server.failures.append(_Failure(method, resource, name, status, times))

    def hold(self, method: str, resource: Resource) -> anyio.Event:
        """Calls of `method` on `resource` wait (after they are counted in `calls`) until the
        returned event is set: a write in flight, for as long as a test wants."""
        gate = self._server.gates[(method, resource.plural)] = anyio.Event()
        return gate

    def hold_answers(self, method: str, resource: Resource) -> anyio.Event:
        """Writes by `method` on `resource` are made (and watched) at once, and their answers
        wait until the returned event is set: the watch's event comes first, as it may from
        a real API server."""
        gate = self._server.answer_gates[(method, resource.plural)] = anyio.Event()
        return gate

    def heal(self) -> None:
        """No more injected failures."""
        self._server.failures.clear()

    def compact(self) -> None:
        """Compact the history: a watch from a resourceVersion before now, or one that has
        not caught up to now yet, gets 410 Gone."""
        self._server.compacted = self._server.rv
        self._server.notify()

    @contextmanager
    def watches_held(self) -> Iterator[None]:
        """Watches deliver nothing meanwhile (a stalled stream); compact() inside makes them
        fall behind the compaction."""
        self._server.held += 1
        try:
            yield
        finally:
            self._server.held -= 1
            self._server.notify()

    def set_created(self, res: Resource, name: str, namespace: str | None, when: str) -> None:
        """Backdate an object as if it had been stored at `when` (no event: as if it always
        had been); what a test of "stored first" needs within one second."""
        self._server.objects[_key(res, namespace, name)]["metadata"]["creationTimestamp"] = when

    def stored(self, res: Resource, name: str, namespace: str | None = None) -> Obj | None:
        obj = self._server.objects.get(_key(res, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def changes(self, res: Resource | None = None) -> list[Change]:
        """Every write so far (of `res`), oldest first."""
        log = self._server.log
        if res is None:
            return list(log)
        return [c for c in log if c.key[:2] == (res.group_version, res.plural)]

    @property
    def calls(self) -> list[Call]:
        return self._server.calls

    # ---- the Kube interface ---------------------------------------------------------------------

    async def request(self, *args: Any, **kwargs: Any) -> Obj:
        raise NotImplementedError("FakeKube serves the typed methods only")

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        await self._call("get", res, namespace, name)
        return copy.deepcopy(self._server.find(_key(res, namespace, name)))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        keep: Callable[[Obj], Obj] | None = None,
        page: int = 500,
        **params: Any,
    ) -> tuple[list[Obj], str]:
        await self._call("list", res, namespace, None)
        match = _matcher(res, namespace, params)
        s = self._server
        items = [copy.deepcopy(o) for k, o in sorted(s.objects.items()) if match(k, o)]
        return [keep(o) for o in items] if keep else items, str(s.rv)

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        ns = namespace or obj.get("metadata", {}).get("namespace")
        await self._call("create", res, ns, obj.get("metadata", {}).get("name"))
        return copy.deepcopy(self._server.create(res, obj, ns))

    async def replace(self, res: Resource, obj: Obj, subresource: str | None = None) -> Obj:
        meta = obj["metadata"]
        await self._call("replace", res, meta.get("namespace"), meta["name"], subresource)
        key = _key(res, meta.get("namespace"), meta["name"])
        rv = meta.get("resourceVersion")
        if rv and rv != self._server.find(key)["metadata"]["resourceVersion"]:
            raise _error(409, f"{key[3]}: the object has been modified")
        return copy.deepcopy(self._server.update(key, obj, subresource))

    async def apply(
        self,
        res: Resource,
        obj: Obj,
        subresource: str | None = None,
        field_manager: str = "kubelbd",
    ) -> Obj:
        meta = obj["metadata"]
        await self._call("apply", res, meta.get("namespace"), meta["name"], subresource)
        s = self._server
        key = _key(res, meta.get("namespace"), meta["name"])
        old = s.objects.get(key)
        if subresource == "status":
            old = s.find(key)
            given = obj.get("status") or {}
            owners = s.status_owners.setdefault(key, {})
            others = set().union(*(v for m, v in owners.items() if m != field_manager))
            status = dict(old.get("status") or {})
            for k in owners.get(field_manager, set()) - set(given) - others:
                status.pop(k, None)
            status.update(copy.deepcopy(given))
            owners[field_manager] = set(given)
            return copy.deepcopy(s.update(key, {"status": status}, "status"))
        body = {k: v for k, v in obj.items() if k != "status"}
        if old is None:
            written = copy.deepcopy(s.create(res, body, meta.get("namespace")))
        else:
            new = copy.deepcopy(old)
            for f in ("labels", "annotations", "finalizers", "ownerReferences"):
                if f in meta:
                    new["metadata"][f] = copy.deepcopy(meta[f])
            new.update({k: copy.deepcopy(v) for k, v in body.items() if k != "metadata"})
            written = copy.deepcopy(s.update(key, new, None))
        gate = s.answer_gates.get(("apply", res.plural))
        if gate is not None:
            await gate.wait()
        return written

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> Obj:
        await self._call("patch", res, namespace, name, subresource)
        if patch_type not in ("merge", "strategic"):
            raise NotImplementedError(f"{patch_type} patches")
        key = _key(res, namespace, name)
        old = self._server.find(key)
        rv = (patch.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _error(409, f"{name}: the object has been modified")
        new = _merge(copy.deepcopy(old), patch, patch_type == "strategic")
        return copy.deepcopy(self._server.update(key, new, subresource))

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        preconditions: Obj | None = None,
        missing_ok: bool = True,
    ) -> None:
        await self._call("delete", res, namespace, name)
        key = _key(res, namespace, name)
        obj = self._server.objects.get(key)
        if obj is None:
            if missing_ok:
                return
            raise _error(404, f'{res.plural} "{name}" not found')
        for k, v in (preconditions or {}).items():
            if obj["metadata"].get(k) != v:
                raise _error(409, f"{name}: precondition failed: {k}")
        self._server.delete(key)

    async def watch(
        self,
        res: Resource,
        resource_version: str,
        namespace: str | None = None,
        **params: Any,
    ) -> AsyncGenerator[tuple[str, Obj], None]:
        await self._call("watch", res, namespace, None)
        s = self._server
        match = _matcher(res, namespace, params)
        pos = int(resource_version or 0)
        if pos == 0:  # from now, after a synthetic ADDED for everything there is
            pos = s.rv
            for k, o in sorted(s.objects.items()):
                if match(k, o):
                    yield "ADDED", copy.deepcopy(o)
        while True:
            if pos < s.compacted:
                raise _error(410, f"too old resource version: {pos} ({s.compacted})")
            if s.held or pos >= s.rv:
                await s.wait()
                continue
            change = s.log[bisect.bisect_right(s.log, pos, key=lambda c: c.rv)]
            pos = change.rv
            if match(change.key, change.obj):
                yield change.type, copy.deepcopy(change.obj)


def kubeconfig(kube: FakeKube) -> bytes:
    """A kubeconfig whose server is `kube`'s (see Connector)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": kube.host}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
    ).encode()


class Connector:
    """Stands in for kubelbd.tenant.sync.Connector (the `connect` argument of TenantSync and
    Registry): a new client of the fake server the kubeconfig names."""

    def __init__(self, *servers: FakeKube) -> None:
        self._servers = {k.host: k for k in servers}
        self.clients: list[FakeKube] = []

    async def __call__(self, kubeconfig: bytes, name: str = "") -> FakeKube:
        config = parse_kubeconfig(kubeconfig)
        server = config["clusters"][0]["cluster"]["server"]
        client = self._servers[server].client(name)
        self.clients.append(client)
        return client
