"""Copies of the tenant TLS Secrets that objects of ours are served with.

Only Secrets that an object of ours names (its References.tls_secrets: for an Ingress, those
in `spec.tls`, in its own namespace) are copied, and only into the tenant's own namespace of
the management cluster: a tenant cannot make kubelbd read, serve or copy anything of another
tenant's. Updates and deletions follow: a tenant Secret deleted takes its copy with it at
once; a copy that nothing names any more goes COPY_GRACE later, because the Route record
still naming it may be on its way to a replica serving from the records (record writes
yield, tenant.records.RECORD_YIELD), and a copy deleted first left that replica without a
certificate for the host meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping

import anyio

from ..kube import Kube
from ..objects import SECRETS, Obj
from ..records.names import (
    TLS_LABEL,
    TLS_SOURCE_LABEL,
    copy_name,
    labels,
    namespace_of,
    tenant_of,
)
from ..sources.base import Ref
from .records import RECORD_YIELD

log = logging.getLogger(__name__)

#: how long a copy nothing names any more is kept (above)
COPY_GRACE = RECORD_YIELD + 5.0


def copy_of(tenant: str, secret: Obj) -> Obj:
    meta = secret["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": copy_name(meta["namespace"], meta["name"]),
            "namespace": namespace_of(tenant),
            "labels": labels(tenant) | {TLS_LABEL: "true", TLS_SOURCE_LABEL: "tenant"},
        },
        "data": {
            k: v for k, v in (secret.get("data") or {}).items() if k in ("tls.crt", "tls.key")
        },
    }


def digest(secret: Obj) -> str:
    data = secret.get("data") or {}
    return hashlib.sha256(f"{data.get('tls.crt')}|{data.get('tls.key')}".encode()).hexdigest()


class SecretCopies:
    def __init__(self, tenant: str, mgmt: Kube) -> None:
        self.tenant = tenant
        self.mgmt = mgmt
        self.refs: dict[str, frozenset[Ref]] = {}  # object id -> secrets it is served with
        self.copies: dict[str, str] = {}  # copy name -> digest of what was copied
        #: copy name -> when nothing named it any more (anyio.current_time())
        self.unnamed: dict[str, float] = {}
        self.dirty = True
        self._later = anyio.Event()  # set when a copy waits out its grace

    async def run(self, wake: Callable[[], None]) -> None:
        """Mark the copies dirty and `wake` the tenant when a copy's grace has run out."""
        while True:
            await self._later.wait()
            self._later = anyio.Event()
            if self.unnamed:
                due = min(self.unnamed.values()) + COPY_GRACE
                await anyio.sleep(max(0.0, due - anyio.current_time()))
                self.dirty = True
                wake()

    def uses(self, object_id: str, secrets: frozenset[Ref]) -> None:
        """What one object of ours is served with now (empty: nothing, or gone)."""
        if self.refs.get(object_id, frozenset()) != secrets:
            if secrets:
                self.refs[object_id] = secrets
            else:
                self.refs.pop(object_id, None)
            self.dirty = True

    def referenced(self, namespace: str, name: str) -> bool:
        return any((namespace, name) in r for r in self.refs.values())

    def on_secret(self, obj: Obj) -> bool:
        """Whether a Secret event concerns a copy (then the next pass copies again)."""
        meta = obj["metadata"]
        if self.referenced(meta["namespace"], meta["name"]):
            self.dirty = True
            return True
        return False

    async def load(self) -> None:
        items, _ = await self.mgmt.list(
            SECRETS, namespace_of(self.tenant), labelSelector=f"{TLS_SOURCE_LABEL}=tenant"
        )
        # One labelled for another tenant is nobody's (tenant_of): not ours to keep or delete.
        self.copies = {s["metadata"]["name"]: digest(s) for s in items if tenant_of(s)}

    async def reconcile(self, secrets: Mapping[str, Obj]) -> None:
        """Copy what is referenced and changed, delete copies nothing references; `secrets`
        is the tenant's TLS Secret cache."""
        if not self.dirty:
            return
        self.dirty = False
        try:
            await self._copy_wanted(secrets)
        except BaseException:
            self.dirty = True  # retried with the tenant's next reconcile
            raise

    async def _copy_wanted(self, secrets: Mapping[str, Obj]) -> None:
        wanted: set[Ref] = set().union(*self.refs.values()) if self.refs else set()
        keep = set()
        for ns, name in sorted(wanted):
            source = secrets.get(f"{ns}/{name}")
            if source is None:
                continue  # reported on the Route by the data plane: SecretNotFound
            copy, content = copy_of(self.tenant, source), digest(source)
            keep.add(copy["metadata"]["name"])
            if self.copies.get(copy["metadata"]["name"]) != content:
                await self.mgmt.apply(SECRETS, copy)
                self.copies[copy["metadata"]["name"]] = content
                log.info("tenant %s: copied TLS Secret %s/%s", self.tenant, ns, name)
        named = {copy_name(ns, name) for ns, name in wanted}
        now = anyio.current_time()
        self.unnamed = {n: t for n, t in self.unnamed.items() if n in self.copies and n not in keep}
        for name in [n for n in self.copies if n not in keep]:
            if name not in named and now - self.unnamed.setdefault(name, now) < COPY_GRACE:
                self._later.set()
                continue
            await self.mgmt.delete(SECRETS, name, namespace_of(self.tenant))
            del self.copies[name]
            self.unnamed.pop(name, None)
            log.info("tenant %s: removed the copy of TLS Secret %s", self.tenant, name)
