"""The status page of the fleet's kubelbd (KUBELBD_HEALTH_ADDR), in headless Chromium: an
Ingress created in alpha shows up with its host, served. With KUBELBD_SCREENSHOT=1 the page is
saved as docs/status-page.png (the screenshot the documentation shows)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from kubefleet.layout import ROOT

from kubelbd.objects import INGRESSES
from tests.browser import chromium

from .support import (
    FleetHandle,
    backend,
    deploy_app,
    eventually,
    fleet_env,
    ingress_obj,
    namespace_in,
    rule,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e

SCREENSHOT = ROOT / "docs" / "status-page.png"


@pytest.fixture
async def ns(fleet: FleetHandle) -> AsyncIterator[str]:
    async with namespace_in(fleet, "page", ["alpha"]) as name:
        yield name


async def test_page_shows_a_new_ingress_served(fleet: FleetHandle, ns: str) -> None:
    lay, alpha = fleet.layout, fleet.kube["alpha"]
    url = f"http://{fleet_env(lay)['KUBELBD_HEALTH_ADDR']}/"
    host = f"{unique('page')}.example.test"
    await deploy_app(alpha, ns, "web")
    await alpha.create(
        INGRESSES, ingress_obj("web", [rule(host, ("/", "Prefix", backend("web")))]), ns
    )
    await until_served(lay, host)

    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        row = page.locator(f'tr[data-route="alpha/{ns}.web"]')

        async def shown() -> bool:
            response = await page.goto(url)
            assert response is not None and response.status == 200
            assert await row.count() == 1, f"alpha/{ns}.web not on the page yet"
            text = await row.inner_text()
            assert host in text and "Serving" in text, text
            return True

        await eventually(shown, what=f"{host} served on the status page")
        assert "healthy" in await page.locator('tr[data-tenant="alpha"]').inner_text()
        assert await page.title() == "kubelbd status"
        if os.environ.get("KUBELBD_SCREENSHOT") == "1":
            await page.screenshot(path=str(SCREENSHOT), full_page=True)
