"""NodePort twins whose nodePorts kubelbd chose: the API server has the last word."""

from __future__ import annotations

import pytest

from kubelbd.objects import SERVICES
from kubelbd.sources import twins
from kubelbd.tenant.twins import Twins

from .support import FleetHandle, create_namespace, delete_namespace, service, unique

pytestmark = pytest.mark.e2e


async def test_a_refused_nodeport_choice_falls_back_to_an_allocated_port(
    fleet: FleetHandle,
) -> None:
    kube = fleet.kube["alpha"]
    ns = unique("np")
    await create_namespace(kube, ns)
    try:
        holder = service("holder", [{"port": 80, "targetPort": 8080}], "NodePort")
        taken = (await kube.create(SERVICES, holder, ns))["spec"]["ports"][0]["nodePort"]
        app = await kube.create(
            SERVICES, service("app", [{"name": "http", "port": 80, "targetPort": 8080}]), ns
        )
        made = Twins("alpha", dict)
        # A port another Service holds (kubelbd's cache was behind), then one outside the
        # cluster's NodePort range (a cluster configured with its own: stop choosing).
        for chosen, still_choosing in ((taken, True), (29999, False)):
            desired = twins.twin(app)
            desired["spec"]["ports"][0]["nodePort"] = chosen
            assert await made.create(kube, desired), "the nodePort should have moved"
            twin = await kube.get(SERVICES, desired["metadata"]["name"], ns)
            got = twin["spec"]["ports"][0]["nodePort"]
            low, high = twins.NODE_PORT_RANGE
            assert got != chosen and low <= got < high, got
            assert made.choose_node_ports is still_choosing
            await kube.delete(SERVICES, desired["metadata"]["name"], ns)
    finally:
        await delete_namespace(kube, ns)
