"""hack/bench dataplane: what kubelbd's Envoy costs a request, against its references.

One backend (an echo Deployment of 3 pods behind a ClusterIP Service and its Ingress in the
first tenant), three ways to it, each loaded by the same kept load generator (wrk, Debian's
package) with the same connections and duration, interleaved over `--rounds`:

- `direct`: straight to the NodePort of the Service's twin on the first node (the floor: no
  proxy at all);
- `minimal`: a second Envoy, one hop (a static listener whose one route sends everything to a
  static cluster of the same NodePorts on every node), with the fleet Envoy's concurrency;
- `kubelbd`: kubelbd's Envoy, the Ingress's host (the plain listener's scope for the host ->
  cluster, envoy/scopes.py; before the scopes, a front table -> shard listener hop).

Reported per way: requests/s and wrk's p50 and p99 latency, the median over the rounds, and
kubelbd's against the minimal Envoy's (issue 16: at least 0.95x the throughput, at most
0.1 ms added at p50). Also each Envoy's CPU time per request (its /proc utime + stime over
the run, over wrk's request count): on a machine whose cores wrk, the backends and the fleet
share, that is the steadier figure for what the proxy itself costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubefleet import lb
from kubefleet.layout import Layout

from kubelbd.envoy.process import envoy_binary
from kubelbd.kube import Kube
from kubelbd.objects import DEPLOYMENTS, INGRESSES, NAMESPACES, SERVICES, Obj
from kubelbd.sources import twins

from .convergence import deployment, ingress, svc
from .stats import cpu_seconds

APP = "echo"
REPLICAS = 3
#: the fleet's Envoy runs with this many workers (kubelbd.envoy.process)
CONCURRENCY = 2


def wrk(url: str, host: str, connections: int, seconds: int, pid: int = 0) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 latency in ms, the non-2xx/3xx answers, and
    the CPU µs process `pid` used per request (0 without one)."""
    cpu = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-H", f"Host: {host}", url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(pid) - cpu
    requests = int(re.search(r"^\s+(\d+) requests in", out, re.M).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "cpu_us": cpu * 1e6 / requests if pid and requests else 0.0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(latency["50"]),
        "p99": _ms(latency["99"]),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def minimal_bootstrap(port: int, admin: int, nodes: list[str], node_port: int) -> Obj:
    """One listener, one route, one cluster: the least an Envoy in front of the NodePorts is."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": a, "port_value": node_port}}}}
        for a in nodes
    ]
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "minimal",
            "route_config": {
                "virtual_hosts": [
                    {"name": "all", "domains": ["*"],
                     "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
            ],
        },
    }  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "minimal",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [manager]}],
            }],
            "clusters": [{
                "name": "backend", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "backend",
                                    "endpoints": [{"lb_endpoints": endpoints}]},
            }],
        },
    }  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(layout: Layout, rounds: int, connections: int, seconds: int) -> None:
    if shutil.which("wrk") is None:
        sys.exit("hack/bench dataplane: wrk is not installed (hack/install installs it)")
    tenant = layout.tenant_clusters[0].name
    kube = await Kube.from_file(layout.kubeconfig(tenant), tenant)
    ns = f"bench-dp-{os.getpid()}"
    host = f"dp.{ns}.bench.test"
    envoys: list[asyncio.subprocess.Process] = []
    tmp = Path(tempfile.mkdtemp(prefix="kubelbd-bench-dp-"))
    try:
        await kube.create(NAMESPACES, {"metadata": {"name": ns}})
        app = deployment(APP)
        app["spec"]["replicas"] = REPLICAS  # a pod per node
        await kube.create(DEPLOYMENTS, app, ns)
        await kube.create(SERVICES, svc(APP, APP), ns)
        await kube.create(INGRESSES, ingress("dp", host, APP), ns)
        kubelbd_url = f"http://127.0.0.1:{layout.envoy_http_port}/"
        await _until_answers(kubelbd_url, host, 120)
        twin = await kube.get(SERVICES, twins.twin_name(APP), ns)
        node_port = int(twin["spec"]["ports"][0]["nodePort"])
        nodes = [n.ip for n in layout.tenant_clusters[0].nodes]
        port, admin = _free_port(), _free_port()
        config = tmp / "minimal.json"
        config.write_text(json.dumps(minimal_bootstrap(port, admin, nodes, node_port)))
        envoys.append(await asyncio.create_subprocess_exec(
            envoy_binary(), "-c", str(config), "--concurrency", str(CONCURRENCY),
            "--log-level", "error", "--disable-hot-restart",
            "--base-id", str(os.getpid() % 1000),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        ways = {
            "direct": f"http://{nodes[0]}:{node_port}/",
            "minimal": f"http://127.0.0.1:{port}/",
            "kubelbd": kubelbd_url,
        }
        await _until_answers(ways["minimal"], host, 10)
        pids = {"direct": 0, "minimal": envoys[0].pid, "kubelbd": lb.envoy_pid(layout)}
        runs: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
        for r in range(rounds):
            for way, url in ways.items():
                got = await asyncio.to_thread(wrk, url, host, connections, seconds, pids[way])
                rps, p50, p99, failed = got["rps"], got["p50"], got["p99"], got["errors"]
                print(f"   round {r + 1} {way}: {rps:.0f} req/s, p50 {p50:.2f} ms, "
                      f"p99 {p99:.2f} ms, failed {failed:.0f}, "
                      f"Envoy CPU {got['cpu_us']:.0f} µs a request", flush=True)  # fmt: skip
                runs[way].append(got)
        _report(runs, connections, seconds)
    finally:
        for envoy in envoys:
            envoy.terminate()
            await envoy.wait()
        await kube.delete(NAMESPACES, ns)
        await kube.aclose()
        shutil.rmtree(tmp, ignore_errors=True)


async def _until_answers(url: str, host: str, timeout: float) -> None:
    for _ in range(int(timeout / 0.05)):
        done = await asyncio.to_thread(
            subprocess.run, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             "-H", f"Host: {host}", url], capture_output=True, text=True,
        )  # fmt: skip
        if done.stdout == "200":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} never answered")


def _report(runs: dict[str, list[dict[str, float]]], connections: int, seconds: int) -> None:
    med: dict[str, dict[str, Any]] = {
        way: {
            k: statistics.median(r[k] for r in rs)
            for k in ("rps", "p50", "p99", "errors", "cpu_us")
        }
        for way, rs in runs.items()
    }
    print(f"\n{len(next(iter(runs.values())))} rounds, wrk {connections} connections, "
          f"{seconds} s each (medians)\n")  # fmt: skip
    print("| way | req/s | p50 ms | p99 ms | failed | Envoy CPU µs a request |")
    print("|---|---|---|---|---|---|")
    for way, m in med.items():
        cpu = f"{m['cpu_us']:.0f}" if m["cpu_us"] else "-"
        print(f"| {way} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['errors']:.0f} "
              f"| {cpu} |")  # fmt: skip
    minimal = med["minimal"]
    print()
    for way in ("kubelbd",):
        m = med[way]
        print(f"{way} / minimal Envoy: {m['rps'] / minimal['rps']:.2f}x the throughput, "
              f"{m['p50'] - minimal['p50']:+.2f} ms at p50, "
              f"{m['cpu_us'] / minimal['cpu_us']:.2f}x the CPU a request")  # fmt: skip
