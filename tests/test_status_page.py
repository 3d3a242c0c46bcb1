"""The status page at `/` of the health address, in a real headless Chromium: served by
kubelbd's own health server, from records read through the same path as in production
(kubelbd.snapshots listing an API server; here the in-memory one of tests/fakekube.py).

A hostile tenant's host and messages contain markup: they must show as text, and no script
may run (the title would change) or even be in the page."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import aiohttp
import anyio
from playwright.async_api import Page

from kubelbd.health import serve_health
from kubelbd.objects import NAMESPACES, SECRETS, Obj, Resource
from kubelbd.records.names import ROUTES, TENANTS
from kubelbd.status_page import status_page

from .browser import chromium
from .fakekube import FakeKube
from .fleet_records import HOSTILE, SHOP, fleet
from .live_envoy import free_port


async def store(mgmt: FakeKube, res: Resource, obj: Obj) -> None:
    """`obj` into the fake API server as kubelbd and its data plane would have written it."""
    ns = obj["metadata"]["namespace"]
    if await mgmt.get_or_none(NAMESPACES, ns) is None:
        await mgmt.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": ns}})  # fmt: skip
    created = await mgmt.create(res, obj, ns)
    if "status" in obj:
        await mgmt.replace(res, {**created, "status": obj["status"]}, "status")


async def until_up(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{url} did not come up in {timeout}s"
            await anyio.sleep(0.05)


@asynccontextmanager
async def fleet_page() -> AsyncIterator[str]:
    """The status page of a health server whose management cluster holds the small fleet (a
    context manager, not a fixture: its task group must end in the task it began in)."""
    mgmt, f = FakeKube("mgmt"), fleet()
    for res, objs in ((TENANTS, f.snapshot.tenants), (ROUTES, f.snapshot.routes),
                      (SECRETS, f.snapshot.certificates)):  # fmt: skip
        for obj in objs:
            await store(mgmt, res, obj)
    port = free_port()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            partial(serve_health, "127.0.0.1", port, anyio.Event(), page=status_page(mgmt, None))
        )
        await until_up(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}/"
        tg.cancel_scope.cancel()


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Page]:
    async with chromium() as browser:
        page = await browser.new_page()
        response = await page.goto(url)
        assert response is not None and response.status == 200
        yield page


async def test_page_shows_tenants_routes_and_refusals() -> None:
    async with fleet_page() as url, opened(url) as page:
        tenants = page.locator("tr.tenant")
        assert await tenants.count() == 2
        assert "healthy" in await page.locator('tr[data-tenant="alpha"]').inner_text()
        beta = await page.locator('tr[data-tenant="beta"]').inner_text()
        assert "unhealthy" in beta and "Unreachable connection refused" in beta
        shop = await page.locator('tr[data-route="alpha/shop.web"]').inner_text()
        assert SHOP in shop and "Serving" in shop
        assert "alpha/shop.web-tls" in shop and "(29 days)" in shop  # valid for 30 from now
        refusals = page.locator("tr.refusal")
        assert await refusals.count() == 6
        assert "HostConflict" in await refusals.nth(3).inner_text()  # newest first
        assert "Unreachable" in await refusals.nth(0).inner_text()


async def test_hostile_text_is_shown_as_text_and_nothing_runs() -> None:
    async with fleet_page() as url, opened(url) as page:
        assert await page.title() == "kubelbd status"  # the hostile script did not run
        assert await page.locator("script").count() == 0
        assert await page.locator("b").count() == 0  # "<b>nothing</b>" stayed text too
        evil = await page.locator('tr[data-route="beta/x.evil"]').inner_text()
        assert HOSTILE in evil
        assert "<b>nothing</b> served" in await page.locator("#refusals ~ table").inner_text()


async def test_page_forbids_scripts_and_says_when_records_cannot_be_read() -> None:
    mgmt = FakeKube("mgmt")
    mgmt.fail("list", status=503)
    port = free_port()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            partial(serve_health, "127.0.0.1", port, anyio.Event(), page=status_page(mgmt, None))
        )
        await until_up(f"http://127.0.0.1:{port}/healthz")
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 503 and "cannot read the records" in await r.text()
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        tg.cancel_scope.cancel()
