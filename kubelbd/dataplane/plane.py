"""The data plane loop: records → IR → Envoy files, then status once Envoy applied them.

    intake (records) ─▶ ir.http.Model ─▶ envoy.Renderer ─▶ envoy.Publisher ─▶ files, stream
                          │  tls (certificates, issuers) and l4 (allocations) on the side
                          └────────────▶ status: ir.status reports, after Envoy applied

Every render costs what changed: the model reports a Delta, the renderer rewrites only the
files it touches, the publisher hands over only files, clusters and scopes that changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import ChainMap
from pathlib import Path

import anyio
import anyio.abc

from .. import metrics
from ..certs.acme import ACMESettings
from ..certs.dns01 import DNS01
from ..dns.desired import Key, lb_key, route_key
from ..envoy.admin import EnvoyAdmin, all_applied
from ..envoy.ads import DiscoveryServer
from ..envoy.publisher import CLUSTERS, Publisher
from ..envoy.renderer import Files, Renderer
from ..envoy.scopes import is_scope
from ..envoy.settings import ADS_SOCKET, Settings
from ..hub import Service, Settling, StatusBoard
from ..ir import gateway_model, gateway_status
from ..ir.gateway import GatewayIR
from ..ir.http import IR, Model
from ..ir.status import Report, route_report
from ..kube import ApiError, Kube
from ..kube.informer import Informer, identity_only
from ..kube.lease import Leadership
from ..objects import CONFIGMAPS, MANAGED_BY, MANAGER, SECRETS
from ..records.conditions import Transitions
from ..records.names import LOADBALANCER, ROUTE, ROUTES, TENANTS, TLS_LABEL, RecordKind
from ..records.status import withdrawn
from ..records.types import LBRecord, RouteRecord
from ..retry import Backoff
from . import probe
from .dns import DNSSettings
from .gauges import StateGauges
from .holds import Holds
from .intake import Intake
from .l4 import L4Settings, LoadBalancers
from .names import Names, Served, Targets
from .rejections import copy_rejections
from .reporter import StatusReporter
from .strays import Strays
from .tls import CHALLENGES, TLSState

log = logging.getLogger(__name__)

#: at most this long a render waits for Envoy to apply the previous publish
CATCH_UP = 0.5


def dialled(clusters: list[str]) -> dict[str, set[Service]]:
    """The Services of each tenant these clusters dial, by their names
    (`<tenant>/<namespace>/<service>/...`, a Gateway's Layer 4 ones under `gw/`)."""
    out: dict[str, set[Service]] = {}
    for name in clusters:
        parts = name.removeprefix("gw/").split("/")
        if len(parts) >= 3:
            out.setdefault(parts[0], set()).add((parts[1], parts[2]))
    return out


#: how long the first publish after a start waits for the tenants to resync
SETTLE_TIMEOUT = 10.0
L4_RETRY = 1.0


class DataPlane:
    def __init__(
        self,
        mgmt: Kube,
        settings: Settings,
        publisher: Publisher,
        admin: EnvoyAdmin,
        board: StatusBoard,
        settling: Settling,
        public_address: str = "",
        l4: L4Settings | None = None,
        acme: ACMESettings | None = None,
        leadership: Leadership | None = None,
        dns: DNSSettings | None = None,
        ads: DiscoveryServer | None = None,
    ) -> None:
        self.mgmt = mgmt
        if leadership is None:  # a lone data plane (tests): it is the leader
            leadership = Leadership()
            leadership.set(True)
        self.leadership = leadership
        self.settings = settings
        self.publisher = publisher
        self.admin = admin
        self.board = board
        self.settling = settling
        self.public_address = public_address
        self.model = Model()
        self.renderer = Renderer(settings)
        self.l4 = LoadBalancers(mgmt, l4 or L4Settings(), self._wake_up)
        self.l4.writes = leadership.leading
        self.holds = Holds(probe.answers, self._envoy_has, self._wake_up)
        self.intake = Intake(
            self._wake_up, self._current, self.l4, self._confirmed, self._written_conditions
        )
        #: certificates, clusters and the HTTP listener's host scopes, over ADS
        self.ads = ads or DiscoveryServer(Path(settings.config_dir) / ADS_SOCKET)
        publisher.stream = self.ads
        self.names = Names(mgmt, dns, public_address, self._dns_changed, self._record_uid)
        #: moves whenever the model may have changed (a render, a confirmation): the names
        #: are worked out again only then, not on every status report (O(routes) each)
        self._generation = 0
        #: publishes that wrote files, and the latest of them Envoy is known to have applied;
        #: the files found on the volume at the start count as the first, which Envoy must
        #: report applied too (a status is never written before Envoy has what it says)
        self._publish_seq = 1
        self._applied_seq = 0
        self.gateways = GatewayIR()  # the Gateways' listeners, as last rendered
        self._gateway_routes: set[str] = set()  # routes with parents (Gateway API)
        self._gateway_certificates = -1  # the TLS state's version the Gateways saw
        self._gateway_models: dict[str, gateway_model.GatewayModel] = {}  # one per tenant, kept
        # ACME DNS-01 answers go through the server, zone and key the names are published with
        # (RFC 2136 only: through external-dns, kubelbd has no server to write answers to).
        names = self.names.publisher
        client = names.client if names is not None else None
        self.tls = TLSState(
            mgmt, acme or ACMESettings(), self._wake_up, self.file_applied, self.ads,
            DNS01(client) if client is not None else None,
        )  # fmt: skip
        self.status = self._reporter()
        self.gauges = StateGauges(
            self.model, self.l4, self.tls, (self.intake.refused, self.l4.refused)
        )
        self.first_publish = anyio.Event()
        self._wake = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._informers: list[Informer] = []
        self._next_render = math.inf  # when a timer wakes the render loop (_render_at)

    def _reporter(self) -> StatusReporter:
        return StatusReporter(
            self.mgmt,
            self.board,
            self.wait_applied,
            self._reports,
            self._observed_conditions,
            self._carried_status,
        )

    def _written_conditions(self, rid: str) -> Transitions | None:
        return self.status.written(ROUTE, rid)

    def _record_uid(self, key: Key) -> str | None:
        """The stored record's uid (None for a route served before it is written)."""
        kind, rid = key
        return self.intake.uid(rid) if kind == ROUTE.kind else self.l4.uid(rid)

    def _dns_changed(self, keys: set[Key]) -> None:
        if self.leadership.leading:
            self.status.due(
                routes={rid for kind, rid in keys if kind == ROUTE.kind},
                lbs={rid for kind, rid in keys if kind == LOADBALANCER.kind},
            )

    def _names_inputs(self) -> tuple[int, Targets]:
        """What the names depend on beyond the model: its generation, and where Envoy serves
        each LoadBalancer."""
        return self._generation, {
            rid: [i.get("ip") or i.get("hostname", "") for i in self.l4.ingress_of(rid)]
            for rid in self.l4.records
        }

    def _served(self, targets: Targets) -> Served:
        """What Envoy serves now, for the names (names.Served: a snapshot)."""
        ir = self.model.ir
        return Served(
            dict(self.model.routes),
            IR(served=dict(ir.served), conflicts=dict(ir.conflicts)),
            dict(self.l4.records),
            targets,
            dict(self.gateways.hosts),
        )

    def _wake_up(self) -> None:
        self._wake.set()

    def _current(self, rid: str) -> RouteRecord | None:
        """A route's newest version here: held (dataplane.holds), else the model's."""
        return self.holds.record(rid) or self.model.routes.get(rid)

    async def _envoy_has(self, seq: int, clusters: set[str]) -> None:
        """Until Envoy has applied publish number `seq` (or a later one) and warmed these
        clusters (their first health checks done)."""
        await self._until_applied(seq, None)
        # A held change waits for this: polled at most every 20 ms (the dump of the warming
        # clusters is cheap), where 100 ms added up to 100 ms to every switch of a backend.
        backoff = Backoff(initial=0.002, maximum=0.02)
        while True:
            warming = await self.admin.warming()  # polled: Envoy tells no one when it is done
            if warming is not None and not warming & clusters:
                return
            await anyio.sleep(backoff.next())

    def _confirmed(self) -> None:
        """Provisional records came back written: the model takes them, their status is due."""
        confirmed, self.intake.confirmed = self.intake.confirmed, {}
        self._generation += 1
        for rec in confirmed.values():
            if not self.holds.confirm(rec):
                self.model.confirm(rec)
        if self.leadership.leading:
            self.status.due(routes=confirmed)

    async def wait_applied(self, timeout: float | None = None) -> bool:
        """True once Envoy has applied every file as kubelbd had published them when asked
        (or a later publish, in full), then holds every certificate served."""
        deadline = None if timeout is None else anyio.current_time() + timeout
        if not await self._until_applied(self._publish_seq, timeout):
            return False
        left = None if deadline is None else max(0.0, deadline - anyio.current_time())
        return await self.ads.wait_settled(left)

    async def _until_applied(self, seq: int, timeout: float | None) -> bool:
        """Until Envoy has applied every file as publish number `seq` left them, or as a later
        one did: not the files as they are now (under a stream of changes, Envoy would never
        catch up with those, and no status would be written until the stream ends). Whoever
        asks first finds out for every waiter."""
        backoff = Backoff(initial=0.002, maximum=0.05)
        with anyio.move_on_after(timeout):
            while self._applied_seq < seq:
                at, published = self._publish_seq, dict(self.publisher.published)
                streamed = self.ads.generation
                reported = await self.admin.versions()
                if all_applied(published, reported) and self.ads.applied(streamed):
                    self._applied_seq = max(self._applied_seq, at)
                    continue
                await anyio.sleep(backoff.next())
            return True
        return False

    async def file_applied(self, name: str, timeout: float) -> bool:
        """True once Envoy reports the published version of this one file applied: what the
        ACME answers wait for, so that a file Envoy rejected elsewhere (which it never should
        be handed) holds up no tenant's certificates."""
        if is_scope(name):
            if name not in self.publisher.scopes_published:
                return False
            return await self.ads.wait_applied(self.ads.generation, timeout)
        version = self.publisher.published.get(name)
        if version is None:
            return False
        return await self.admin.wait_applied({name: version}, timeout, required=(name,))

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.publisher.load_async()
        await self.ads.start()
        try:
            with metrics.observe_state(self.gauges.snapshot):
                await self._run()
        finally:
            with anyio.CancelScope(shield=True):
                await self.ads.stop()

    async def _run(self) -> None:
        selector = f"{MANAGED_BY}={MANAGER}"
        # Selected by label, anywhere: only what is in its tenant's namespace counts (strays).
        guard = Strays().guard
        # The intake keeps each record parsed: the cache needs only what a relist compares.
        routes = Informer(
            self.mgmt,
            ROUTES,
            guard("Route", self.intake.on_route),
            label_selector=selector,
            stored=identity_only,
            packed=True,  # an identity is 950 bytes as dicts, 300 as bytes (10,000 of them)
        )
        tenants = Informer(
            self.mgmt, TENANTS, guard("Tenant", self.intake.on_tenant), label_selector=selector
        )
        secrets = Informer(
            self.mgmt,
            SECRETS,
            guard("Secret", self.tls.on_secret),
            label_selector=f"{TLS_LABEL}=true",
        )
        challenges = Informer(
            self.mgmt,
            CONFIGMAPS,
            self.tls.on_challenges,
            namespace=self.tls.namespace,
            field_selector=f"metadata.name={CHALLENGES}",
        )
        l4 = self.l4.informers(self.intake.on_loadbalancer, guard)
        informers = [routes, tenants, secrets, challenges, *l4]
        self._informers = informers
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            self.holds.start(tg)
            tg.start_soon(self.tls.recheck)
            tg.start_soon(self._lead_while_leader)
            # Files, scopes and clusters: a rejection on the stream is read after a change
            # that wrote no file.
            pub = self.publisher
            published = ChainMap(pub.published, pub.scopes_published, pub.clusters)
            tg.start_soon(copy_rejections, self.admin, published)
            for inf in informers:
                tg.start_soon(inf.run)
            for inf in informers:
                await inf.synced.wait()
            self.intake.all_listed.set()
            # After a restart, let every reachable tenant resync before the first publish:
            # Envoy keeps serving the previous files meanwhile, then gets the full picture.
            # A follower has no tenant tasks: the records are all it will get.
            await self.leadership.decided.wait()
            if self.leadership.leading:
                await self.settling.wait(SETTLE_TIMEOUT)
            log.info(
                "data plane: %d routes, %d tenants in the records",
                len(routes.cache),
                len(tenants.cache),
            )
            while True:
                # Envoy applies what it was handed before it is handed more: changes that come
                # meanwhile go out together, and statuses follow each publish (bounded: an
                # Envoy that does not answer holds nothing up for longer than CATCH_UP).
                await self._until_applied(self._publish_seq, CATCH_UP)
                await self._render_once()
                self.first_publish.set()
                await self._wake.wait()
                self._wake = anyio.Event()

    def not_ready(self) -> str | None:
        """Why Envoy has no configuration from this replica yet, for /readyz: above all an
        informer the API refuses (a permission kubelbd lacks is named, never a silent wait)."""
        if self.first_publish.is_set():
            return None
        failing = [
            f"{inf!r}: {inf.last_error}"
            for inf in self._informers
            if not inf.synced.is_set() and inf.last_error is not None
        ]
        if failing:
            return "cannot read the records: " + "; ".join(failing)
        return "waiting for the records and the tenants to settle"

    async def _lead_while_leader(self) -> None:
        """What only the leader does: write statuses and allocations, issue certificates.
        Every replica renders; these start when this one takes the Lease and stop when it
        loses it. A new term starts from the records: every status is due again (written once
        more: an unchanged status applied again changes nothing), every allocation checked."""
        while True:
            await self.leadership.until(True)
            self.status = self._reporter()
            self.status.due(routes=self.model.routes, lbs=self.l4.records)
            self.tls.new_term()
            if self.names.publisher is not None:
                self.names.publisher.new_term()
            self.l4.writes = True
            self.l4.dirty = True
            self._wake_up()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._issue)
                    if self.names.publisher is not None:
                        tg.start_soon(self.names.publisher.run)
                        tg.start_soon(self.names.run, self._names_inputs, self._served)
                    tg.start_soon(self.status.run)
                    tg.start_soon(self.status.writer.run)
                    await self.leadership.until(False)
                    tg.cancel_scope.cancel()
            finally:
                self.l4.writes = False
                # What this term wanted on tenant objects is the next term's to decide again
                # (a stale address must not be replayed); taking back an address is kept.
                self.board.keep_final_only()

    async def _issue(self) -> None:
        """The issuers, once a render has told them what the routes want: before it they
        would take every issued certificate for unwanted and delete it."""
        await self.first_publish.wait()
        await self.tls.issuers.run()

    async def _render_once(self) -> None:
        batch = self.intake.take()
        self._generation += 1
        if batch.tenants is not None:
            self.l4.dirty = True  # node addresses are in every L4 cluster too
        for rid in batch.deletes:
            self._withdraw(ROUTE, self.model.routes.get(rid))
        start = time.perf_counter()
        upserts, prepared = self.holds.take(self.model, batch.upserts, batch.deletes)
        delta = self.model.apply(upserts.values(), batch.deletes, batch.tenants)
        delta.clusters |= prepared.clusters | self.holds.applied(self.model).clusters
        files = self.renderer.update(self.model.ir, delta, anyio.current_time())
        removal = self.renderer.next_removal()
        if removal is not None:
            self._render_at(removal)  # an unused cluster's grace period ends
        changed = set(upserts) | batch.deletes
        tls_moved = self.tls.render(self.model, changed, delta, self.renderer, files)
        l4_rendered = self.l4.dirty
        if self.l4.dirty:
            await self._render_l4(files)
        gw_routes, gw_lbs = self._render_gateways(changed, l4_rendered, files)
        # Again once the Gateways are built: a report made while this render awaited the
        # load balancers' writes saw the Gateways' hosts as they were before.
        self._generation += 1
        rendered = time.perf_counter()
        written = await self.publisher.publish(files)
        if written:
            self._publish_seq += 1
        self.holds.published(self._publish_seq)
        if CLUSTERS in files:
            self.intake.dialled.set(dialled(self.renderer.cluster_names()))
        self.tls.published()
        if written:
            log.debug(
                "rendered %d changes in %.1f ms, published %s in %.1f ms",
                len(upserts) + len(batch.deletes),
                (rendered - start) * 1000,
                ", ".join(sorted(written)),
                (time.perf_counter() - rendered) * 1000,
            )
        tls_upserts = self.tls.routes & set(upserts)
        lbs, self.l4.pending_status = self.l4.pending_status, set()
        for rec in self.l4.take_deleted():
            self._withdraw(LOADBALANCER, rec)
        if self.leadership.leading:  # a follower writes no status: it keeps no backlog
            self.status.due(
                routes=delta.routes | set(upserts) | tls_moved | tls_upserts | gw_routes,
                lbs=lbs | gw_lbs,
                arrivals=batch.arrivals,
            )

    def _render_gateways(
        self, changed: set[str], l4_rendered: bool, files: Files
    ) -> tuple[set[str], set[str]]:
        """The Gateways' listeners, when a route attached to one or a Gateway changed; the
        routes and Gateways whose status that changed."""
        attached = {
            rid for rid in changed
            if (r := self.model.routes.get(rid)) is not None and "parents" in r.spec
        }  # fmt: skip
        touched = changed & (self._gateway_routes | attached)
        self._gateway_routes = (self._gateway_routes - changed) | attached
        certificates = self.tls.version != self._gateway_certificates
        if not touched and not l4_rendered and not certificates:
            return set(), set()
        self._gateway_certificates = self.tls.version
        gateways = {rid: r for rid, r in self.l4.records.items() if "listeners" in r.spec}
        routes = [self.model.routes[rid] for rid in sorted(self._gateway_routes)]
        before, self.gateways = (
            self.gateways,
            gateway_model.build_by_tenant(
                gateways,
                self.l4.placements,
                routes,
                self.tls.certificates,
                self.tls.version,
                dt.datetime.now(dt.UTC),
                self.model.tenants,
                self._gateway_models,
            ),
        )
        # Certificates first: to the secret server, before the listener that names them.
        self.tls.serve_gateways(self.gateways.secrets, bool(self.gateways.unserved))
        files.update(self.renderer.update_gateways(self.gateways))
        moved = {
            rid for rid in set(before.served) | set(self.gateways.served)
            if before.served.get(rid) != self.gateways.served.get(rid)
        }  # fmt: skip
        counted = {
            gid for gid in set(before.attached) | set(self.gateways.attached)
            if before.attached.get(gid) != self.gateways.attached.get(gid)
            or before.unserved.get(gid) != self.gateways.unserved.get(gid)
        }  # fmt: skip
        return moved | touched, counted

    async def _render_l4(self, files: Files) -> None:
        try:
            listeners, clusters = await self.l4.reconcile(self.model.tenants)
            files.update(self.renderer.update_l4(listeners, clusters))
            if self.l4.dirty:
                self._retry_l4()  # some allocation could not be recorded
        except (ApiError, ConnectionError) as e:
            log.warning("load balancers: %s; retrying", e)
            self.l4.dirty = True
            self._retry_l4()

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

    def _retry_l4(self) -> None:
        self._render_at(anyio.current_time() + L4_RETRY)

    # ---- status ------------------------------------------------------------------------------

    def _carried_status(self, kind: RecordKind, record_id: str) -> bytes | None:
        """The status a record carried when last seen, as its `carried_fingerprint`."""
        seen = self.intake.statuses if kind == ROUTE else self.l4.carried
        return seen.get(record_id)

    def _observed_conditions(self, kind: RecordKind, record_id: str) -> Transitions | None:
        """The conditions a record carried when last seen: a restart keeps their times."""
        seen = self.intake.conditions if kind == ROUTE else self.l4.conditions
        return seen.get(record_id)

    def _withdraw(self, kind: RecordKind, record: RouteRecord | LBRecord | None) -> None:
        """A record is gone: its status is nobody's business, and its tenant object keeps no
        address of ours (it may stay, no longer ours). Decided here, in the same order as
        every other status, so an earlier report can never put the address back."""
        if record is None:
            return
        self.status.forget(kind, record.id)
        source = record.spec["source"]
        self.board.want(
            record.tenant,
            withdrawn(source["kind"], source["namespace"], source["name"], source["uid"]),
        )

    def _reports(self, routes: set[str], lbs: set[str], applied: bool) -> list[Report]:
        """The status of these records, from the model as it is now (see ir.status)."""
        if applied:
            self.names.due()
        out = []
        for rid in sorted(routes):
            route = self.model.routes.get(rid)
            if route is not None and "parents" in route.spec:
                dns = self.names.state(route_key(rid)) if rid in self.gateways.hosts else None
                out.append(gateway_status.route_report(route, self.gateways, applied, dns))
            elif route is not None:
                problems = self.tls.plan.problems.get(rid, [])
                dns = self.names.state(route_key(rid))
                out.append(
                    route_report(route, self.model.ir, problems, self.public_address, applied, dns)
                )
        for rid in sorted(lbs):
            rec = self.l4.records.get(rid)
            if rec is not None and "listeners" in rec.spec:
                placement = self.l4.placements.get(rid)
                address = placement.address if placement is not None else None
                failure = self.l4.failures.get(rid)
                out.append(
                    gateway_status.gateway_report(rec, address, self.gateways, failure, applied)
                )
                continue
            # A Service that asks for no name has no DNSPublished condition.
            named = rec is not None and (
                bool(rec.spec.get("dns", {}).get("hostnames")) or self.names.refused(lb_key(rid))
            )
            report = self.l4.report(rid, applied, self.names.state(lb_key(rid)) if named else None)
            if report is not None:
                out.append(report)
        return out
