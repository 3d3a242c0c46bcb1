"""Headless Chromium for tests that must see a page as a browser renders it: Debian's
chromium (hack/install installs it), driven by Playwright, which never downloads a browser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from playwright.async_api import Browser, async_playwright

CHROMIUM = anyio.Path("/usr/bin/chromium")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert await CHROMIUM.exists(), f"{CHROMIUM} is missing: run hack/install (Debian's chromium)"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            await browser.close()
