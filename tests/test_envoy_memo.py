"""What the renderer remembers of things that change with every route (a shard's hosts and
front host, a Gateway's listener, a cluster): the same object back while unchanged, so the
publisher keeps its bytes, and only the current version of each, not thousands of past
ones (`envoy.common.last_of_each`, `Renderer`)."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

from kubelbd.envoy.common import last_of_each
from kubelbd.envoy.http import front_table
from kubelbd.envoy.publisher import Encoder
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.settings import Settings
from kubelbd.ir.http import Model
from kubelbd.ir.l4 import L4Listener
from kubelbd.records.types import RouteRecord, TenantRecord

from . import records


class Made:
    def __init__(self, *args: Any) -> None:
        self.args = args


def test_equal_arguments_give_the_same_object_and_a_change_a_new_one() -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []

    @last_of_each(lambda shard, *_: shard)
    def host(shard: str, domains: tuple[str, ...]) -> Made:
        calls.append((shard, domains))
        return Made(shard, domains)

    a = host("shard.1", ("a.test",))
    assert host("shard.1", ("a.test",)) is a  # an equal tuple, not the same one
    b = host("shard.1", ("a.test", "b.test"))
    assert b is not a and b.args == ("shard.1", ("a.test", "b.test"))
    other = host("shard.2", ("c.test",))
    assert host("shard.1", ("a.test", "b.test")) is b  # each name its own
    assert host("shard.2", ("c.test",)) is other
    assert len(calls) == 3


def test_only_the_current_version_of_each_name_is_kept() -> None:
    @last_of_each(lambda shard, *_: shard)
    def host(shard: str, n: int) -> Made:
        return Made(shard, n)

    old = [weakref.ref(host("shard.1", n)) for n in range(100)]
    gc.collect()
    assert [r() is not None for r in old] == [False] * 99 + [True]


def test_at_most_maxsize_names_the_least_recently_changed_forgotten() -> None:
    @last_of_each(lambda name, *_: name, maxsize=2)
    def made(name: str, n: int) -> Made:
        return Made(name, n)

    a, b = made("a", 1), made("b", 1)
    c = made("c", 1)  # "a" forgotten
    assert made("b", 1) is b and made("c", 1) is c
    assert made("a", 1) is not a


def test_a_front_table_keeps_an_unchanged_shards_host_and_drops_a_changed_ones() -> None:
    """Each new host changes one shard's front host; the others are the same objects (the
    publisher keeps their bytes), and the changed shard's old host is not kept."""
    before = front_table("http", {"shard.1": ["a.test"], "shard.2": ["b.test"]}, True)
    old = {vh["name"]: vh for vh in before["virtual_hosts"]}
    changed = old.pop("shard.1")
    del before
    after = front_table("http", {"shard.1": ["a.test", "c.test"], "shard.2": ["b.test"]}, True)
    new = {vh["name"]: vh for vh in after["virtual_hosts"]}
    assert new["shard.2"] is old["shard.2"]
    assert new["shard.1"]["domains"] == ["a.test", "c.test"]
    del after, new
    gc.collect()
    assert sys.getrefcount(changed) == 2  # `changed` and the call's argument: nothing else


SETTINGS = Settings(config_dir="/config", shards=2)
TENANTS = [TenantRecord("alpha", ("10.0.0.1", "10.0.0.2"))]


def route(name: str, node_port: int) -> RouteRecord:
    return records.host_route("alpha", name, node_port)


def wild(name: str, node_port: int) -> RouteRecord:
    """A route of a wildcard host: a shard's table holds it (an exact host has a scope)."""
    return records.host_route("alpha", name, node_port, host=f"*.{name}.example.com")


def hosts_of(files: dict[str, list[Any]]) -> dict[str, Any]:
    """The virtual hosts of the shard tables and of the hosts' scopes in `files`."""
    return {
        vh["name"]: vh
        for path, resources in files.items()
        if path.startswith(("rds/shard.", "scopes/host/")) and resources
        for vh in resources[0].get("route_configuration", resources[0])["virtual_hosts"]
    }


