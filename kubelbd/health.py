"""/healthz and /readyz for the kubelet: alive, and ready once Envoy has its first files and
until the replica starts to drain (SIGTERM): a load balancer in front stops sending it traffic
before Envoy's listeners close. /metrics for Prometheus (kubelbd.metrics, served by
prometheus_client's own handler); at `/` the operator's status page (kubelbd.status_page)
when one is given."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from .metrics import REGISTRY
from .status_page import Handler


async def serve_health(
    host: str,
    port: int,
    ready: anyio.Event,
    draining: anyio.Event | None = None,
    envoy_ready: Callable[[], Awaitable[bool]] | None = None,
    page: Handler | None = None,
    not_ready: Callable[[], str | None] | None = None,
) -> None:
    """`envoy_ready`: Envoy's own readiness (its admin's /ready, which fails once Envoy was
    told to drain): the kubelet cannot reach the loopback admin, so kubelbd answers for it.
    `not_ready`: while starting, why (an API permission missing, say), in the 503's body."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if draining is not None and draining.is_set():
            return web.Response(status=503, text="draining\n")
        if not ready.is_set():
            why = not_ready() if not_ready is not None else None
            return web.Response(status=503, text=f"starting: {why}\n" if why else "starting\n")
        if envoy_ready is not None and not await envoy_ready():
            return web.Response(status=503, text="envoy not ready\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
    if page is not None:
        app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
