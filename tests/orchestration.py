"""Helpers for the orchestration tests: waiting without sleeping blind, running a component
for the length of a block, tenant objects, and a RecordSink that remembers what it was told."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from kubelbd.hub import Dialled
from kubelbd.objects import MANAGED_BY, MANAGER, Obj, Resource
from kubelbd.records.names import RecordKind, tenant_of
from kubelbd.records.types import RouteRecord

from .fakekube import FakeKube

#: how long any one thing may take before a test gives up on it
DEADLINE = 5.0


async def until(
    condition: Callable[[], object | Awaitable[object]], what: str = "", timeout: float = DEADLINE
) -> None:
    """Poll `condition` (sync or async) until it holds; fail after `timeout` seconds."""
    deadline = anyio.current_time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await anyio.sleep(0.002)


@asynccontextmanager
async def running(
    *tasks: Callable[[], Coroutine[Any, Any, object]],
) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run `tasks` for the length of the block, then cancel them."""
    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(task)
        yield tg
        tg.cancel_scope.cancel()


# ---- tenant objects ----------------------------------------------------------------------------


def namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}},
    }


def node(name: str, address: str, ready: bool = True) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": address},
            ],
        },
    }


def service(name: str, type_: str = "ClusterIP", port: int = 80, ns: str = "default") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": type_,
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def ingress(
    name: str, host: str, backend: str, class_: str = "kubelb", ns: str = "default", **extra: Any
) -> Obj:
    path = {
        "path": "/",
        "pathType": "Prefix",
        "backend": {"service": {"name": backend, "port": {"number": 80}}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ingressClassName": class_, "rules": [{"host": host, "http": {"paths": [path]}}]}
        | extra,
    }


def ours(obj: Obj) -> Obj:
    """`obj` labelled as kubelbd's."""
    obj["metadata"].setdefault("labels", {})[MANAGED_BY] = MANAGER
    return obj


def condition(obj: Obj | None, type_: str) -> dict[str, Any]:
    """Condition `type_` in obj's status ({} when it has none)."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def status_of(kube: FakeKube, res: Resource, name: str, namespace: str | None = None) -> Any:
    """The stored object's status ({} when it has none, or there is no object)."""
    return (kube.stored(res, name, namespace) or {}).get("status") or {}


def condition_of(
    kube: FakeKube, res: Resource, name: str, namespace: str, type_: str, field: str = "status"
) -> Any:
    """A field of condition `type_` of the stored object (None when it has none)."""
    return condition(kube.stored(res, name, namespace), type_).get(field)


# ---- the tenant side's view of the data plane ---------------------------------------------------


class RecordingSink:
    """A hub.RecordSink that keeps (what, kind, record id, spec) of every call, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, Any]] = []
        self.dialled = Dialled()
        #: (kind, record id) deleted and not written since, as the data plane keeps them
        self._withdrawn: set[tuple[str, str]] = set()

    def provisional(self, record: RouteRecord) -> None:
        self.seen.append(("provisional", "Route", record.id, record.spec))

    def written(self, kind: RecordKind, obj: Obj) -> None:
        rid = f"{tenant_of(obj)}/{obj['metadata']['name']}"
        self.seen.append(("written", kind.kind, rid, obj.get("spec")))
        self._withdrawn.discard((kind.kind, rid))

    def deleted(self, kind: RecordKind, tenant: str, name: str) -> None:
        self.seen.append(("deleted", kind.kind, f"{tenant}/{name}", None))
        self._withdrawn.add((kind.kind, f"{tenant}/{name}"))

    def revert(self, kind: RecordKind, tenant: str, name: str) -> None:
        self.seen.append(("reverted", kind.kind, f"{tenant}/{name}", None))

    async def listed(self) -> None:
        return

    def stored(self, kind: RecordKind, tenant: str, name: str) -> Any:
        return None

    def withdrawn(self, kind: RecordKind, tenant: str) -> set[str]:
        return {
            rid.removeprefix(f"{tenant}/")
            for k, rid in self._withdrawn
            if k == kind.kind and rid.startswith(f"{tenant}/")
        }

    def of(self, record_id: str) -> list[tuple[str, str, str, Any]]:
        return [s for s in self.seen if s[2] == record_id]
