"""The tenant side of TLS: copies of the tenant Secrets its Ingresses reference.

Only Secrets that an Ingress of ours names in `spec.tls`, in that Ingress's own namespace, are
copied, and only into the tenant's own namespace of the management cluster: a tenant cannot
make kubelbd read, serve or copy anything of another tenant's. Updates and deletions follow.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from . import ingress, records
from .kube import SECRETS, Obj

if TYPE_CHECKING:
    from .tenant import TenantSync

log = logging.getLogger(__name__)

TLS_LABEL = "kubelb.io/tls"
SOURCE_LABEL = "kubelb.io/tls-source"


def referenced(obj: Obj) -> set[tuple[str, str]]:
    """(namespace, name) of the tenant Secrets an Ingress serves its hosts with."""
    annotations = obj["metadata"].get("annotations") or {}
    if ingress.certificate_source(annotations) != "tenant":
        return set()
    ns = obj["metadata"]["namespace"]
    return {
        (ns, t["secretName"])
        for t in (obj.get("spec") or {}).get("tls") or []
        if t.get("secretName")
    }


def copy_of(tenant: str, secret: Obj) -> Obj:
    meta = secret["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": f"{meta['namespace']}.{meta['name']}",
            "namespace": records.namespace_of(tenant),
            "labels": records.labels(tenant) | {TLS_LABEL: "true", SOURCE_LABEL: "tenant"},
        },
        "data": {
            k: v for k, v in (secret.get("data") or {}).items() if k in ("tls.crt", "tls.key")
        },
    }


def digest(secret: Obj) -> str:
    data = secret.get("data") or {}
    return hashlib.sha256(f"{data.get('tls.crt')}|{data.get('tls.key')}".encode()).hexdigest()


class SecretCopies:
    def __init__(self, tenant: TenantSync) -> None:
        self.t = tenant
        self.refs: dict[str, set[tuple[str, str]]] = {}  # ingress key -> secrets it uses
        self.copies: dict[str, str] = {}  # copy name -> digest of what was copied
        self.dirty = True

    def on_ingress(self, key: str, obj: Obj | None) -> None:
        """Called for every reconciled Ingress (None: gone or not ours)."""
        refs = referenced(obj) if obj is not None else set()
        if self.refs.get(key, set()) != refs:
            self.refs[key] = refs
            self.dirty = True

    def on_secret(self, _kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if any((meta["namespace"], meta["name"]) in r for r in self.refs.values()):
            self.dirty = True
            self.t.wake()

    async def load(self) -> None:
        items, _ = await self.t.mgmt.list(
            SECRETS, self.t.namespace, labelSelector=f"{SOURCE_LABEL}=tenant"
        )
        self.copies = {s["metadata"]["name"]: digest(s) for s in items}

    async def reconcile(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        try:
            await self._copy_wanted()
        except BaseException:
            self.dirty = True  # retried with the tenant's next reconcile
            raise

    async def _copy_wanted(self) -> None:
        wanted: set[tuple[str, str]] = set().union(*self.refs.values()) if self.refs else set()
        keep = set()
        for ns, name in sorted(wanted):
            source = self.t.secrets.cache.get(f"{ns}/{name}")
            if source is None:
                continue  # reported on the Route by the data plane: SecretNotFound
            copy = copy_of(self.t.name, source)
            keep.add(copy["metadata"]["name"])
            if self.copies.get(copy["metadata"]["name"]) != digest(source):
                await self.t.mgmt.apply(SECRETS, copy)
                self.copies[copy["metadata"]["name"]] = digest(source)
                log.info("tenant %s: copied TLS Secret %s/%s", self.t.name, ns, name)
        for name in [n for n in self.copies if n not in keep]:
            await self.t.mgmt.delete(SECRETS, name, self.t.namespace)
            del self.copies[name]
            log.info("tenant %s: removed the copy of TLS Secret %s", self.t.name, name)