def test_a_hosts_scope_is_kept_by_nothing_once_handed_over() -> None:
    """The renderer keeps what a scope was made of, not the scope: each is new when its host
    changes and goes to the publisher once (the encoder keeps none either, envoy/publisher.py),
    so holding them would keep every exact host's routes twice."""
    model, renderer = Model(), Renderer(SETTINGS)
    renderer.update(model.ir, model.apply([], (), TENANTS))
    files = renderer.update(model.ir, model.apply([route("h0", 30000)], ()))
    scope = files["scopes/host/h0.example.com"][0]
    Encoder().encode_scope("scopes/host/h0.example.com", [scope])
    del files
    gc.collect()
    assert sys.getrefcount(scope) == 2  # `scope` and the call's argument


def test_the_renderer_keeps_an_unchanged_hosts_rendering_and_no_past_ones() -> None:
    """A shard's host's rendering is the same object while it is unchanged (its bytes are kept
    by the publisher); once it changes or goes, its past renderings are not kept by anything:
    a route changed a thousand times holds one rendering, not a thousand."""
    model, renderer = Model(), Renderer(SETTINGS)
    renderer.update(model.ir, model.apply([], (), TENANTS))
    names = [f"h{i}" for i in range(40)]
    first = hosts_of(renderer.update(model.ir, model.apply([wild(n, 30000) for n in names], ())))
    steady = first["alpha/*.h0.example.com"]
    past = []
    for port in range(30001, 30021):  # h1's backend switched again and again
        files = renderer.update(model.ir, model.apply([wild("h1", port)], ()))
        now = hosts_of(files)
        past.append(now["alpha/*.h1.example.com"])
        if "alpha/*.h0.example.com" in now:  # h0's table rewritten: h0 itself the same object
            assert now["alpha/*.h0.example.com"] is steady
    current = past.pop()
    del files, now, first
    gc.collect()
    # each held by `past`, the loop variable and the call: nothing else
    assert [sys.getrefcount(vh) for vh in past] == [3] * len(past)
    assert sys.getrefcount(current) > 2  # the renderer's


def test_what_depends_on_the_settings_alone_is_the_same_object_in_every_file() -> None:
    """The shard clusters and the static listeners are rendered once: every cluster file
    (a new backend, a Layer 4 or Gateway change) and every listener file holds the same
    objects, so the publisher encodes them once. Rendered anew each time, the 17 shard
    clusters went through protobuf's JSON mapping on every cluster file (~4 ms)."""
    model, renderer = Model(), Renderer(SETTINGS)
    first = renderer.update(model.ir, model.apply([route("h0", 30000)], (), TENANTS))
    second = renderer.update(model.ir, model.apply([route("h1", 30001)], ()))
    static = [c for c in first["cds.pb"] if c["name"].startswith("shard.")]
    assert len(static) == SETTINGS.shards + 1  # and the default shard
    again = {c["name"]: c for c in second["cds.pb"]}
    assert len(again) == len(first["cds.pb"]) + 1  # the new backend's cluster
    assert all(again[c["name"]] is c for c in static)
    l4 = L4Listener("alpha/default/db", "127.0.200.1", 5432, "TCP", "alpha/db", False)
    after = renderer.update_l4([l4], [])["lds.pb"]  # a Layer 4 change: the listeners again
    assert len(after) == len(first["lds.pb"]) + 1
    assert all(any(new is old for new in after) for old in first["lds.pb"])


def test_hosts_that_match_everything_share_one_match() -> None:
    """The renderer keeps every host's rendering; the match of a rule for "/" is one object
    for all of them (as the retry policy is), and a wildcard host's, which adds its guard, is
    a copy: the shared one is never changed."""
    model, renderer = Model(), Renderer(SETTINGS)
    renderer.update(model.ir, model.apply([], (), TENANTS))
    wildcard = wild("w", 30002)
    files = renderer.update(model.ir, model.apply([route("h0", 30000), route("h1", 30001)], ()))
    files.update(renderer.update(model.ir, model.apply([wildcard], ())))
    hosts = hosts_of(files)
    h0, h1 = (hosts[f"alpha/{h}.example.com"]["routes"][0]["match"] for h in ("h0", "h1"))
    assert h0 is h1 and h0 == {"prefix": "/"}
    guarded = hosts["alpha/*.w.example.com"]["routes"][0]["match"]
    assert guarded["prefix"] == "/" and guarded["headers"] and h0 == {"prefix": "/"}
