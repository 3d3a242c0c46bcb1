"""The status page at `/` of the health address: the overview (kubelbd.overview) of what is
stored now, rendered as plain HTML. Read-only: it lists, never writes.

Built and rendered on a worker thread: at fleet scale that is thousands of records and
certificates, and the event loop it would otherwise hold up is the data plane's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web

from .envoy.admin import EnvoyAdmin
from .kube import ApiError, Kube
from .overview.build import overview
from .overview.page import render_page
from .overview.snapshot import Snapshot
from .snapshots import load_snapshot

Handler = Callable[[web.Request], Awaitable[web.Response]]

#: No script, frame or remote resource on this page, ever: should a tenant's text get past
#: the escaping, the browser still runs nothing.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def page_html(snap: Snapshot) -> str:
    return render_page(overview(snap, dt.datetime.now(dt.UTC)))


def status_page(mgmt: Kube, admin: EnvoyAdmin | None) -> Handler:
    async def page(_: web.Request) -> web.Response:
        try:
            snap = await load_snapshot(mgmt, admin)
        except (ApiError, ConnectionError) as e:
            return web.Response(status=503, text=f"cannot read the records: {e}\n", headers=HEADERS)
        html = await anyio.to_thread.run_sync(page_html, snap)
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=HEADERS)

    return page
