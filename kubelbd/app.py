"""kubelbd's process: every component built once, wired in one direction, run in one task group.

    registry ─▶ tenant tasks ─(hub.RecordSink)─▶ data plane ─▶ Envoy files
        ▲                                            │
        └────────────(hub.StatusBoard)───────────────┘ status, after Envoy applied

Start-up order: CRDs, Envoy's bootstrap, the data plane (it waits for the tenants to settle
before its first publish), the registry, and Envoy as a child once it has files to load.

High availability: every replica runs the data plane and serves; the Lease (kube/lease.py)
says which one writes. The registry (tenant tasks: twins, records, tenant statuses) runs only
on the leader, a fresh one for each term; the data plane's own writes follow the same Lease.

Shutdown (SIGTERM): readiness fails at once; unless Envoy is to outlive kubelbd
(--keep-envoy), Envoy is drained for --drain-seconds, then everything stops and the Lease is
released for the next replica.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio

from . import collector
from .config import Config, split_host_port
from .dataplane.plane import DataPlane
from .envoy.admin import EnvoyAdmin
from .envoy.process import DRAIN_GRACE, EnvoyProcess, write_bootstrap
from .envoy.publisher import Publisher
from .envoy.settings import Settings
from .health import serve_health
from .hub import Settling, StatusBoard
from .kube import Kube, crds
from .kube.lease import Leadership, run_in_own_thread
from .status_page import status_page
from .tenant.registry import Registry
from .tenant.sync import TenantSettings

log = logging.getLogger("kubelbd")


def envoy_settings(cfg: Config) -> Settings:
    http_host, http_port = split_host_port(cfg.http_listen)
    https_host, https_port = split_host_port(cfg.https_listen) if cfg.https_listen else ("", 0)
    return Settings(
        config_dir=str(cfg.config_dir),
        http_address=http_host,
        http_port=http_port,
        https_address=https_host,
        https_port=https_port,
        https_redirect_port=cfg.https_redirect_port,
        shards=cfg.route_shards,
    )


def tenant_settings(cfg: Config) -> TenantSettings:
    return TenantSettings(
        cfg.node_address_type, cfg.policy, trust_kubeconfigs=cfg.trust_kubeconfigs
    )


async def run(cfg: Config) -> None:
    mgmt = await Kube.management(cfg.kubeconfig)
    admin = EnvoyAdmin(cfg.envoy_admin)
    try:
        if cfg.install_crds:
            await crds.install(mgmt, await anyio.to_thread.run_sync(crds.load))
        await anyio.to_thread.run_sync(
            lambda: (cfg.config_dir / "rds").mkdir(parents=True, exist_ok=True)
        )
        bootstrap = await anyio.to_thread.run_sync(
            write_bootstrap, cfg.config_dir, cfg.envoy_admin, socket.gethostname()
        )
        board, settling, leadership = StatusBoard(), Settling(), Leadership()
        dataplane = DataPlane(
            mgmt,
            envoy_settings(cfg),
            Publisher(cfg.config_dir),
            admin,
            board,
            settling,
            cfg.public_address,
            cfg.l4,
            cfg.acme,
            leadership,
            cfg.dns,
        )

        def registry() -> Registry:
            return Registry(
                mgmt, cfg.namespace, tenant_settings(cfg), dataplane.intake, board, settling
            )

        draining = anyio.Event()
        drain = None if cfg.keep_envoy or cfg.drain_seconds <= 0 else admin.drain
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope, draining, drain, cfg.drain_seconds)
            tg.start_soon(collector.settle, dataplane.first_publish)
            term = Term()
            tg.start_soon(
                run_in_own_thread, partial(Kube.management, cfg.kubeconfig), cfg.lease, leadership,
                term.ended,
            )  # fmt: skip
            tg.start_soon(dataplane.run)
            tg.start_soon(_while_leading, leadership, registry, term)
            if cfg.health_listen:
                host, port = split_host_port(cfg.health_listen)
                page = status_page(mgmt, admin)
                tg.start_soon(
                    partial(
                        serve_health,
                        host,
                        port,
                        dataplane.first_publish,
                        draining,
                        admin.ready,
                        page,
                        not_ready=dataplane.not_ready,
                    )
                )
            if cfg.run_envoy:
                # Envoy starts on our first publish: a previous run's files alone would give it
                # no cluster (they come over the stream, which answers nothing before it).
                await dataplane.first_publish.wait()
                envoy = EnvoyProcess(
                    bootstrap,
                    log_path=Path(cfg.envoy_log) if cfg.envoy_log else None,
                    hold_file=cfg.config_dir / "envoy.hold",
                    pid_file=cfg.config_dir / "envoy.pid",
                    keep_on_exit=cfg.keep_envoy,
                    drain=admin.drain,
                    drain_seconds=cfg.drain_seconds,
                )
                tg.start_soon(envoy.run)
    finally:
        with anyio.CancelScope(shield=True):
            await admin.aclose()
            await mgmt.aclose()


class Term:
    """Whether the tenant side of a leadership term still runs: it stops some time after the
    Lease is lost (its tasks' cancellation took 6.6 s once under overload), and only then is
    what it held released for collection."""

    def __init__(self) -> None:
        self.running = False
        self._stopped = anyio.Event()

    def begin(self) -> None:
        self.running = True
        self._stopped = anyio.Event()

    def end(self) -> None:
        self.running = False
        self._stopped.set()

    async def ended(self) -> None:
        """Until the last term's tenant side has stopped and what it held is collected: the
        Lease elector's `may_lead`, so that the collection's stall (seconds at 10,000
        routes) falls while this replica follows, not in its next term's renewals."""
        while self.running:
            await self._stopped.wait()
        await collector.collected()


async def _while_leading(
    leadership: Leadership, registry: Callable[[], Registry], term: Term
) -> None:
    """The tenant side, while this replica holds the Lease: a new registry each term (its
    tenant tasks resync from the tenants and the records), cancelled the moment it is lost."""
    while True:
        await leadership.until(True)
        term.begin()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(registry().run)
                await leadership.until(False)
                tg.cancel_scope.cancel()
            log.info("not the leader any more: tenant tasks stopped")
            collector.release_frozen("a leadership term ended")
        finally:
            term.end()


async def _stop_on_signal(
    scope: anyio.CancelScope,
    draining: anyio.Event,
    drain: Callable[[], Awaitable[bool]] | None,
    drain_seconds: float,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for sig in signals:
            log.info("received %s, shutting down", signal.Signals(sig).name)
            draining.set()  # readiness fails first: the load balancer in front stops sending
            if drain is not None:
                log.info("draining Envoy for %.0f s", drain_seconds)
                await drain()
                # Envoy's listeners close when its drain time ends; requests on connections
                # accepted just before still get their answers.
                with anyio.move_on_after(math.ceil(drain_seconds) + DRAIN_GRACE):
                    await signals.__anext__()  # a second signal cuts the drain short
            scope.cancel()
            return
