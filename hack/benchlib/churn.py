"""hack/bench churn: constant load on stable hosts while things change; every failed request.

Three loads run through kubelbd's Envoy in every phase, each from a kept load generator
(Debian's packages), on keep-alive connections to Service `a` (three echo pods) in the first
tenant:

- `http`: wrk, twenty stable hosts (Ingresses; a Lua script cycles the Host header);
- `tls`: h2load over HTTP/1.1 and TLS (SNI and Host: the TLS host, an Ingress whose
  certificate is a tenant Secret), connecting to the HTTPS listener (`--connect-to`);
- `l4`: wrk on a LoadBalancer Service's pool address (Envoy's TCP proxy).

Each phase runs them for its own span while one thing happens, so each failure is counted
against what caused it:

- `steady`: nothing (the reference: no failure is expected);
- `backend switch`: every stable Ingress moves to Service `b`, whose NodePort twin is new,
  then back to `a` (whose twin may be new again by then);
- `other routes`: `--others` other Ingresses come, then go;
- `certificates`: the TLS host's Secret gets a new certificate, five times, then its
  Ingress names another Secret, then the first again;
- `L4 listeners`: twenty other LoadBalancer Services come, then go (listeners added and
  removed beside the loaded one), and the loaded one's selector moves to `b` and back;
- `kubelbd restart`: every kubelbd replica stopped, then started (Envoy serves on);
- `node stop`: the tenant's node-3 stopped `--node-down` seconds, then started;
- `tenant API server restart`: the tenant's API server stopped 30 s, then started;
- `management API server restart`: the same for the management cluster's.

A failure is a non-2xx answer or a socket error (connect, read, write, timeout) as wrk
reports them; for h2load, a request it counts as failed, or a 4xx/5xx answer. Goal (issue
16): none on established routes; a node that stops fails only until Envoy ejects it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubefleet import certs
from kubefleet.layout import Layout

from kubelbd.kube import Kube
from kubelbd.objects import DEPLOYMENTS, INGRESSES, NAMESPACES, SECRETS, SERVICES, Obj

from .convergence import FLEET, deployment, ingress, svc

STABLE = 20
CONNECTIONS = 8
#: connections of the TLS and the L4 load each
SIDE_CONNECTIONS = 2
#: the loaded LoadBalancer Service's pool address and port; the others' are next to it
L4_ADDRESS, L4_PORT = "127.0.200.150", 8080
L4_OTHERS = 20
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


def h2load_failures(out: str) -> dict[str, int]:
    """h2load's count of requests done, failed ones, and 4xx/5xx answers."""
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, "
                       r"(\d+) failed", out)  # fmt: skip
    codes = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if counts is None or codes is None:
        raise RuntimeError(f"h2load said:\n{out}")
    return {
        "requests": int(counts.group(1)),
        "failed": int(counts.group(2)),
        "4xx": int(codes.group(1)),
        "5xx": int(codes.group(2)),
    }


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
        self.tls_host = f"tls.{ns}.churn.test"
        self.replicas = [r.name for r in layout.replica_set]

    def loads(self, seconds: float) -> dict[str, list[str]]:
        """The three loads' command lines, each for `seconds`."""
        span = str(int(seconds))
        https = self.layout.envoy_https_port
        return {
            "http": ["wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", f"{span}s",
                     "-s", str(self.script), f"http://127.0.0.1:{self.layout.envoy_http_port}/"],
            "tls": ["h2load", "--h1", "-t", "1", "-c", str(SIDE_CONNECTIONS), "-D", span,
                    f"--connect-to=127.0.0.1:{https}", f"https://{self.tls_host}:{https}/"],
            "l4": ["wrk", "-t", "1", "-c", str(SIDE_CONNECTIONS), "-d", f"{span}s",
                   f"http://{L4_ADDRESS}:{L4_PORT}/"],
        }  # fmt: skip

    async def phase(self, name: str, seconds: float, event: Callable[[], Awaitable[None]]) -> str:
        """The loads for `seconds` (at least the event and SETTLE after it) while `event`
        runs."""
        start = time.monotonic()
        procs = {
            load: await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for load, argv in self.loads(seconds).items()
        }
        await event()
        took = time.monotonic() - start
        outs = {load: (await p.communicate())[0].decode() for load, p in procs.items()}
        if took + SETTLE > seconds:
            print(f"   {name}: the event took {took:.0f} s of a {seconds:.0f} s phase",
                  file=sys.stderr)  # fmt: skip
        got = {
            load: h2load_failures(out) if load == "tls" else failures(out)
            for load, out in outs.items()
        }
        requests = sum(g["requests"] for g in got.values())
        failed = sum(v for g in got.values() for k, v in g.items() if k != "requests")
        detail = "; ".join(
            f"{load} {k} {v}" for load, g in got.items() for k, v in g.items()
            if k != "requests" and v
        )  # fmt: skip
        row = f"| {name} | {int(seconds)} | {requests} | {failed} | {detail or '-'} |"
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

    async def certificates(self) -> None:
        for _ in range(5):
            renewed = {"data": tls_secret("tls-a", self.tls_host)["data"]}
            await self.kube.patch(SECRETS, "tls-a", renewed, self.ns)
            await asyncio.sleep(2)
        for secret in ("tls-b", "tls-a"):
            await self.kube.patch(INGRESSES, "tls", {"spec": self._tls_spec(secret)}, self.ns)
            await asyncio.sleep(2)

    def _tls_spec(self, secret: str) -> Obj:
        spec: Obj = ingress("tls", self.tls_host, "a")["spec"]
        spec["tls"] = [{"hosts": [self.tls_host], "secretName": secret}]
        return spec

    async def l4_listeners(self) -> None:
        others = [f"l4-{i}" for i in range(L4_OTHERS)]
        await asyncio.gather(*(
            self.kube.create(SERVICES, l4_service(n, f"127.0.200.{151 + i}", "a"), self.ns)
            for i, n in enumerate(others)
        ))  # fmt: skip
        await asyncio.sleep(5)
        await asyncio.gather(*(self.kube.delete(SERVICES, n, self.ns) for n in others))
        for app in ("b", "a"):
            await self.kube.patch(SERVICES, "l4", {"spec": {"selector": {"app": app}}}, self.ns)
            await asyncio.sleep(5)

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
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"hack/bench churn: {tool} is not installed (hack/install installs it)")
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
        for secret in ("tls-a", "tls-b"):
            await kube.create(SECRETS, tls_secret(secret, churn.tls_host), ns)
        tls = ingress("tls", churn.tls_host, "a")
        tls["spec"] = churn._tls_spec("tls-a")
        await kube.create(INGRESSES, tls, ns)
        await kube.create(SERVICES, l4_service("l4", L4_ADDRESS, "a"), ns)
        await _until_all_served(layout, churn.stable)
        await _until(lambda: _answers(
            "-k", "--connect-to", f"::127.0.0.1:{layout.envoy_https_port}",
            f"https://{churn.tls_host}:{layout.envoy_https_port}/",
        ), f"{churn.tls_host} over TLS")  # fmt: skip
        await _until(lambda: _answers(f"http://{L4_ADDRESS}:{L4_PORT}/"), "the L4 address")

        async def nothing() -> None:
            await asyncio.sleep(0)

        print(
            f"\nhttp: {STABLE} stable hosts, wrk -t2 -c{CONNECTIONS}; tls: h2load --h1 "
            f"-c{SIDE_CONNECTIONS}; l4: wrk -t1 -c{SIDE_CONNECTIONS} (all keep-alive)\n"
        )
        print("| phase | seconds | requests | failed | how |")
        print("|---|---|---|---|---|")
        await churn.phase("steady", 10, nothing)
        await churn.phase("backend switch (new twins)", 25, churn.backend_switch)
        await churn.phase(f"{others} other routes come and go", 25, churn.other_routes)
        await churn.phase("certificates (5 renewals, 2 Secret switches)", 25,
                          churn.certificates)  # fmt: skip
        await churn.phase(f"L4 listeners ({L4_OTHERS} come and go, selector switch)", 30,
                          churn.l4_listeners)  # fmt: skip
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


async def _until_all_served(layout: Layout, hosts: list[str]) -> None:
    url = f"http://127.0.0.1:{layout.envoy_http_port}/"
    for host in hosts:
        await _until(lambda h=host: _answers("-H", f"Host: {h}", url), host)  # type: ignore[misc]


async def _answers(*curl: str) -> bool:
    done = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *curl, stdout=subprocess.PIPE
    )
    out, _ = await done.communicate()
    return out == b"200"


async def _until(ok: Callable[[], Awaitable[bool]], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} never served")
        await asyncio.sleep(0.1)


def tls_secret(name: str, host: str) -> Obj:
    """A kubernetes.io/tls Secret with a new self-signed certificate for `host`."""
    pair = certs.self_signed(host)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(pair.cert_pem()).decode(),
            "tls.key": base64.b64encode(pair.key_pem()).decode(),
        },
    }


def l4_service(name: str, address: str, app: str) -> Obj:
    """A LoadBalancer Service asking for a pool address, to `app`'s HTTP port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerIP": address,
            "selector": {"app": app},
            "ports": [{"name": "http", "port": L4_PORT, "targetPort": 8080, "protocol": "TCP"}],
        },
    }
