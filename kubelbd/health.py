"""/healthz and /readyz for the kubelet: alive, and ready once Envoy has its first files;
and at `/` the operator's status page (kubelbd.status_page) when one is given."""

from __future__ import annotations

import anyio
from aiohttp import web

from .status_page import Handler


async def serve_health(
    host: str, port: int, ready: anyio.Event, page: Handler | None = None
) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = ready.is_set()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "starting\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
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
