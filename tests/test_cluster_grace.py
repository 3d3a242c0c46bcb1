"""Unused clusters leave Envoy after a grace period, not in the write that stopped using them.

Envoy reads the cluster file before the route tables: removing a cluster in the same write as
the route that stopped using it would leave Envoy, for a moment, with a route naming a cluster
it no longer has. And every cluster file costs Envoy a re-read of all clusters, so removals
ride along with the next addition, or wait: one removal-only write per grace period at most.
"""

from __future__ import annotations

from typing import Any

from kubelbd.envoy import protos, publisher
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.settings import Settings
from kubelbd.ir.http import Delta, Model
from kubelbd.records.types import RouteRecord, TenantRecord

from . import records

SETTINGS = Settings(config_dir="/config", shards=2, cluster_grace=1.0)
TENANTS = [TenantRecord("alpha", ("10.0.0.1", "10.0.0.2"))]


def route(name: str, node_port: int) -> RouteRecord:
    return records.host_route("alpha", name, node_port)


def clusters(files: dict[str, Any]) -> set[str] | None:
    """Backend cluster names in the cluster file, or None when it was not rewritten."""
    if "cds.pb" not in files:
        return None
    body = protos.read_file(publisher.Encoder().encode("cds.pb", files["cds.pb"])[1])
    return {c["name"] for c in body["resources"] if c["name"].startswith("alpha")}


class Pipeline:
    def __init__(self) -> None:
        self.model, self.renderer = Model(), Renderer(SETTINGS)
        self.renderer.update(self.model.ir, self.model.apply([], (), TENANTS), 0.0)

    def apply(self, now: float, *upserts: RouteRecord, deletes: tuple[str, ...] = ()) -> Any:
        delta = self.model.apply(upserts, deletes) if upserts or deletes else Delta()
        return self.renderer.update(self.model.ir, delta, now)

    def names(self) -> set[str]:
        return set(self.model.ir.clusters)


def test_a_switched_backend_keeps_its_old_cluster_for_the_grace_period() -> None:
    p = Pipeline()
    first = clusters(p.apply(1.0, route("web", 30001)))
    assert first is not None and len(first) == 1
    switched = p.apply(10.0, route("web", 30002))
    assert any(path.startswith("scopes/") for path in switched)  # the route moves at once
    both = clusters(switched)
    assert both is not None and both > first and len(both) == 2  # the old cluster stays
    assert clusters(p.apply(10.5)) is None
    assert p.renderer.next_removal() == 11.0
    assert clusters(p.apply(11.0)) == p.names() == both - first
    assert p.renderer.next_removal() is None


def test_a_removal_rides_along_with_the_next_addition_once_due() -> None:
    p = Pipeline()
    p.apply(1.0, route("a", 30001))
    p.apply(2.0, deletes=("alpha/default.a",))
    early = clusters(p.apply(2.5, route("b", 30002)))
    assert early is not None and len(early) == 2  # not due yet: still there
    late = clusters(p.apply(3.2, route("c", 30003)))
    assert late == p.names() and len(late) == 2  # due since 3.0: gone with the addition


def test_removal_only_writes_come_at_most_once_per_grace_period() -> None:
    p = Pipeline()
    for i, port in enumerate((30001, 30002, 30003)):
        p.apply(1.0, route(f"r{i}", port))
    p.apply(2.0, deletes=("alpha/default.r0",))
    p.apply(2.2, deletes=("alpha/default.r1",))
    p.apply(2.4, deletes=("alpha/default.r2",))
    assert clusters(p.apply(2.9)) is None
    after_first = clusters(p.apply(3.0))
    assert after_first is not None and len(after_first) == 2  # r1's and r2's wait
    assert p.renderer.next_removal() == 4.0  # not 3.2: one removal-only write per second
    assert clusters(p.apply(3.5)) is None
    assert clusters(p.apply(4.0)) == set()


def test_a_cluster_used_again_within_the_grace_period_is_not_rewritten() -> None:
    p = Pipeline()
    p.apply(1.0, route("a", 30001))
    p.apply(2.0, deletes=("alpha/default.a",))
    assert clusters(p.apply(2.5, route("b", 30001))) is None  # the same cluster, unchanged
    assert p.renderer.next_removal() is None
    assert clusters(p.apply(9.0)) is None


def test_without_a_clock_unused_clusters_go_at_once() -> None:
    p = Pipeline()
    p.apply(1.0, route("a", 30001))
    model, renderer = p.model, p.renderer
    assert clusters(renderer.update(model.ir, model.apply([route("a", 30002)], ()))) == p.names()
