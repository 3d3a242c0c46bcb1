"""hack/bench churn: constant load on stable hosts while things change; every failed request.

Twenty stable hosts in the first tenant (Ingresses to Service `a`, three echo pods) take
constant load from a kept load generator, wrk (Debian's package: keep-alive connections, a
Lua script cycling the Host header over the twenty hosts), through kubelbd's Envoy. Each phase
runs wrk for its own span while one thing happens, so each failure is counted against what
caused it:

- `steady`: nothing (the reference: no failure is expected);
- `backend switch`: every stable Ingress moves to Service `b`, whose NodePort twin is new,
  then back to `a` (whose twin may be new again by then);
- `other routes`: `--others` other Ingresses come, then go;
- `kubelbd restart`: every kubelbd replica stopped, then started (Envoy serves on);
- `node stop`: the tenant's node-3 stopped `--node-down` seconds, then started;
- `tenant API server restart`: the tenant's API server stopped 30 s, then started;
- `management API server restart`: the same for the management cluster's.

A failure is a non-2xx answer or a socket error (connect, read, write, timeout) as wrk
reports them. Goal (issue 16): none on established routes; a node that stops fails only
until Envoy ejects it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubefleet.layout import Layout

from kubelbd.kube import Kube
from kubelbd.objects import DEPLOYMENTS, INGRESSES, NAMESPACES, SERVICES, Obj

from .convergence import FLEET, deployment, ingress, svc

STABLE = 20
CONNECTIONS = 8
SETTLE = 5.0  # seconds of load after each event's last step, inside its phase


def lua(hosts: list[str]) -> str:
    names = ", ".join(f'"{h}"' for h in hosts)
    return f"""local hosts = {{{names}}}
local i = 0
request = function()
  i = i % #hosts + 1
  wrk.headers["Host"] = hosts[i]
  return wrk.format(nil, "/")
end
"""


def failures(out: str) -> dict[str, int]:
    """wrk's count of requests, non-2xx/3xx answers and socket errors."""
    found = {"requests": int(re.search(r"(\d+) requests in", out).group(1))}  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    found["non-2xx"] = int(non2xx.group(1)) if non2xx else 0
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    for i, name in enumerate(("connect", "read", "write", "timeout")):
        found[name] = int(sockets.group(i + 1)) if sockets else 0
    return found


