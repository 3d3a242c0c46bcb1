"""hack/bench l4: tenant Service of type LoadBalancer written → first TCP echo through Envoy.

Each change creates a LoadBalancer Service asking for a pool address (loadBalancerIP, which
kubelbd honours when free, so the client knows where to knock), then polls a TCP echo on that
address until it answers; then deletes the Service and waits for the listener to go. The
watch floor (a Service write until its watch event) is measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import time

from kubefleet.layout import Layout

from kubelbd.kube import Kube
from kubelbd.objects import DEPLOYMENTS, NAMESPACES, SERVICES, Obj

from .convergence import Series

APP = "l4echo"


def deployment() -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    "containers": [
                        {"name": "echo", "image": "echo", "ports": [{"containerPort": 9000}]}
                    ]
                },
            },
        },
    }


def lb(name: str, address: str | None) -> Obj:
    spec: Obj = {
        "type": "LoadBalancer",
        "selector": {"app": APP},
        "ports": [{"name": "raw", "port": 9000, "protocol": "TCP"}],
    }
    if address:
        spec["loadBalancerIP"] = address
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


async def echo(address: str) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, 9000), 1)
    except (TimeoutError, OSError):
        return False
    try:
        writer.write(b"x")
        await writer.drain()
        return await asyncio.wait_for(reader.read(1), 1) == b"x"
    except (TimeoutError, OSError):
        return False
    finally:
        writer.close()


async def run(layout: Layout, changes: int) -> None:
    tenant = layout.tenant_clusters[0].name
    kube = await Kube.from_file(layout.kubeconfig(tenant), tenant)
    ns = f"bench-l4-{os.getpid()}"
    await kube.create(NAMESPACES, {"metadata": {"name": ns}})
    rows: list[str] = []
    try:
        await kube.create(DEPLOYMENTS, deployment(), ns)
        # Warm: the pods must be up before anything is timed.
        await kube.create(SERVICES, lb("warm", "127.0.200.250"), ns)
        deadline = time.monotonic() + 120
        while not await echo("127.0.200.250"):
            if time.monotonic() > deadline:
                raise TimeoutError("warm-up LoadBalancer never answered")
            await asyncio.sleep(0.2)
        series = Series("L4: Service write → first TCP echo")
        for n in range(changes):
            address = f"127.0.200.{200 + n % 40}"
            name = f"lb{n}"
            start = time.monotonic()
            await kube.create(SERVICES, lb(name, address), ns)
            while not await echo(address):
                if time.monotonic() - start > 60:
                    raise TimeoutError(f"{name} never echoed")
                await asyncio.sleep(0.001)
            series.values.append(time.monotonic() - start)
            await kube.delete(SERVICES, name, ns)
            # Polling the socket is the measurement itself.
            while await echo(address):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        rows.append(series.row())
        print(rows[-1], flush=True)
        floor = Series("floor: Service write → watch event")
        _, rv = await kube.list(SERVICES, ns, limit=1)
        events: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

        async def watch() -> None:
            async for kind, obj in kube.watch(SERVICES, rv, ns):
                if kind == "ADDED":
                    await events.put((obj["metadata"]["name"], time.monotonic()))

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        for n in range(changes):
            name = f"floor{n}"
            svc = lb(name, None)
            svc["spec"]["type"] = "ClusterIP"
            start = time.monotonic()
            await kube.create(SERVICES, svc, ns)
            while True:
                got, at = await events.get()
                if got == name:
                    floor.values.append(at - start)
                    break
            await kube.delete(SERVICES, name, ns)
        task.cancel()
        rows.append(floor.row())
        print(rows[-1], flush=True)
    finally:
        await kube.delete(NAMESPACES, ns)
        await kube.aclose()
    print("\n| series | n | median ms | p99 ms | min ms | max ms |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
