"""/metrics on the running fleet: one replica says it leads, and an Ingress in tenant alpha
raises alpha's route count and the leader's watch-to-applied histogram, as Prometheus would
scrape them from kubelbd's health port (KUBELBD_HEALTH_ADDR, one per replica)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubelbd.objects import INGRESSES
from kubelbd.records.names import ROUTES

from .support import (
    FleetHandle,
    backend,
    deploy_app,
    eventually,
    ingress_obj,
    namespace_in,
    rule,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(url) as r,
    ):
        assert r.status == 200
        text = await r.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def ns(fleet: FleetHandle) -> AsyncIterator[str]:
    async with namespace_in(fleet, "metrics") as name:
        yield name


async def leader_port(fleet: FleetHandle) -> int:
    """The health port of the one replica whose kubelbd_leader says it leads: only the leader
    writes statuses, so only it times changes up to Envoy applying them."""

    async def the_leader() -> int:
        ports = [r.health_port for r in fleet.layout.replica_set]
        leading = [p for p in ports if value(await scrape(p), "kubelbd_leader") == 1]
        assert len(leading) == 1, leading
        return leading[0]

    return await eventually(the_leader, what="one replica leading")


async def alpha_records(fleet: FleetHandle) -> set[str]:
    """The names of alpha's Route records: what kubelbd_routes{tenant="alpha"} must count
    (earlier tests' namespaces may still be going, taking their records with them)."""
    held, _ = await fleet.kube["mgmt"].list(ROUTES, "tenant-alpha")
    return {r["metadata"]["name"] for r in held}


async def test_an_ingress_moves_the_route_count_and_the_latency_histogram(
    fleet: FleetHandle, ns: str
) -> None:
    kube, lay = fleet.kube["alpha"], fleet.layout
    await deploy_app(kube, ns, "web")
    port = await leader_port(fleet)
    before = await scrape(port)
    applied = value(before, "kubelbd_watch_to_applied_seconds_count", kind="Route")

    h = f"{unique('metrics')}.example.test"
    await kube.create(INGRESSES, ingress_obj("app", [rule(h, ("/", "Prefix", backend("web")))]), ns)
    await until_served(lay, h, "/")
    record = f"{ns}.app"

    async def counted() -> bool:
        records = await alpha_records(fleet)
        now = await scrape(port)
        return (
            record in records
            and value(now, "kubelbd_routes", tenant="alpha") == len(records)
            and value(now, "kubelbd_watch_to_applied_seconds_count", kind="Route") > applied
        )

    await eventually(counted, what="alpha's route counted and its change timed")
    after = await scrape(port)
    # Every type of Envoy rejection is reported, and a healthy fleet has none new (fewer
    # only if Envoy restarted meanwhile: its counters start again).
    for xds in ("lds", "cds", "rds", "srds", "sds"):
        series = "kubelbd_envoy_update_rejected_total"
        assert (series, frozenset({("type", xds)})) in after
        assert value(after, series, type=xds) <= value(before, series, type=xds)

    await kube.delete(INGRESSES, "app", ns)

    async def uncounted() -> bool:
        records = await alpha_records(fleet)
        now = await scrape(port)
        return record not in records and value(now, "kubelbd_routes", tenant="alpha") == len(
            records
        )

    await eventually(uncounted, what="alpha's route no longer counted")