async def fleet(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(FLEET, *args, stdout=subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise RuntimeError(f"hack/fleet {' '.join(args)} failed")


class Churn:
    def __init__(self, layout: Layout, kube: Kube, ns: str, script: Path, others: int) -> None:
        self.layout = layout
        self.kube = kube
        self.ns = ns
        self.script = script
        self.others = others
        self.stable = [f"s{i}.{ns}.churn.test" for i in range(STABLE)]
        self.replicas = [r.name for r in layout.replica_set]

    async def phase(self, name: str, seconds: float, event: Callable[[], Awaitable[None]]) -> str:
        """wrk for `seconds` (at least the event and SETTLE after it) while `event` runs."""
        url = f"http://127.0.0.1:{self.layout.envoy_http_port}/"
        start = time.monotonic()
        load = asyncio.create_task(asyncio.create_subprocess_exec(
            "wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", f"{int(seconds)}s",
            "-s", str(self.script), url, stdout=subprocess.PIPE,
        ))  # fmt: skip
        proc = await load
        await event()
        took = time.monotonic() - start
        out, _ = await proc.communicate()
        if took + SETTLE > seconds:
            print(f"   {name}: the event took {took:.0f} s of a {seconds:.0f} s phase",
                  file=sys.stderr)  # fmt: skip
        got = failures(out.decode())
        failed = sum(v for k, v in got.items() if k != "requests")
        detail = ", ".join(f"{k} {v}" for k, v in got.items() if k != "requests" and v)
        row = f"| {name} | {int(seconds)} | {got['requests']} | {failed} | {detail or '-'} |"
        print(row, flush=True)
        return row

    async def switch(self, to: str) -> None:
        for i in range(STABLE):
            await self.kube.patch(INGRESSES, f"s{i}", {"spec": self._spec(i, to)}, self.ns)

    def _spec(self, i: int, backend: str) -> Obj:
        spec: Obj = ingress(f"s{i}", self.stable[i], backend)["spec"]
        return spec

    async def backend_switch(self) -> None:
        await self.switch("b")
        await asyncio.sleep(10)  # the load runs on b; a's twin goes (cluster grace)
        await self.switch("a")

    async def other_routes(self) -> None:
        names = [f"o{i}" for i in range(self.others)]
        await asyncio.gather(*(
            self.kube.create(INGRESSES, ingress(n, f"{n}.{self.ns}.churn.test", "b"), self.ns)
            for n in names
        ))  # fmt: skip
        await asyncio.sleep(5)
        await asyncio.gather(*(self.kube.delete(INGRESSES, n, self.ns) for n in names))

    async def kubelbd_restart(self) -> None:
        for name in reversed(self.replicas):
            await fleet("stop", name)
        for name in self.replicas:
            await fleet("start", name)

    async def stopped(self, component: str, cluster: str | None, seconds: float) -> None:
        where = [cluster] if cluster else []
        await fleet("stop", component, *where)
        await asyncio.sleep(seconds)
        await fleet("start", component, *where)


async def run(layout: Layout, others: int, node_down: float) -> None:
    if shutil.which("wrk") is None:
        sys.exit("hack/bench churn: wrk is not installed (hack/install installs it)")
    tenant = layout.tenant_clusters[0].name
    kube = await Kube.from_file(layout.kubeconfig(tenant), tenant)
    ns = f"bench-churn-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="kubelbd-bench-churn-"))
    try:
        await kube.create(NAMESPACES, {"metadata": {"name": ns}})
        for app in ("a", "b"):
            d = deployment(app)
            d["spec"]["replicas"] = 3
            await kube.create(DEPLOYMENTS, d, ns)
            await kube.create(SERVICES, svc(app, app), ns)
        script = tmp / "hosts.lua"
        churn = Churn(layout, kube, ns, script, others)
        script.write_text(lua(churn.stable))
        for i, host in enumerate(churn.stable):
            await kube.create(INGRESSES, ingress(f"s{i}", host, "a"), ns)
        await _until_all_served(layout, churn.stable)

        async def nothing() -> None:
            await asyncio.sleep(0)

        print(f"\n{STABLE} stable hosts, wrk -t2 -c{CONNECTIONS} (keep-alive)\n")
        print("| phase | seconds | requests | failed | how |")
        print("|---|---|---|---|---|")
        await churn.phase("steady", 10, nothing)
        await churn.phase("backend switch (new twins)", 25, churn.backend_switch)
        await churn.phase(f"{others} other routes come and go", 25, churn.other_routes)
        await churn.phase("kubelbd restart (every replica)", 30, churn.kubelbd_restart)
        await churn.phase(f"node-3 stopped {node_down:.0f} s", node_down + 25,
                          lambda: churn.stopped("node-3", tenant, node_down))  # fmt: skip
        await churn.phase("tenant API server stopped 30 s", 60,
                          lambda: churn.stopped("apiserver", tenant, 30))  # fmt: skip
        await churn.phase("management API server stopped 30 s", 60,
                          lambda: churn.stopped("apiserver", "mgmt", 30))  # fmt: skip
    finally:
        await kube.delete(NAMESPACES, ns)
        await kube.aclose()
        shutil.rmtree(tmp, ignore_errors=True)


async def _until_all_served(layout: Layout, hosts: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{layout.envoy_http_port}/"
    for host in hosts:
        while True:
            done = await asyncio.create_subprocess_exec(
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}", url,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await done.communicate()
            if out == b"200":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host} never served")
            await asyncio.sleep(0.1)
