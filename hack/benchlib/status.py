"""hack/bench status: `--ingresses` Ingresses written at once across the tenants, until every
one has its address in its status.

Each run writes them concurrently into a fresh namespace per tenant (an echo Deployment and
Service there first, warm), notes when the last write returned, and lists the namespaces
(watched) until every Ingress has `status.loadBalancer.ingress`; the figure is that moment
less the last write (issue 16: at most 2 s, median over 5 runs), reported beside the writes'
own span (first to last). The namespaces are then deleted, and one new Ingress is written in
a namespace of its own as soon as their Ingresses are gone: the time until it has its address
is the third figure (a tenant's deleted objects must not hold up its new ones). The next run
waits until kubelbd has withdrawn the deleted routes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from kubefleet.layout import Layout

from kubelbd.kube import Kube
from kubelbd.kube.informer import Informer
from kubelbd.objects import DEPLOYMENTS, INGRESSES, NAMESPACES, SERVICES, Obj
from kubelbd.records.names import ROUTES, namespace_of

from .convergence import deployment, ingress, svc

#: writes in flight at once per tenant (kubectl apply of a multi-document file writes one at
#: a time; a controller writes with a few workers)
WRITERS = 16
POLL = 0.01
#: KUBELBD_BENCH_SAMPLES=1: how many are addressed, each second, on stderr
PROGRESS = os.environ.get("KUBELBD_BENCH_SAMPLES") == "1"


async def run(layout: Layout, ingresses: int, runs: int) -> None:
    tenants = [c.name for c in layout.tenant_clusters]
    kube = {t: await Kube.from_file(layout.kubeconfig(t), t) for t in tenants}
    mgmt = await Kube.from_file(layout.kubeconfig("mgmt"), "mgmt")
    results: list[tuple[float, float, float]] = []
    try:
        for r in range(runs):
            ns = f"bench-status-{os.getpid()}-{r}"
            took = await _one(kube, mgmt, ns, ingresses)
            results.append(took)
            print(f"   run {r + 1}: writes {took[0]:.2f} s, last status {took[1]:.2f} s after "
                  f"the last write, a new Ingress {took[2]:.2f} s while they are deleted",
                  flush=True)  # fmt: skip
    finally:
        for k in (*kube.values(), mgmt):
            await k.aclose()
    print(f"\n{ingresses} Ingresses over {len(tenants)} tenants, {runs} runs\n")
    print("| | median s | max s |")
    print("|---|---|---|")
    rows = ("writes, first to last", "last status after the last write",
            "a new Ingress's status while they are deleted")  # fmt: skip
    for i, row in enumerate(rows):
        figures = [took[i] for took in results]
        print(f"| {row} | {statistics.median(figures):.2f} | {max(figures):.2f} |")


async def _one(kube: dict[str, Kube], mgmt: Kube, ns: str, n: int) -> tuple[float, float, float]:
    tenants = sorted(kube)
    side = f"{ns}-new"
    for t in tenants:
        for where in (ns, side):
            await kube[t].create(NAMESPACES, {"metadata": {"name": where}})
            await kube[t].create(DEPLOYMENTS, deployment("echo"), where)
            await kube[t].create(SERVICES, svc("echo", "echo"), where)
    watches = [Informer(kube[t], INGRESSES, namespace=ns) for t in tenants]
    new = Informer(kube[tenants[0]], INGRESSES, namespace=side)
    tasks = [asyncio.create_task(w.run()) for w in (*watches, new)]
    try:
        writes, last = await _timed(kube, mgmt, ns, n, watches)
        # The namespaces go; a new Ingress elsewhere is written once their Ingresses are
        # gone (kubelbd sees them go when the watch here does).
        for t in tenants:
            await kube[t].delete(NAMESPACES, ns)
        await _until_gone(watches)
        obj = ingress("new", f"new.{side}.bench.test", "echo")
        start = time.monotonic()
        await kube[tenants[0]].create(INGRESSES, obj, side)
        fresh = await _until_addressed([new], 1) - start
        await _until_withdrawn(mgmt, tenants, ns)
        for t in tenants:
            await kube[t].delete(NAMESPACES, side)
        await _until_withdrawn(mgmt, tenants, side)
        return writes, last, fresh
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _timed(
    kube: dict[str, Kube], mgmt: Kube, ns: str, n: int, watches: list[Informer]
) -> tuple[float, float]:
    tenants = sorted(kube)
    # Warm: the twin and cluster of the backend exist before anything is timed.
    for t in tenants:
        await kube[t].create(INGRESSES, ingress("warm", f"warm.{ns}.{t}.bench.test", "echo"), ns)
    await _until_addressed(watches, 1)
    objs = [
        (t, ingress(f"i{i}", f"i{i}.{ns}.{t}.bench.test", "echo"))
        for i in range(n // len(tenants))
        for t in tenants
    ]
    limit = {t: asyncio.Semaphore(WRITERS) for t in tenants}

    async def write(t: str, obj: Obj) -> None:
        async with limit[t]:
            await kube[t].create(INGRESSES, obj, ns)

    start = time.monotonic()
    await asyncio.gather(*(write(t, o) for t, o in objs))
    last_write = time.monotonic()
    done = await _until_addressed(watches, len(objs) // len(tenants) + 1)
    return last_write - start, done - last_write


async def _until_addressed(watches: list[Informer], each: int, timeout: float = 300) -> float:
    """When every watched namespace has `each` Ingresses, all with an address (read from the
    watches' caches: polling lists of a thousand objects would load the API servers under
    test)."""
    deadline = time.monotonic() + timeout
    start, shown = time.monotonic(), 0.0
    while time.monotonic() < deadline:
        addressed = sum(
            bool((i.get("status") or {}).get("loadBalancer", {}).get("ingress"))
            for w in watches
            for i in w.cache.values()
        )
        if addressed >= each * len(watches):
            return time.monotonic()
        if PROGRESS and time.monotonic() - shown >= 1:
            shown = time.monotonic()
            missing = [
                i["metadata"]["name"]
                for w in watches
                for i in w.cache.values()
                if not (i.get("status") or {}).get("loadBalancer", {}).get("ingress")
            ]
            print(f"     +{shown - start:.1f} s: {addressed} addressed; waiting for "
                  f"{', '.join(sorted(missing)[:5])}", file=sys.stderr)  # fmt: skip
        await asyncio.sleep(POLL)
    raise TimeoutError("the Ingresses were never all addressed")


async def _until_gone(watches: list[Informer], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while any(w.cache for w in watches):
        if time.monotonic() > deadline:
            raise TimeoutError("the namespaces' Ingresses were never all deleted")
        await asyncio.sleep(POLL)


async def _until_withdrawn(mgmt: Kube, tenants: list[str], ns: str, timeout: float = 300) -> None:
    """Until no route record of the namespace is left (kubelbd is done with the run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = 0
        for t in tenants:
            records, _ = await mgmt.list(ROUTES, namespace_of(t))
            left += sum(r["metadata"]["name"].startswith(f"{ns}.") for r in records)
        if not left:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"route records of {ns} never withdrawn")
