"""The data plane loop: records in the management cluster → IR → Envoy files → status.

Records arrive two ways: from a watch on every Route and Tenant record (which is all there is
after a restart, even with every tenant unreachable), and straight from the tenant loops: the
moment they have translated an Ingress (`provisional`, before the record is written), and again
once it is written. Both feed the same incremental model; duplicates are recognised by uid and
generation.

After each publish, a separate task waits until Envoy's admin interface reports the new file
versions applied, then writes the results back: conditions on the Route records, the address
in the tenant Ingress's status, and an Event where a host was refused.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.abc

from . import conditions, envoy_config, ir, issuers, records, tls
from .dataplane_l4 import L4Settings, LoadBalancers, ServiceHandle
from .envoy_admin import EnvoyAdmin
from .informer import Backoff, Informer
from .issuers import ACMESettings, Issuers
from .kube import SECRETS, ApiError, Kube, Obj
from .publisher import Publisher
from .tenant_tls import TLS_LABEL

log = logging.getLogger(__name__)

STATUS_MANAGER = "kubelbd-dataplane"
STATUS_CONCURRENCY = 16
PROGRESS_REASONS = frozenset({"Issuing", "WaitingForCertManager"})
STATUS_DELAY = 0.05
STATUS_APPLY_TIMEOUT = 30
STATUS_WRITE_TIMEOUT = 15


class TenantHandle(ServiceHandle, Protocol):
    async def set_ingress_address(self, namespace: str, name: str, served: bool) -> None: ...
    def ingress(self, namespace: str, name: str) -> Obj | None: ...


class TenantDirectory(Protocol):
    """The registry, as the data plane sees it."""

    def get(self, tenant: str) -> TenantHandle | None: ...
    async def settled(self, timeout: float = ...) -> None: ...


class DataPlane:
    def __init__(
        self,
        mgmt: Kube,
        settings: envoy_config.Settings,
        publisher: Publisher,
        admin: EnvoyAdmin,
        tenants: TenantDirectory,
        public_address: str = "",
        l4: L4Settings | None = None,
        acme: ACMESettings | None = None,
    ) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self.publisher = publisher
        self.admin = admin
        self.tenants = tenants
        self.public_address = public_address
        self.model = ir.Model()
        self.renderer = envoy_config.Renderer(settings)
        self.l4 = LoadBalancers(mgmt, l4 or L4Settings())
        self.l4.wake = self._wake_up
        self.certificates: dict[str, tls.CertificateData] = {}  # secret id -> content
        #: ACME HTTP-01 answers being served: token -> key authorization
        self.challenges: dict[str, str] = {}
        self.tls_plan = tls.TLSPlan()
        self._tls_dirty = True
        self._tls_routes: set[str] = set()
        self._challenges_published = anyio.Event()
        self.issuers = Issuers(
            mgmt,
            acme or ACMESettings(),
            lambda: self.certificates,
            self.publish_challenges,
            self._tls_changed,
        )
        self.first_publish = anyio.Event()
        self._upserts: dict[str, ir.RouteRecord] = {}
        self._deletes: set[str] = set()
        self._tenant_records: dict[str, ir.TenantRecord] = {}
        self._tenants_changed = True
        self._seen: dict[str, tuple[str, int]] = {}  # route id -> (uid, generation)
        self._wake = anyio.Event()
        self._published = anyio.Event()
        self._status_pending: set[str] = set()
        self._status_written: dict[str, Any] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._status_backoff = Backoff(initial=1, maximum=30)
        self._next_render = math.inf  # when a timer wakes the render loop (_render_at)

    # ---- record intake (RecordSink) ----------------------------------------------------------

    def provisional(self, tenant: str, name: str, spec: Obj) -> None:
        """A record being written right now: render it without waiting for the write."""
        rec = ir.RouteRecord(tenant, name, spec, 0)
        self._seen[rec.id] = ("", 0)
        self._deletes.discard(rec.id)
        self._upserts[rec.id] = rec
        self._wake.set()

    def upsert(self, obj: Obj) -> None:
        rec = records.route_record(obj)
        if rec is None:
            return
        uid = obj["metadata"].get("uid", "")
        seen = self._seen.get(rec.id)
        if seen is not None and seen[0] == uid and seen[1] >= rec.generation:
            return  # our own status write, or an event older than a record we already have
        self._seen[rec.id] = (uid, rec.generation)
        self._deletes.discard(rec.id)
        pending = self._upserts.get(rec.id) or self.model.routes.get(rec.id)
        if pending is not None and pending.spec == rec.spec:
            # The confirmation of a provisional record: same content, now with a generation,
            # which only the status needs; the model's indexes do not change.
            if rec.id in self._upserts:
                self._upserts[rec.id] = rec
            else:
                self.model.routes[rec.id] = rec
            self._status_pending.add(rec.id)
            self._published.set()
            return
        self._upserts[rec.id] = rec
        self._wake.set()

    def delete(self, tenant: str, name: str, uid: str | None = None) -> None:
        rid = f"{tenant}/{name}"
        seen = self._seen.get(rid)
        if uid is not None and seen is not None and seen[0] != uid:
            return  # a stale delete of an object already replaced
        self._seen.pop(rid, None)
        self._upserts.pop(rid, None)
        self._deletes.add(rid)
        self._status_written.pop(rid, None)
        self._wake.set()

    def _wake_up(self) -> None:
        self._wake.set()

    def _on_secret(self, kind: str, obj: Obj) -> None:
        tenant = records.tenant_of(obj)
        if tenant is None:
            return
        sid = f"{tenant}/{obj['metadata']['name']}"
        if kind == "DELETED":
            self.certificates.pop(sid, None)
        else:
            crt, key = tls.secret_data(obj)
            self.certificates[sid] = tls.CertificateData(sid, crt, key)
        self._tls_dirty = True
        self._wake.set()

    async def publish_challenges(self, challenges: dict[str, str]) -> bool:
        """ACME HTTP-01: serve these answers on plain HTTP, for any host; True once Envoy
        reports them applied."""
        self.challenges = dict(challenges)
        self._challenges_published = anyio.Event()
        self._tls_changed()
        with anyio.move_on_after(30):
            await self._challenges_published.wait()
            return await self.wait_applied(30)
        return False

    def _tls_changed(self) -> None:
        self._tls_dirty = True
        self._wake.set()

    def upsert_lb(self, obj: Obj) -> None:
        self.l4.upsert(obj)

    def delete_lb(self, tenant: str, name: str, uid: str | None = None) -> None:
        self.l4.delete(tenant, name, uid)

    def tenant(self, obj: Obj) -> None:
        rec = records.tenant_record(obj)
        if rec is not None and self._tenant_records.get(rec.name) != rec:
            self._tenant_records[rec.name] = rec
            self._tenants_changed = True
            self._wake.set()

    def _on_route(self, kind: str, obj: Obj) -> None:
        records.dispatch(kind, obj, self.upsert, self.delete)

    def _on_tenant(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            name = records.tenant_of(obj)
            if name is not None and self._tenant_records.pop(name, None) is not None:
                self._tenants_changed = True
                self._wake.set()
        else:
            self.tenant(obj)

    # ---- render loop -------------------------------------------------------------------------

    async def run(self) -> None:
        await self.publisher.load_async()
        selector = f"{records.MANAGED_BY}={records.MANAGER}"
        routes = Informer(self.mgmt, records.ROUTES, self._on_route, label_selector=selector)
        tenants = Informer(self.mgmt, records.TENANTS, self._on_tenant, label_selector=selector)
        secrets = Informer(self.mgmt, SECRETS, self._on_secret, label_selector=f"{TLS_LABEL}=true")
        l4_informers = [secrets, *self.l4.informers()]
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._recheck_certificates)
            tg.start_soon(self.issuers.run)
            for inf in (routes, tenants, *l4_informers):
                tg.start_soon(inf.run)
            tg.start_soon(self._status_loop)
            self._task_group = tg
            for inf in (routes, tenants, *l4_informers):
                await inf.synced.wait()
            # After a restart, let every reachable tenant resync before the first publish:
            # Envoy keeps serving the previous files meanwhile, then gets the full picture.
            await self.tenants.settled()
            log.info(
                "data plane: %d routes, %d tenants in the records",
                len(routes.cache),
                len(tenants.cache),
            )
            while True:
                await self._render_once()
                self.first_publish.set()
                await self._wake.wait()
                self._wake = anyio.Event()

    def _render_tls(
        self, upserts: set[str], deletes: set[str], delta: ir.Delta, files: dict[str, Any]
    ) -> tuple[set[str], bool]:
        """Certificates, SNI chains, redirects and ACME answers, when anything TLS changed;
        returns the secret files nothing refers to any more, and whether it rendered."""
        for rid in upserts | deletes:
            route = self.model.routes.get(rid)
            if route is not None and route.spec.get("tls"):
                self._tls_routes.add(rid)
                self._tls_dirty = True
            elif rid in self._tls_routes:
                self._tls_routes.discard(rid)
                self._tls_dirty = True
        if self._tls_routes and (delta.hosts or delta.catch_all):
            self._tls_dirty = True  # ownership may have moved a TLS host
        if not self._tls_dirty:
            return set(), False
        self._tls_dirty = False
        before = self.tls_plan.problems
        tls_routes = [self.model.routes[r] for r in self._tls_routes]
        self.issuers.update(issuers.wanted(self.model.ir, tls_routes))
        self.tls_plan = tls.plan(
            self.model.ir,
            tls_routes,
            self.certificates,
            datetime.datetime.now(datetime.UTC),
            self.issuers.pending(),
        )
        tls_files, stale = self.renderer.update_tls(
            self.tls_plan, self.challenges, self.model.ir.catch_all is not None
        )
        files.update(tls_files)
        changed = set(before) ^ set(self.tls_plan.problems)
        changed |= {r for r in before if before.get(r) != self.tls_plan.problems.get(r)}
        self._status_pending |= changed | (self._tls_routes & upserts)
        return stale, True

    async def _render_l4(self, files: dict[str, Any]) -> None:
        try:
            l4_listeners, l4_clusters = await self.l4.reconcile(self._tenant_records)
            files.update(self.renderer.update_l4(l4_listeners, l4_clusters))
            if self.l4.dirty:
                self._retry_soon()  # some allocation could not be recorded
        except (ApiError, ConnectionError) as e:
            log.warning("load balancers: %s; retrying", e)
            self.l4.dirty = True
            self._retry_soon()

    async def _render_once(self) -> None:
        upserts, self._upserts = self._upserts, {}
        deletes, self._deletes = self._deletes, set()
        tenant_set = None
        if self._tenants_changed:
            self._tenants_changed = False
            tenant_set = list(self._tenant_records.values())
            self.l4.dirty = True  # node addresses are in every L4 cluster too
        start = time.perf_counter()
        delta = self.model.apply(upserts.values(), deletes, tenant_set)
        files = self.renderer.update(self.model.ir, delta, anyio.current_time())
        removal = self.renderer.next_removal()
        if removal is not None:
            self._render_at(removal)  # an unused cluster's grace period ends
        stale, published_challenges = self._render_tls(set(upserts), deletes, delta, files)
        if self.l4.dirty:
            await self._render_l4(files)
        rendered = time.perf_counter()
        written = await self.publisher.publish(files)
        await self.publisher.remove(stale)
        if published_challenges:
            self._challenges_published.set()
        if written:
            log.debug(
                "rendered %d changes in %.1f ms, published %s in %.1f ms",
                len(upserts) + len(deletes),
                (rendered - start) * 1000,
                ", ".join(sorted(written)),
                (time.perf_counter() - rendered) * 1000,
            )
        self._status_pending |= delta.routes | set(upserts)
        if self._status_pending or self.l4.pending_status:
            self._published.set()

    async def _recheck_certificates(self) -> None:
        """Certificates expire while being served: look again every minute."""
        while True:
            await anyio.sleep(60)
            if self._tls_routes:
                self._tls_dirty = True
                self._wake.set()

    def _render_at(self, at: float) -> None:
        """Render again at `at` (anyio's clock). One timer, for the earliest time asked: every
        render asks again for what it still needs (a retry, an unused cluster's removal)."""
        if self._task_group is None or self._next_render <= at:
            return
        self._next_render = at

        async def later() -> None:
            await anyio.sleep_until(at)
            if self._next_render == at:
                self._next_render = math.inf
                self._wake.set()

        self._task_group.start_soon(later)

    def _retry_soon(self) -> None:
        self._render_at(anyio.current_time() + 1)

    # ---- status after Envoy applied ----------------------------------------------------------

    async def wait_applied(self, timeout: float | None = None) -> bool:
        """True once Envoy reports every file version kubelbd has published.

        Only files Envoy subscribes to count (a route table no listener names yet is never
        read); a new listener's route tables and secrets are loaded while it warms, before
        the listener file's version is reported as applied."""
        delay = 0.002
        with anyio.move_on_after(timeout):
            while True:
                versions = await self.admin.versions()
                if (
                    versions
                    and all(versions.get(f) == self.publisher.published.get(f)
                            for f in ("lds.json", "cds.json"))
                    and all(versions.get(f, v) == v for f, v in self.publisher.published.items())
                ):  # fmt: skip
                    return True
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.2)
        return False

    async def _status_loop(self) -> None:
        while True:
            await self._published.wait()
            # Status is for people, traffic is for clients: let Envoy apply the change without
            # this loop's requests (and the API writes that follow) competing for the CPU.
            await anyio.sleep(STATUS_DELAY)
            self._published = anyio.Event()
            if not await self.wait_applied(STATUS_APPLY_TIMEOUT):
                log.warning(
                    "Envoy has not applied the published files within %d s; status waits",
                    STATUS_APPLY_TIMEOUT,
                )
                self._published.set()
                continue
            pending, self._status_pending = self._status_pending, set()
            lb_pending, self.l4.pending_status = self.l4.pending_status, set()
            failed: set[str] = set()
            lb_failed: set[str] = set()
            limit = anyio.Semaphore(STATUS_CONCURRENCY)
            async with anyio.create_task_group() as tg:
                for rid in sorted(pending):
                    tg.start_soon(self._report_guarded, self._report, rid, failed, limit)
                for rid in sorted(lb_pending):
                    tg.start_soon(self._report_guarded, self._report_lb, rid, lb_failed, limit)
            if failed or lb_failed:
                # Retried with backoff, without holding up anyone else's status.
                assert self._task_group is not None
                delay = self._status_backoff.next()
                self._task_group.start_soon(self._retry_status, failed, lb_failed, delay)
            else:
                self._status_backoff.reset()

    async def _retry_status(self, failed: set[str], lb_failed: set[str], delay: float) -> None:
        await anyio.sleep(delay)
        self._status_pending |= failed
        self.l4.pending_status |= lb_failed
        self._published.set()

    async def _report_lb(self, rid: str) -> None:
        await self.l4.report(rid, self.tenants.get(rid.split("/", 1)[0]))

    async def _report_guarded(
        self,
        report: Callable[[str], Awaitable[None]],
        rid: str,
        failed: set[str],
        limit: anyio.Semaphore,
    ) -> None:
        """One status write; a failure is retried later, a vanished object is forgotten."""
        async with limit:
            try:
                with anyio.fail_after(STATUS_WRITE_TIMEOUT):
                    await report(rid)
            except ApiError as e:
                if e.not_found:
                    log.debug("status of %s: %s; gone meanwhile", rid, e)
                    return
                log.warning("status of %s: %s", rid, e)
                failed.add(rid)
            except (ConnectionError, TimeoutError) as e:
                log.warning("status of %s: %s", rid, e or "timed out")
                failed.add(rid)

    async def _report(self, rid: str) -> None:
        route = self.model.routes.get(rid)
        if route is None:
            return
        served = self.model.ir.served.get(rid, [])
        lost = self.model.ir.conflicts.get(rid, [])
        where = f" at {self.public_address}" if self.public_address else ""
        programmed = (
            conditions.condition(
                "Programmed", True, "Programmed", f"serving {', '.join(served)}{where}",
                route.generation,
            )
            if served
            else conditions.condition(
                "Programmed", False, "NoHosts", "no host of this route is served",
                route.generation,
            )
        )  # fmt: skip
        problems = [(p["reason"], p["message"]) for p in route.spec.get("problems", [])]
        accepted = conditions.accepted(problems, route.generation)
        conflict_msg = "; ".join(f"host {h} is held by tenant {t}" for h, t in lost)
        conflict = (
            conditions.condition("Conflict", True, "HostConflict", conflict_msg, route.generation)
            if lost
            else conditions.condition("Conflict", False, "NoConflict", "", route.generation)
        )
        conds = [accepted, programmed, conflict]
        tls_problems = self.tls_plan.problems.get(rid, [])
        if route.spec.get("tls"):
            conds.append(
                conditions.condition(
                    "CertificateReady", False, tls_problems[0].reason,
                    "; ".join(p.message for p in tls_problems), route.generation,
                )
                if tls_problems
                else conditions.condition(
                    "CertificateReady", True, "CertificateReady",
                    "every TLS host is served with a valid certificate", route.generation,
                )
            )  # fmt: skip
        status = {"hosts": ",".join(served), "conditions": conds}
        fingerprint = (
            route.generation, tuple(problems), tuple(served), tuple(lost), tuple(tls_problems)
        )  # fmt: skip
        if self._status_written.get(rid) != fingerprint:
            await self.mgmt.apply(
                records.ROUTES,
                {
                    "apiVersion": records.API_VERSION,
                    "kind": "Route",
                    "metadata": {
                        "name": route.name,
                        "namespace": records.namespace_of(route.tenant),
                    },
                    "status": {**status, "observedGeneration": route.generation},
                },
                subresource="status",
                field_manager=STATUS_MANAGER,
            )
        tenant = self.tenants.get(route.tenant)
        if tenant is None:
            self._status_written[rid] = fingerprint
            return
        source = route.spec.get("source") or {}
        ns, name = source.get("namespace", ""), source.get("name", "")
        await tenant.set_ingress_address(ns, name, bool(served))
        if (lost or tls_problems) and self._status_written.get(rid) != fingerprint:
            obj = tenant.ingress(ns, name)
            if obj is not None and lost:
                log.warning("tenant %s: ingress %s/%s: %s", route.tenant, ns, name, conflict_msg)
                await tenant.event(obj, "Warning", "HostConflict", conflict_msg)
            for p in tls_problems:
                # Waiting for an issuer is progress, not a fault.
                progress = p.reason in PROGRESS_REASONS
                level = logging.INFO if progress else logging.WARNING
                log.log(level, "tenant %s: ingress %s/%s: %s", route.tenant, ns, name, p.message)
                if obj is not None:
                    kind = "Normal" if progress else "Warning"
                    await tenant.event(obj, kind, p.reason, p.message)
        self._status_written[rid] = fingerprint
