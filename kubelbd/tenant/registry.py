"""Tenant registration: one Secret per tenant, one task per tenant.

A tenant is a Secret in kubelbd's namespace labelled `kubelb.io/tenant: <name>` holding a
kubeconfig under `kubeconfig`. Adding it starts the tenant's loops; changing the kubeconfig
restarts them; deleting it stops them and removes everything kubelbd made for the tenant. A
finalizer on the Secret makes that cleanup happen even if the Secret is deleted while kubelbd
is down (and lets it use the kubeconfig one last time to tidy up the tenant cluster).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field

import anyio
import anyio.abc

from ..collector import release_frozen
from ..hub import RecordSink, Settling, StatusBoard
from ..ir.nodes import exclusive
from ..kube import ApiError, Kube, KubeconfigError
from ..kube.events import Recorder
from ..kube.informer import Informer
from ..objects import (
    MANAGED_BY,
    MANAGER,
    NAMESPACES,
    SECRETS,
    SERVICES,
    Obj,
    labels_of,
    managed_by_us,
)
from ..records import parse
from ..records.names import (
    CLEANUP_FINALIZER,
    TENANT_LABEL,
    TENANTS,
    namespace_of,
    valid_tenant_name,
)
from ..records.parse import RecordError
from ..records.types import TenantRecord
from ..retry import Backoff
from ..sources import SOURCES, twins
from ..sources.base import Source
from .sync import Connect, Connector, TenantSettings, TenantSync

log = logging.getLogger(__name__)

KUBECONFIG_KEY = "kubeconfig"
CLEANUP_TIMEOUT = 20.0


@dataclass
class _Running:
    sync: TenantSync
    fingerprint: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


def kubeconfig_of(secret: Obj) -> bytes:
    raw = (secret.get("data") or {}).get(KUBECONFIG_KEY)
    if raw is None:
        return b""
    try:
        return base64.b64decode(raw)
    except ValueError:
        return b""


class Registry:
    def __init__(
        self,
        mgmt: Kube,
        namespace: str,
        settings: TenantSettings,
        sink: RecordSink,
        board: StatusBoard,
        settling: Settling,
        sources: tuple[Source, ...] = SOURCES,
        connect: Connect | None = None,
        sync: type[TenantSync] = TenantSync,
    ) -> None:
        self.mgmt = mgmt
        # One policy for every use of a registration kubeconfig: the tenant's task and the
        # last clean-up of its cluster.
        self._connect = connect or Connector(settings.trust_kubeconfigs)
        self._sync = sync
        self.namespace = namespace
        self.sink = sink
        self.board = board
        self.settling = settling
        self.settings = settings
        self.sources = sources
        self.recorder = Recorder(mgmt)
        self._running: dict[str, _Running] = {}
        self._cleaning: set[str] = set()
        self._wake = anyio.Event()
        self._invalid_reported: set[str] = set()
        self._cleanup_backoff: dict[str, Backoff] = {}
        #: every tenant's node addresses and claims, as its Tenant record says
        self._node_records: dict[str, TenantRecord] = {}

    async def run(self) -> None:
        self.secrets = Informer(
            self.mgmt,
            SECRETS,
            lambda *_: self._wake.set(),
            namespace=self.namespace,
            label_selector=TENANT_LABEL,
        )
        # Tenant records carry the operator's policy: read before a tenant task starts (so
        # it never serves a moment without it), handed on whenever it changes.
        self.tenants = Informer(self.mgmt, TENANTS, self._on_tenant_record)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.secrets.run)
            tg.start_soon(self.tenants.run)
            await self.secrets.synced.wait()
            await self.tenants.synced.wait()
            tg.start_soon(self._collect_orphans)
            while True:
                await self._reconcile(tg)
                self.settling.known()
                await self._wake.wait()
                self._wake = anyio.Event()

    async def _reconcile(self, tg: anyio.abc.TaskGroup) -> None:
        desired: dict[str, tuple[Obj, str]] = {}
        invalid: set[str] = set()
        for secret in self.secrets.cache.values():
            meta = secret["metadata"]
            tenant = labels_of(secret).get(TENANT_LABEL, "")
            if not valid_tenant_name(tenant):
                report_key = f"{meta['name']}/{tenant}"  # a new bad name is reported again
                invalid.add(report_key)
                if report_key not in self._invalid_reported:
                    self._invalid_reported.add(report_key)
                    msg = f"tenant name {tenant!r} is not a DNS label of at most 56 characters"
                    log.error("secret %s/%s: %s", self.namespace, meta["name"], msg)
                    await self.recorder.emit(
                        {"apiVersion": "v1", "kind": "Secret", **secret},
                        "Warning",
                        "InvalidTenant",
                        msg,
                    )
                continue
            if meta.get("deletionTimestamp"):
                ours = CLEANUP_FINALIZER in (meta.get("finalizers") or [])
                if ours and tenant not in self._cleaning:
                    self._cleaning.add(tenant)
                    tg.start_soon(self._finalize, tenant, secret)
                continue
            if tenant in desired:
                log.error("tenant %s is registered by more than one Secret; using %s",
                          tenant, desired[tenant][0]["metadata"]["name"])  # fmt: skip
                continue
            raw = kubeconfig_of(secret)
            desired[tenant] = (secret, hashlib.sha256(raw).hexdigest())
            if CLEANUP_FINALIZER not in (meta.get("finalizers") or []):
                await self._add_finalizer(secret)

        self._invalid_reported &= invalid
        for tenant in list(self._running):
            if tenant not in desired and tenant not in self._cleaning:
                await self._stop(tenant)
                # Deleted without our finalizer (or it was removed by hand): tidy what we can.
                tg.start_soon(self._remove_records_retrying, tenant)
        for tenant, (secret, fingerprint) in desired.items():
            running = self._running.get(tenant)
            if running is not None and running.fingerprint == fingerprint:
                continue
            if running is not None:
                log.info("tenant %s: kubeconfig changed, restarting", tenant)
                await self._stop(tenant)
            self._start(tg, tenant, kubeconfig_of(secret), fingerprint)

    def tenant_record(self, tenant: str) -> Obj | None:
        """The Tenant record of `tenant`: only the one kubelbd's naming puts in the tenant's
        own namespace counts (anyone may label an object elsewhere)."""
        return self.tenants.cache.get(f"{namespace_of(tenant)}/{tenant}")

    def _on_tenant_record(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        tenant = str(meta.get("name", ""))
        if meta.get("namespace") != namespace_of(tenant):
            return
        running = self._running.get(tenant)
        if running is not None:
            running.sync.set_record(obj if kind != "DELETED" else None)
        record = None
        if kind != "DELETED":
            with contextlib.suppress(RecordError):
                record = parse.tenant_record(obj)
        # Most Tenant events are health: only a change of node addresses is worth a look at
        # every tenant's.
        if record != self._node_records.get(tenant):
            if record is None:
                self._node_records.pop(tenant, None)
            else:
                self._node_records[tenant] = record
            self._report_taken_addresses()

    def _report_taken_addresses(self) -> None:
        """Tell each tenant task which of its node addresses another tenant listed first
        (what the data plane leaves out for it, ir/nodes.py), so its Tenant record says so."""
        _, lost = exclusive(self._node_records.values())
        taken: dict[str, dict[str, str]] = {}
        for key, keeper in lost.items():
            tenant, address = key.split("/", 1)
            taken.setdefault(tenant, {})[address] = keeper
        for tenant, running in self._running.items():
            running.sync.node_addresses_taken(taken.get(tenant, {}))

    def _start(self, tg: anyio.abc.TaskGroup, tenant: str, kubeconfig: bytes, fp: str) -> None:
        sync = self._sync(
            tenant, kubeconfig, self.mgmt, self.sink, self.board, self.settling, self.settings,
            self.sources, self._connect,
        )  # fmt: skip
        sync.set_record(self.tenant_record(tenant))
        entry = _Running(sync, fp)
        self._running[tenant] = entry
        self._report_taken_addresses()
        self.settling.expect(tenant)
        tg.start_soon(self._supervise, entry)

    async def _supervise(self, entry: _Running) -> None:
        """Run one tenant; a bug in it is logged and retried, never fatal to the others."""
        backoff = Backoff(initial=1, maximum=60)
        try:
            with entry.scope:
                while True:
                    try:
                        await entry.sync.run()
                    except Exception:
                        log.exception("tenant %s: loop failed; restarting", entry.sync.name)
                        release_frozen(f"tenant {entry.sync.name}: its loop failed")
                    await anyio.sleep(backoff.next())
        finally:
            entry.done.set()

    async def _stop(self, tenant: str) -> None:
        entry = self._running.pop(tenant, None)
        if entry is None:
            return
        log.info("tenant %s: stopping", tenant)
        entry.scope.cancel()
        await entry.done.wait()
        self.settling.forget(tenant)
        release_frozen(f"tenant {tenant}: stopped")  # collected once for all stopped at once

    async def _add_finalizer(self, secret: Obj) -> None:
        meta = secret["metadata"]
        finalizers = [*(meta.get("finalizers") or []), CLEANUP_FINALIZER]
        try:
            await self.mgmt.patch(
                SECRETS,
                meta["name"],
                {
                    "metadata": {
                        "finalizers": finalizers,
                        "resourceVersion": meta["resourceVersion"],
                    }
                },
                self.namespace,
            )
        except (ApiError, ConnectionError) as e:
            log.warning("secret %s: cannot add finalizer: %s", meta["name"], e)

    async def _finalize(self, tenant: str, secret: Obj) -> None:
        try:
            await self._stop(tenant)
            log.info("tenant %s: registration deleted, removing everything made for it", tenant)
            with anyio.move_on_after(CLEANUP_TIMEOUT):
                await self._clean_tenant_cluster(tenant, kubeconfig_of(secret))
            await self._remove_records(tenant)
            await self.mgmt.patch(
                SECRETS,
                secret["metadata"]["name"],
                {"metadata": {"$deleteFromPrimitiveList/finalizers": [CLEANUP_FINALIZER]}},
                self.namespace,
                patch_type="strategic",
            )
            self._cleanup_backoff.pop(tenant, None)
        except (ApiError, ConnectionError) as e:
            backoff = self._cleanup_backoff.setdefault(tenant, Backoff(initial=2, maximum=120))
            delay = backoff.next()
            log.warning("tenant %s: cleanup incomplete, retrying in %.0f s: %s", tenant, delay, e)
            await anyio.sleep(delay)
            self._wake.set()
        finally:
            self._cleaning.discard(tenant)

    async def _clean_tenant_cluster(self, tenant: str, kubeconfig: bytes) -> None:
        """Best effort: the tenant may be unreachable; its records go regardless."""
        try:
            kube = await self._connect(kubeconfig, tenant)
        except KubeconfigError as e:
            log.warning("tenant %s: cannot clean the tenant cluster: %s", tenant, e)
            return
        try:
            services, _ = await kube.list(SERVICES, labelSelector=f"{MANAGED_BY}={MANAGER}")
            for svc in services:
                if twins.is_twin(svc):
                    await kube.delete(
                        SERVICES, svc["metadata"]["name"], svc["metadata"]["namespace"]
                    )
            for source in self.sources:
                for resource, obj in source.tenant_objects():
                    name = obj["metadata"]["name"]
                    ns = obj["metadata"].get("namespace")
                    existing = await kube.get_or_none(resource, name, ns)
                    if existing is not None and managed_by_us(existing):
                        await kube.delete(resource, name, ns)
        except (ApiError, ConnectionError) as e:
            log.warning("tenant %s: cleaning the tenant cluster: %s", tenant, e)
        finally:
            await kube.aclose()

    async def _remove_records(self, tenant: str) -> None:
        self.board.forget_tenant(tenant)
        self.sink.dialled.forget(tenant)
        await self.mgmt.delete(NAMESPACES, namespace_of(tenant))

    async def _remove_records_retrying(self, tenant: str) -> None:
        """Outside the finalizer's own retry: a management API error must not end kubelbd."""
        backoff = Backoff(maximum=60)
        while True:
            try:
                await self._remove_records(tenant)
                return
            except (ApiError, ConnectionError) as e:
                log.warning("tenant %s: cannot remove its records yet: %s", tenant, e)
                await anyio.sleep(backoff.next())

    async def _collect_orphans(self) -> None:
        """Tenant namespaces whose Secret is gone (deleted while kubelbd was away, unfinalized)."""
        backoff = Backoff(maximum=30)
        while True:
            try:
                namespaces, _ = await self.mgmt.list(NAMESPACES, labelSelector=TENANT_LABEL)
                break
            except (ApiError, ConnectionError) as e:
                log.warning("listing tenant namespaces: %s", e)
                await anyio.sleep(backoff.next())
        registered = {labels_of(s).get(TENANT_LABEL) for s in self.secrets.cache.values()}
        for ns in namespaces:
            tenant = labels_of(ns).get(TENANT_LABEL)
            if tenant and ns["metadata"]["name"] != namespace_of(tenant):
                # Not one kubelbd made: its label must not get another namespace deleted.
                log.warning("namespace %s ignored: labelled %s=%s, which is not its name",
                            ns["metadata"]["name"], TENANT_LABEL, tenant)  # fmt: skip
                continue
            if tenant and tenant not in registered and not ns["metadata"].get("deletionTimestamp"):
                log.info("tenant %s: no registration Secret any more, removing its records", tenant)
                await self._remove_records_retrying(tenant)
