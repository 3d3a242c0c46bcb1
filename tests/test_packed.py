"""kubelbd.kube.packed.PackedCache: objects kept as bytes, read back whole and new each time,
in a fraction of the memory their dicts take; and the tenant side keeps its route kinds so."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from kubelbd.kube.packed import PackedCache
from kubelbd.objects import INGRESSES, SERVICES, Obj
from kubelbd.records.policy import Policy
from kubelbd.sources import SOURCES
from kubelbd.sources.gatewayapi import HTTPROUTES
from kubelbd.tenant.caches import TenantCaches

from .fakekube import FakeKube
from .orchestration import ingress


def listed_ingress(i: int) -> Obj:
    """An Ingress as a tenant's API server lists it (managedFields already dropped)."""
    obj = ingress(f"shop-{i}", f"shop-{i}.example.com", f"web-{i % 20}")
    obj["metadata"].update(
        namespace="default", uid=f"6f1c1f8e-0000-4000-8000-{i:012d}",
        resourceVersion=str(100000 + i), generation=1,
        creationTimestamp="2026-11-30T09:00:00Z",
    )  # fmt: skip
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}
    return obj


def test_objects_read_back_whole_and_new_each_time() -> None:
    cache = PackedCache({"default/a": listed_ingress(1)})
    cache["default/b"] = listed_ingress(2)
    assert cache["default/a"] == listed_ingress(1)
    assert cache.get("default/b") == listed_ingress(2) and cache.get("default/c") is None
    assert sorted(cache) == ["default/a", "default/b"] and len(cache) == 2
    read = cache["default/a"]
    read["spec"]["rules"] = []  # a reader changing what it got changes nothing cached
    assert cache["default/a"] is not read and cache["default/a"] == listed_ingress(1)
    del cache["default/a"]
    assert "default/a" not in cache and dict(cache.items()) == {"default/b": listed_ingress(2)}


def test_membership_does_not_read_objects_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """`in` (a tenant's limits ask it of every waiting object on every pass) looks at names."""
    cache = PackedCache({"default/a": listed_ingress(1)})

    def refuse(_: bytes) -> Any:
        raise AssertionError("read back")

    monkeypatch.setattr(orjson, "loads", refuse)
    assert "default/a" in cache and "default/b" not in cache


def test_an_object_deeper_than_orjson_writes_is_kept_as_it_is() -> None:
    deep: Any = "leaf"
    for _ in range(300):
        deep = {"x": deep}
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(deep)
    obj = {"metadata": {"name": "deep"}, "spec": deep}
    cache = PackedCache({"deep": obj})
    assert cache["deep"] is obj


def held(objects: MutableMapping[str, Obj], count: int) -> int:
    """Bytes of memory `objects` holds once filled with `count` Ingresses."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            objects[f"default/shop-{i}"] = orjson.loads(orjson.dumps(listed_ingress(i)))
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_packed_objects_take_a_fraction_of_their_dicts_memory() -> None:
    """The point of it: an Ingress is about 3 KiB as dicts, a sixth of that packed."""
    as_dicts, as_bytes = held({}, 2000), held(PackedCache(), 2000)
    assert as_dicts / 2000 > 2500
    assert as_bytes * 4 < as_dicts, (as_bytes, as_dicts)


def test_the_tenant_side_keeps_its_route_kinds_packed_and_the_others_whole() -> None:
    caches = TenantCaches(
        FakeKube("a"), SOURCES, lambda r: lambda kind, obj: None,
        lambda plural: lambda error: None, Policy(),
    )  # fmt: skip
    assert isinstance(caches.cache(INGRESSES), PackedCache)
    assert isinstance(caches.cache(HTTPROUTES), PackedCache)
    assert isinstance(caches.cache(SERVICES), dict)
