"""An in-place upgrade keeps serving: records written by an older kubelbd are read as they are.

Before typed records, a Route's path had one `backend`; today it has `backends`. kubelbd
migrates old records when it reads them (records/parse.py) and its tenant side rewrites
them. This test puts a served route's record back into the old shape while kubelbd is down
and its tenant's API server unreachable, so the restarted kubelbd can only serve it from the
old record: not one request may fail. Once the tenant is back, the record is rewritten in
today's shape.
"""

from __future__ import annotations

import pytest

from kubelbd.objects import INGRESSES
from kubelbd.records.names import ROUTES

from .support import (
    FleetHandle,
    backend,
    bounce_controllers,
    conditions,
    deploy_app,
    eventually,
    ingress_obj,
    namespace_in,
    rule,
    run_fleet,
    start_kubelbd,
    stop_kubelbd,
    traffic,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e


def old_shape(spec: dict) -> dict:  # type: ignore[type-arg]
    """The spec as kubelbd wrote it before `backends`: one `backend` per path."""
    for r in spec["rules"]:
        for p in r["paths"]:
            (p["backend"],) = p.pop("backends")
    return spec


async def test_records_of_the_previous_version_keep_serving(fleet: FleetHandle) -> None:
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    async with namespace_in(fleet, "upg", ["alpha"]) as ns:
        await deploy_app(kube, ns, "app", replicas=2)
        h = f"{unique('upgrade')}.example.test"
        await kube.create(
            INGRESSES, ingress_obj("app", [rule(h, ("/", "Prefix", backend("app")))]), ns
        )
        await until_served(lay, h)

        async def recorded() -> bool:
            # A route is served before its record is written (a provisional route): wait
            # for the record, or the stop below would leave nothing to put in the old shape.
            record = await mgmt.get(ROUTES, f"{ns}.app", "tenant-alpha")
            assert "backends" in record["spec"]["rules"][0]["paths"][0], record["spec"]
            return True

        await eventually(recorded, what="the route's record written")

        async with traffic(lay, h) as t:
            await stop_kubelbd()
            await run_fleet("stop", "apiserver", "alpha")
            try:
                # Read again once nothing writes it: a status write (DNSPublished, say)
                # between the first read and the stop would make a replace of that a 409.
                record = await mgmt.get(ROUTES, f"{ns}.app", "tenant-alpha")
                record["spec"] = old_shape(record["spec"])
                record.pop("status", None)  # not written yet, at times
                stored = await mgmt.replace(ROUTES, record)
                # The CRD still declares the old field: the API server keeps it.
                assert "backend" in stored["spec"]["rules"][0]["paths"][0], stored["spec"]
                await start_kubelbd()

                async def republished() -> bool:
                    obj = await mgmt.get(ROUTES, f"{ns}.app", "tenant-alpha")
                    programmed = conditions(obj).get("Programmed", {})
                    generation = obj["metadata"]["generation"]
                    return bool(
                        programmed.get("status") == "True"
                        and programmed.get("observedGeneration") == generation
                    )

                # Served from the old record alone: its tenant is unreachable.
                await eventually(republished, timeout=60, what="the old record reported served")
                assert (
                    "backend"
                    in (await mgmt.get(ROUTES, f"{ns}.app", "tenant-alpha"))["spec"]["rules"][0][
                        "paths"
                    ][0]
                )
            finally:
                await run_fleet("start", "apiserver", "alpha")
                await bounce_controllers("alpha")

            async def rewritten() -> bool:
                obj = await mgmt.get(ROUTES, f"{ns}.app", "tenant-alpha")
                path = obj["spec"]["rules"][0]["paths"][0]
                assert "backends" in path and "backend" not in path, path
                return True

            await eventually(rewritten, timeout=60, what="the record rewritten in today's shape")
            await until_served(lay, h)
        assert t.ok > 0
        assert t.failures == [], t.failures[:5]
