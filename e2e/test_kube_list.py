"""kubelbd's client lists page by page, and what a caller does not keep of a page is dropped
before the next page is read: at start-up kubelbd lists every record and tenant object, and
holding all of them whole (managedFields and all) before slimming them cost it 100 MiB of
RSS at 10,000 routes, which pymalloc never gave back."""

from __future__ import annotations

from typing import Any

import pytest

from kubelbd.kube import Kube
from kubelbd.objects import CONFIGMAPS, Obj

from .support import FleetHandle, namespace_in

pytestmark = pytest.mark.e2e


class Counting(Kube):
    """kubelbd's client, counting its requests."""

    requests = 0

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return await super().request(*args, **kwargs)


async def test_keep_is_applied_to_each_page_before_the_next_is_read(fleet: FleetHandle) -> None:
    alpha = fleet.kube["alpha"]
    async with namespace_in(fleet, "pages", ["alpha"]) as ns:
        for i in range(5):
            cm = {"metadata": {"name": f"cm{i}"}, "data": {"big": "x" * 1000}}
            await alpha.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", **cm}, ns)
        kube = await Counting.from_file(fleet.layout.kubeconfig("alpha"), "alpha")
        try:
            kept_at: list[tuple[str, int]] = []  # (name, requests made when it was kept)

            def keep(obj: Obj) -> Obj:
                kept_at.append((obj["metadata"]["name"], kube.requests))
                return {"metadata": {"name": obj["metadata"]["name"]}}

            items, rv = await kube.list(CONFIGMAPS, ns, keep=keep, page=2)
        finally:
            await kube.aclose()
    names = [f"cm{i}" for i in range(5)]
    assert [o["metadata"]["name"] for o in items if o["metadata"]["name"] in names] == names
    assert all("data" not in o for o in items)
    assert rv
    pages = {name: made for name, made in kept_at if name in names}
    # Two to a page, each page kept as it came (the namespace's own root CA ConfigMap may
    # take a place on a page: so the pages are counted, not named).
    assert sorted(set(pages.values())) == list(range(1, kube.requests + 1))
    assert kube.requests >= 3
