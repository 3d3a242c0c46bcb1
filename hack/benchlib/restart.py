"""hack/bench restart: with `--routes` routes present (the convergence bench's fill), two
restarts, each timed until every route is served again (issue 16):

- kubelbd's (`hack/fleet restart kubelbd`, stop included): it lists the records and every
  tenant again and publishes. Envoy keeps serving meanwhile (the fleet runs it with
  `--keep-envoy`), so what is timed is kubelbd's own way back: ready, every route held
  (`kubelbd_routes`), and an Ingress written after the restart answering through Envoy;
- Envoy's (killed with SIGKILL): kubelbd starts it again, and it loads the files on the
  volume; timed until a sample of the hosts (every tenant's last, and `SAMPLE` spread over
  the rest) all answer again.

Each run prints kubelbd's and Envoy's RSS once both are back: a restart relists everything,
and what the relist leaves behind is part of what a restarted kubelbd costs.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import time

import aiohttp
from kubefleet.layout import Layout

from kubelbd.objects import INGRESSES

from .convergence import FLEET, Bench, ingress, memory

SAMPLE = 100
TIMEOUT = 600.0


async def run(layout: Layout, routes: int, runs: int) -> None:
    bench = Bench(layout, 0)
    await bench.open()
    kubelbd: list[float] = []
    envoy: list[float] = []
    try:
        await bench.fill(routes)
        n = len(bench.tenants)
        step = max(1, bench.present // SAMPLE)
        picks = sorted({*range(n, bench.present, step), *range(bench.present - n, bench.present)})
        hosts = [f"fill{i}.{bench.tenants[i % n]}.{bench.domain}" for i in picks if i >= n]
        print(f"-- {bench.present} routes present; {len(hosts)} hosts sampled", flush=True)
        for r in range(runs):
            kubelbd.append(await _kubelbd(layout, bench, r))
            envoy.append(await _envoy(bench, hosts))
            print(f"   run {r + 1}: kubelbd restart → all served {kubelbd[-1]:.2f} s, "
                  f"Envoy killed → all served {envoy[-1]:.2f} s; {memory(layout)}",
                  flush=True)  # fmt: skip
    finally:
        await bench.close()
    print(f"\n{bench.present} routes, {runs} runs\n\n| restart | median s | max s |\n|---|---|---|")
    print(f"| kubelbd (stop, start, ready, every route held, a new one served) | "
          f"{statistics.median(kubelbd):.2f} | {max(kubelbd):.2f} |")  # fmt: skip
    print(f"| Envoy (SIGKILL, restarted by kubelbd, the sample served) | "
          f"{statistics.median(envoy):.2f} | {max(envoy):.2f} |")  # fmt: skip


async def _kubelbd(layout: Layout, bench: Bench, r: int) -> float:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        FLEET, "restart", "kubelbd", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    assert await proc.wait() == 0, "hack/fleet restart kubelbd failed"
    health = f"http://127.0.0.1:{layout.kubelbd_health_port}"
    async with aiohttp.ClientSession() as session:
        while await _held(session, health) < bench.present:
            _deadline(start)
            await asyncio.sleep(0.05)
    tenant = bench.tenants[0]
    host = f"after{r}.{tenant}.{bench.domain}"
    await bench.kube[tenant].create(INGRESSES, ingress(f"after{r}", host, "echo"), bench.ns)
    await bench.until(host, 200, timeout=TIMEOUT)
    return time.monotonic() - start


async def _held(session: aiohttp.ClientSession, health: str) -> int:
    """Routes kubelbd holds (its `kubelbd_routes`), once it says it is ready; 0 before."""
    try:
        async with session.get(health + "/readyz") as ready:
            if ready.status != 200:
                return 0
        async with session.get(health + "/metrics") as metrics:
            text = await metrics.text()
    except aiohttp.ClientError:
        return 0
    found = re.findall(r"^kubelbd_routes\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return int(sum(float(v) for v in found))


async def _envoy(bench: Bench, hosts: list[str]) -> float:
    proc = await asyncio.create_subprocess_exec(FLEET, "status", stdout=subprocess.PIPE)
    out = (await proc.communicate())[0].decode()
    found = re.search(r"^\s+envoy\s+running\s+pid (\d+)", out, re.M)
    assert found, out
    start = time.monotonic()
    os.kill(int(found.group(1)), signal.SIGKILL)
    waiting = list(hosts)
    while waiting:
        _deadline(start)
        waiting = [h for h in waiting if await bench.status(h) != 200]
        if waiting:
            await asyncio.sleep(0.01)
    return time.monotonic() - start


def _deadline(start: float) -> None:
    if time.monotonic() - start > TIMEOUT:
        raise TimeoutError(f"not all served again within {TIMEOUT:.0f} s")
