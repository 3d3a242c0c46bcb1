"""hack/bench convergence: tenant Ingress write → first 200 through Envoy, at several scales.

For each scale (routes already present across the tenants) it makes `--changes` changes, each a
new Ingress with a new host, and times the write until Envoy first answers 200 for that host.
Four kinds of change: `route` (the backend Service already has a cluster), `backend` (a
Service no route used before, so kubelbd must make its NodePort twin and Envoy a new cluster),
`burst` (`--burst` new Ingresses written at once, timed until the last answers 200), and
`httproute` (a new HTTPRoute with a new hostname on the tenant's bench Gateway, timed until
its first 200 at the Gateway's own address). With `--fill httproute`, the routes present are
HTTPRoutes on those Gateways instead of Ingresses.

In the same run it measures the floor:
- watch: the tenant API server alone, from an Ingress write to the watch event for it;
- envoy: a second Envoy, loaded with a copy of kubelbd's current files and of the host scopes
  its Envoy holds (served by the bench's own ADS server), applying the same kind of change
  (one more host scope, and for `backend` the cluster file with one more cluster) until it
  answers 200; the copy is put back after each sample (untimed), so its configuration does
  not grow over a series.
  For `httproute` that is the bench Gateway's routes with one more virtual host: its route
  table file when its chain has one (the largest chains do), else its listener file (routes
  inline); the copy's pool-address listeners are left out (they would share the real ones'
  sockets) and that one listener is moved to a port of its own;
- nodeport, for `backend` only: a NodePort Service made on the tenant API server directly,
  until its port on a node answers (the fleet's kube-proxy emulation programmed it): the
  twin's part of the change. A backend change's floor is watch + the slower of envoy and
  nodeport, as kubelbd makes the twin while Envoy applies the route.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubefleet import lb
from kubefleet.fleet import State, proc_rss_kib
from kubefleet.layout import ROOT, Layout, fleet_dir

from kubelbd.envoy import protos
from kubelbd.envoy.ads import DiscoveryServer
from kubelbd.envoy.process import envoy_binary
from kubelbd.envoy.publisher import write_atomically
from kubelbd.envoy.scopes import host_scope, host_scope_name
from kubelbd.envoy.settings import ADS_SOCKET
from kubelbd.envoy.type_urls import CLUSTER, SCOPED_ROUTE
from kubelbd.kube import Kube
from kubelbd.objects import DEPLOYMENTS, INGRESSES, NAMESPACES, SERVICES, Obj
from kubelbd.records.names import ROUTES, namespace_of
from kubelbd.sources import twins
from kubelbd.sources.gatewayapi import GATEWAYS, HTTPROUTES

from .fleet import kubelbd_pid
from .stats import cpu_seconds, percentile

FLEET = str(ROOT / "hack" / "fleet")
SETTLE = 0.1  # seconds of quiet before each change and each pair of floor samples
#: KUBELBD_BENCH_SAMPLES=1: on stderr, each change's start (UTC) and time, the answers its host
#: gave before the 200 (404: Envoy has no scope for it yet; 503: its cluster is not there or
#: its NodePort not served yet), when Envoy took the scope and the cluster, and for `backend`
#: the new cluster's health check and request counters
SAMPLES = os.environ.get("KUBELBD_BENCH_SAMPLES") == "1"
CLASS = "kubelb"


def envoy_admin(layout: Layout) -> str:
    """kubelbd's Envoy's admin interface (replica 1)."""
    return f"http://127.0.0.1:{layout.envoy_admin_port}"


@dataclass
class Series:
    name: str
    values: list[float] = field(default_factory=list)

    def row(self) -> str:
        v = [x * 1000 for x in self.values]
        return (
            f"| {self.name} | {len(v)} | {statistics.median(v):.1f} | {percentile(v, 99):.1f} "
            f"| {min(v):.1f} | {max(v):.1f} |"
        )


def ingress(name: str, host: str, service: str, class_name: str = CLASS) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {
            "ingressClassName": class_name,
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": service, "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }


def httproute(name: str, host: str, service: str) -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": GATEWAY}],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": service, "port": 80}]}],
        },
    }


#: the Gateway each tenant's HTTPRoutes of the bench attach to
GATEWAY = "bench"


def bench_gateway() -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": GATEWAY},
        "spec": {
            "gatewayClassName": "kubelb",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    }


def svc(name: str, app: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def deployment(name: str) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "echo", "image": "echo", "ports": [{"containerPort": 8080}]}
                    ]
                },
            },
        },
    }


def fresh_connections() -> aiohttp.ClientSession:
    """A client that opens a connection per request. A Gateway's routes are inline in its
    listener, which Envoy replaces on a change: a new connection gets the new one at once,
    while a kept one stays on the draining old one until Envoy closes it (seconds, as the
    drain time says), which would time the drain, not the change."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=5), connector=aiohttp.TCPConnector(force_close=True)
    )


class Bench:
    def __init__(
        self,
        layout: Layout,
        changes: int,
        burst: int = 20,
        domain: str = "bench.test",
        fill_kind: str = "ingress",
    ) -> None:
        self.session: aiohttp.ClientSession
        self.layout = layout
        self.domain = domain  # hosts are <name>.<tenant>.<domain>
        self.changes = changes
        self.burst = burst
        self.kube: dict[str, Kube] = {}
        self.http = f"http://127.0.0.1:{layout.envoy_http_port}"
        self.ns = f"bench-{os.getpid()}"
        self.present = 0
        self.services: set[int] = set()  # the fill's Services made (s<j>)
        self.fill_kind = fill_kind
        self.gateways: dict[str, str] = {}  # tenant -> its bench Gateway's http://address:80

    async def open(self) -> None:
        for c in self.layout.clusters:
            self.kube[c.name] = await Kube.from_file(self.layout.kubeconfig(c.name), c.name)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self.fresh = fresh_connections()
        try:
            await self.earlier_runs_gone()
        except BaseException:
            await self.close(keep=True)  # nothing of this run's is made yet
            raise
        for t in self.tenants:
            await self.kube[t].create(NAMESPACES, {"metadata": {"name": self.ns}})
            await self.kube[t].create(DEPLOYMENTS, deployment("echo"), self.ns)
            await self.kube[t].create(SERVICES, svc("echo", "echo"), self.ns)
            # Keeps the echo Service's NodePort twin and cluster alive between changes, so a
            # "route" change really only adds a route.
            pin = ingress("pin", f"pin.{t}.{self.domain}", "echo")
            await self.kube[t].create(INGRESSES, pin, self.ns)
            self.present += 1
        for t in self.tenants:
            await self.until(f"pin.{t}.{self.domain}", 200, timeout=120)
            await self.kube[t].create(GATEWAYS, bench_gateway(), self.ns)
        for t in self.tenants:
            self.gateways[t] = await self.gateway_address(t)

    async def earlier_runs_gone(self, timeout: float = 600) -> None:
        """Until the namespaces of earlier runs are deleted: kubelbd withdrawing their routes
        (a thousand, after a large run) would compete with the changes timed here. One that
        is not being deleted (left by `--keep`, or by a run that was killed) never goes on
        its own: that is an error at once, not a 10-minute wait."""

        async def gone() -> bool:
            for t in self.tenants:
                items, _ = await self.kube[t].list(NAMESPACES)
                for meta in (i["metadata"] for i in items):
                    if not meta["name"].startswith("bench-"):
                        continue
                    if not meta.get("deletionTimestamp"):
                        raise RuntimeError(
                            f"tenant {t}: namespace {meta['name']} is left from an earlier run"
                            " (--keep, or killed): delete it in every tenant first"
                        )
                    return False
            return True

        await _poll(gone, "earlier bench namespaces deleted", timeout=timeout)

    async def gateway_address(self, tenant: str) -> str:
        async def programmed() -> bool:
            gw = await self.kube[tenant].get(GATEWAYS, GATEWAY, self.ns)
            return bool((gw.get("status") or {}).get("addresses"))

        await _poll(programmed, f"the bench Gateway of {tenant}", timeout=120)
        gw = await self.kube[tenant].get(GATEWAYS, GATEWAY, self.ns)
        return f"http://{gw['status']['addresses'][0]['value']}:80"

    async def close(self, keep: bool = False) -> None:
        """The bench's namespace deleted in every tenant (unless `keep`: its routes stay, for
        `hack/bench heap` to look at what kubelbd holds for them)."""
        for t in self.tenants if not keep else ():
            await self.kube[t].delete(NAMESPACES, self.ns)
        await self.session.close()
        await self.fresh.close()
        for k in self.kube.values():
            await k.aclose()

    @property
    def tenants(self) -> list[str]:
        return [c.name for c in self.layout.tenant_clusters]

    async def status(self, host: str, base: str = "") -> int:
        """One request for `host`: to the shared listener on a kept connection, or to an
        address of its own (`base`: a Gateway's, a NodePort's) on a new one (see
        fresh_connections)."""
        try:
            url = (base or self.http) + "/"
            session = self.fresh if base else self.session
            async with session.get(url, headers={"Host": host}) as r:
                await r.read()
                return r.status
        except (TimeoutError, aiohttp.ClientError):
            return 0

    async def until(
        self,
        host: str,
        want: int,
        timeout: float = 60,
        base: str = "",
        seen: list[tuple[int, float]] | None = None,
    ) -> float:
        """When `host` first answers `want`; `seen` gets each other answer as it first came
        (its status and when), so a slow change shows which step it waited on."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(host, base)
            if status == want:
                return time.monotonic()
            if seen is not None and (not seen or seen[-1][0] != status):
                seen.append((status, time.monotonic()))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host} never answered {want}")
            # Poll at ~1 ms: tighter and the client itself eats a core of this 2-core machine.
            await asyncio.sleep(0.001)

    async def fill(self, target: int) -> None:
        """Bring the number of present routes (across tenants) up to `target`."""
        services = 100
        made = []
        while self.present < target:
            i = self.present
            tenant = self.tenants[i % len(self.tenants)]
            kube = self.kube[tenant]
            # Service j lives in tenant j % tenants, as does every route backed by it.
            j = i if i < services * len(self.tenants) else (
                (i % services) * len(self.tenants) + (i % len(self.tenants))
            )  # fmt: skip
            backing = f"s{j}"
            if j not in self.services:  # made when first used: the pins took s0.. before
                await kube.create(SERVICES, svc(backing, "echo"), self.ns)
                self.services.add(j)
            host = f"fill{i}.{tenant}.{self.domain}"
            if self.fill_kind == "httproute":
                await kube.create(HTTPROUTES, httproute(f"fill{i}", host, backing), self.ns)
            else:
                await kube.create(INGRESSES, ingress(f"fill{i}", host, backing), self.ns)
            made.append((tenant, host))
            self.present += 1
        # Converged when the last one is served (records are processed in order per tenant),
        # and quiet once every Ingress shows its address: the status writes that follow a bulk
        # change would otherwise compete with the changes being timed.
        for tenant, host in made[-len(self.tenants) :]:
            base = self.gateways[tenant] if self.fill_kind == "httproute" else ""
            await self.until(host, 200, timeout=300, base=base)
        await self.settled()

    async def settled(self, timeout: float = 600) -> None:
        """Until every Ingress shows its address, every HTTPRoute its parents, the bench
        Gateway counts every route attached (the last of the status writes a bulk change
        brings: a Gateway's attachedRoutes is written after its routes' parents) and every
        route's record is written: kubelbd serves a record before its write lands, so under
        a bulk change the statuses can be done while the record writes go on for seconds,
        and a change timed then waits behind them. The same for the records' own statuses
        (Programmed, as of their generation): written last, after a settling time and while
        no tenant status waits, they went on through the first changes timed after a fill of
        10,000."""
        deadline = time.monotonic() + timeout
        for t in self.tenants:
            while True:
                items, _ = await self.kube[t].list(INGRESSES, self.ns)
                routes, _ = await self.kube[t].list(HTTPROUTES, self.ns)
                gateway = await self.kube[t].get_or_none(GATEWAYS, GATEWAY, self.ns)
                listeners = ((gateway or {}).get("status") or {}).get("listeners") or []
                attached = sum(x.get("attachedRoutes", 0) for x in listeners)
                records, _ = await self.kube["mgmt"].list(ROUTES, namespace_of(t))
                ours = [r for r in records if r["metadata"]["name"].startswith(f"{self.ns}.")]
                if (
                    len(ours) == len(items) + len(routes)
                    and all(_programmed(r) for r in ours)
                    and all((i.get("status") or {}).get("loadBalancer", {}).get("ingress")
                            for i in items)
                    and all((r.get("status") or {}).get("parents") for r in routes)
                    and attached == len(routes)
                ):  # fmt: skip
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("Ingress statuses never settled")
                await asyncio.sleep(0.5)

    async def change(self, kind: str, n: int) -> float:
        """One change: a new Ingress (and, for `backend`, a new Service) until its first 200.
        Untimed after that: until kubelbd wrote its status, then its delete until the 404 and,
        for `backend`, until its NodePort twin is gone, so what follows does not race this
        change's trailing writes and clean-up."""
        tenant = self.tenants[n % len(self.tenants)]
        kube = self.kube[tenant]
        name = f"m{self.present}-{kind}-{n}"
        host = f"{name}.{tenant}.bench.test"
        service = "echo"
        if kind == "backend":
            service = f"b{self.present}-{n}"
            await kube.create(SERVICES, svc(service, "echo"), self.ns)
            # What the Service's creation sets off (its EndpointSlice, the node emulators)
            # is the user's earlier step: timed with the change, it delayed the Ingress's own
            # watch event by about 10 ms, which the watch floor does not include either.
            await asyncio.sleep(SETTLE)
        if kind == "httproute":
            return await self.route_change(tenant, name, host)
        start, wall = time.monotonic(), time.time()
        await kube.create(INGRESSES, ingress(name, host, service), self.ns)
        seen: list[tuple[int, float]] = []
        end = await self.until(host, 200, seen=seen if SAMPLES else None)
        if SAMPLES:
            steps = ", ".join(f"{s} at {(t - start) * 1000:.1f}" for s, t in seen)
            applied = await self.envoy_updated(tenant, service if kind == "backend" else "")
            print(f"   {host}: {steps or 'none'} before 200 at {(end - start) * 1000:.1f} ms; "
                  + ", ".join(f"{what} {(t - wall) * 1000:.1f}" for what, t in applied),
                  file=sys.stderr, flush=True)  # fmt: skip
            if kind == "backend":
                print(f"   {await self.cluster_stats(tenant, service)}", file=sys.stderr,
                      flush=True)  # fmt: skip
        await self.addressed(kube, name)
        await kube.delete(INGRESSES, name, self.ns)
        await self.until(host, 404)
        if kind == "backend":
            await self.gone(kube, twins.twin_name(service))
        return end - start

    async def envoy_updated(self, tenant: str, service: str) -> list[tuple[str, float]]:
        """When kubelbd's Envoy last took its host scopes and, with `service`, when it added
        that Service's twin's cluster (their config dump's `last_updated`, epoch seconds):
        read right after a change's first 200, the scopes' is that change's."""
        admin = f"{envoy_admin(self.layout)}/config_dump"
        asks = [("scopes applied", "dynamic_scoped_route_configs", "")]
        if service:
            prefix = re.escape(f"{tenant}/{self.ns}/{service}/") + ".*"
            asks.append(("cluster added", "dynamic_active_clusters", prefix))
        out = []
        for what, resource, regex in asks:
            params = {"resource": resource, **({"name_regex": regex} if regex else {})}
            async with self.session.get(admin, params=params) as r:
                configs = (await r.json()).get("configs") or [{}]
            stamp = configs[0].get("last_updated")
            if stamp:
                out.append((what, dt.datetime.fromisoformat(stamp).timestamp()))
        return out

    async def cluster_stats(self, tenant: str, service: str) -> str:
        """Envoy's non-zero health check, connection and request counters of the cluster of
        `service`'s twin (KUBELBD_BENCH_SAMPLES=1): why its first 200 came when it did. The
        filter walks every stat on Envoy's main thread: asked only after a change is timed."""
        prefix = f"cluster.{tenant}/{self.ns}/{service}/"
        url = f"{envoy_admin(self.layout)}/stats"
        async with self.session.get(url, params={"filter": re.escape(prefix)}) as r:
            text = await r.text()
        wanted = (
            "health_check.",
            "upstream_cx_connect",
            "upstream_rq_",
            "retry",
            "outlier_detection.ejections_active",
            "upstream_cx_destroy_remote",
        )
        found = [
            line.removeprefix(prefix) for line in text.splitlines()
            if any(w in line for w in wanted) and line.rsplit(": ", 1)[-1].isdigit()
            and not line.endswith(": 0")
        ]  # fmt: skip
        return "; ".join(found) or f"no counters for {prefix}"

    async def route_change(self, tenant: str, name: str, host: str) -> float:
        """A new HTTPRoute on the tenant's bench Gateway until its first 200 there; untimed
        after that: its status.parents, its delete until the 404."""
        kube, base = self.kube[tenant], self.gateways[tenant]
        start = time.monotonic()
        await kube.create(HTTPROUTES, httproute(name, host, "echo"), self.ns)
        end = await self.until(host, 200, base=base)

        async def reported() -> bool:
            route = await kube.get(HTTPROUTES, name, self.ns)
            return bool((route.get("status") or {}).get("parents"))

        await _poll(reported, f"status.parents of {name}")
        await kube.delete(HTTPROUTES, name, self.ns)
        await self.until(host, 404, base=base)
        return end - start

    async def burst_change(self, n: int) -> float:
        """`burst` new Ingresses (existing backend) written at once, spread over the tenants,
        until the last one answers 200; untimed clean-up as for a single change."""
        made = []
        for i in range(self.burst):
            tenant = self.tenants[i % len(self.tenants)]
            name = f"m{self.present}-burst-{n}-{i}"
            made.append((self.kube[tenant], name, f"{name}.{tenant}.bench.test"))
        start = time.monotonic()
        await asyncio.gather(
            *(kube.create(INGRESSES, ingress(name, host, "echo"), self.ns)
              for kube, name, host in made)
        )  # fmt: skip
        ends = await asyncio.gather(*(self.until(host, 200) for _, _, host in made))
        for kube, name, _ in made:
            await self.addressed(kube, name)
        await asyncio.gather(*(kube.delete(INGRESSES, name, self.ns) for kube, name, _ in made))
        for _, _, host in made:
            await self.until(host, 404)
        return max(ends) - start

    async def addressed(self, kube: Kube, name: str) -> None:
        """Wait for kubelbd's last step of a change, the Ingress status, so its status and
        record writes do not land in the floor samples that follow."""

        async def has_address() -> bool:
            obj = await kube.get(INGRESSES, name, self.ns)
            return bool((obj.get("status") or {}).get("loadBalancer", {}).get("ingress"))

        await _poll(has_address, f"{name} to get its address")

    async def gone(self, kube: Kube, service: str) -> None:
        async def deleted() -> bool:
            return await kube.get_or_none(SERVICES, service, self.ns) is None

        await _poll(deleted, f"{service} to be deleted")


def _programmed(record: Obj) -> bool:
    """Whether the record's status says Programmed for its current generation."""
    generation = record["metadata"].get("generation")
    return any(
        c.get("type") == "Programmed" and c.get("observedGeneration") == generation
        for c in (record.get("status") or {}).get("conditions") or []
    )


async def _poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    """Untimed waits between measurements: every 5 ms, with a deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        await asyncio.sleep(0.005)


class WatchFloor:
    """An Ingress of another class (kubelbd ignores it) written on a tenant API server, timed
    until its watch event arrives."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.kube = bench.kube[bench.tenants[0]]
        self.events: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self.samples = 0

    async def __aenter__(self) -> WatchFloor:
        _, rv = await self.kube.list(INGRESSES, self.bench.ns, limit=1)
        self._task = asyncio.create_task(self._watch(rv))
        await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()

    async def _watch(self, rv: str) -> None:
        async for kind, obj in self.kube.watch(INGRESSES, rv, self.bench.ns):
            if kind == "ADDED":
                await self.events.put((obj["metadata"]["name"], time.monotonic()))

    async def sample(self, count: int = 1) -> float:
        """`count` writes at once, until the watch has delivered the last of them."""
        self.samples += 1
        names = {f"floor{self.bench.present}-{self.samples}-{i}" for i in range(count)}
        start = time.monotonic()
        await asyncio.gather(
            *(self.kube.create(INGRESSES, ingress(n, f"{n}.x", "echo", "none"), self.bench.ns)
              for n in names)
        )  # fmt: skip
        waiting, last = set(names), start
        while waiting:
            got, at = await self.events.get()
            if got in waiting:
                waiting.discard(got)
                last = at
        await asyncio.gather(*(self.kube.delete(INGRESSES, n, self.bench.ns) for n in names))
        return last - start


class NodePortFloor:
    """For a `backend` change: a NodePort Service made on the tenant API server directly, timed
    until its port on the tenant's first node answers (the fleet's kube-proxy emulation has
    programmed it). kubelbd's twin of a new backend is that same create, and the first 200
    through Envoy waits for that same programming: a part of the change no proxy can skip."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.samples = 0

    async def sample(self, n: int) -> float:
        self.samples += 1
        tenant = self.bench.tenants[n % len(self.bench.tenants)]
        kube = self.bench.kube[tenant]
        node = self.bench.layout.cluster(tenant).nodes[0].ip
        name = f"floor-np{self.bench.present}-{self.samples}"
        service = svc(name, "echo")
        service["spec"]["type"] = "NodePort"
        start = time.monotonic()
        made = await kube.create(SERVICES, service, self.bench.ns)
        at = f"{node}:{made['spec']['ports'][0]['nodePort']}"
        end = await self.bench.until(at, 200, timeout=30, base=f"http://{at}")
        await kube.delete(SERVICES, name, self.bench.ns)
        await self.bench.until(at, 0, base=f"http://{at}")  # closed: no answer at all
        return end - start


class EnvoyFloor:
    """A second Envoy on a copy of kubelbd's files, clusters and scopes: serve one more host
    scope → 200. For a `backend` change, one more cluster is served first, on the same
    stream (as kubelbd does, envoy/ads.py)."""

    def __init__(self, layout: Layout, gateway_listener: str = "") -> None:
        self.layout = layout
        self.samples = 0
        self.gateway_listener = gateway_listener  # the bench Gateway's, kept on its own port
        self.gateway_port = layout.base_port + 97
        self.tables: dict[Path, dict[str, Any]] = {}  # route table files, as copied
        self.hosts: dict[Path, protos.Remembered] = {}

    async def __aenter__(self) -> EnvoyFloor:
        layout = self.layout
        src = lb.config_dir(layout)
        # The same kind of filesystem as kubelbd's config volume.
        self._dir = tempfile.TemporaryDirectory(prefix="bench-envoy-", dir=src.parent.parent)
        dst = self.dst = Path(self._dir.name)
        self.port, admin = layout.base_port + 95, layout.base_port + 96
        self.admin = admin
        lds = config_copy(layout, dst, admin, self.port)
        self.lds = self._own_listeners(lds)
        (dst / "lds.pb").write_bytes(_encode(self.lds, self.lds["version_info"]))
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        # kubelbd's clusters and scopes as its Envoy holds them, served by this Envoy's own
        # ADS server (the copied bootstrap names the socket in `dst`).
        self.ads = DiscoveryServer(dst / ADS_SOCKET)
        await self.ads.start()
        self.clusters = await self._clusters_of_kubelbd(src, dst)
        self.ads.serve(CLUSTER, {c["name"]: ("copy", protos.resource(c)) for c in self.clusters})
        self.ads.serve(SCOPED_ROUTE, await self._scopes_of_kubelbd())
        self.proc = await asyncio.create_subprocess_exec(
            envoy_binary(), "-c", str(dst / "bootstrap.yaml"), "--disable-hot-restart",
            "--concurrency", "2", "-l", "error",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.fresh = fresh_connections()
        deadline = time.monotonic() + 60
        while await self.status("nothing.invalid") != 404:
            if time.monotonic() > deadline:
                raise TimeoutError("second Envoy did not start")
            await asyncio.sleep(0.05)
        self.cluster = _some_cluster(self.clusters)
        self.template = next(c for c in self.clusters if c["name"] == self.cluster)
        return self

    async def _dump(self, resource: str) -> list[dict[str, Any]]:
        """One resource of kubelbd's Envoy's config dump."""
        url = f"{envoy_admin(self.layout)}/config_dump?resource={resource}"
        async with self.session.get(url) as r:
            dump = await r.json(content_type=None)
        configs: list[dict[str, Any]] = dump.get("configs", [])
        return configs

    async def _clusters_of_kubelbd(self, src: Path, dst: Path) -> list[dict[str, Any]]:
        """Every cluster kubelbd's Envoy holds, with its paths moved to `dst`."""
        text = json.dumps([c["cluster"] for c in await self._dump("dynamic_active_clusters")])
        clusters: list[dict[str, Any]] = json.loads(text.replace(str(src), str(dst)))
        return clusters

    async def _scopes_of_kubelbd(self) -> dict[str, tuple[str, bytes] | None]:
        """Every scope kubelbd's Envoy holds (its admin's config dump), encoded to serve."""
        scopes: dict[str, tuple[str, bytes] | None] = {}
        for item in await self._dump("dynamic_scoped_route_configs"):
            for scope in item.get("scoped_route_configs", []):
                scopes[scope["name"]] = ("copy", protos.resource(scope))
        return scopes

    def _own_listeners(self, lds: dict[str, Any]) -> dict[str, Any]:
        """The copy's listeners without those on pool addresses (they would share the real
        ones' sockets), but the bench Gateway's, on a port of this Envoy's own."""
        kept = []
        for listener in lds["resources"]:
            address = listener.get("address", {}).get("socket_address", {})
            if listener["name"] == self.gateway_listener:
                address.update({"address": "127.0.0.1", "port_value": self.gateway_port})
            elif str(address.get("address", "")).startswith("127.0.200."):
                continue
            kept.append(listener)
        return {**lds, "resources": kept}

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.fresh.close()
        self.proc.terminate()
        await self.proc.wait()
        await self.ads.stop()
        self._dir.cleanup()

    async def status(self, host: str, port: int = 0) -> int:
        try:
            url = f"http://127.0.0.1:{port or self.port}/"
            session = self.fresh if port else self.session
            async with session.get(url, headers={"Host": host}) as r:
                await r.read()
                return r.status
        except (TimeoutError, aiohttp.ClientError):
            return 0

    async def change(self, kind: str, count: int = 1) -> float:
        """One change of `kind` (`burst`: `count` route changes in one response), timed from
        the new cluster's serving (for `backend`) or the scopes' until every new host answers
        200. The scopes and clusters are put back afterwards, untimed, so every sample starts
        from kubelbd's configuration as it was copied."""
        n = self.samples = self.samples + 1
        hosts = [f"floor{n}-{i}.envoy.test" for i in range(count)]
        if kind == "httproute":
            return await self.listener_change(n, hosts[0])
        target = self.cluster
        cluster: dict[str, tuple[str, bytes] | None] = {}
        if kind == "backend":
            target = f"{self.cluster}-floor{n}"
            new = json.loads(json.dumps(self.template))
            new["name"] = new["load_assignment"]["cluster_name"] = target
            cluster[target] = (f"f{n}", protos.resource(new))
        scopes: dict[str, tuple[str, bytes] | None] = {}
        for host in hosts:
            route = {"match": {"prefix": "/"}, "route": {"cluster": target}}
            vhost = {"name": f"floor/{host}", "domains": [host], "routes": [route]}
            scopes[host_scope_name(host)] = (f"f{n}", protos.resource(host_scope(host, vhost)))
        start = time.monotonic()
        if cluster:
            self.ads.serve(CLUSTER, cluster)
        self.ads.serve(SCOPED_ROUTE, scopes)
        for host in hosts:
            await self.until(host, 200, start + 30, poll=0.001)
        took = time.monotonic() - start
        await self.restore(hosts, list(scopes), list(cluster))
        return took

    async def listener_change(self, n: int, host: str) -> float:
        """The bench Gateway's routes with one more virtual host, as kubelbd writes them for
        a new HTTPRoute: its route table file when its chain has one (envoy/gateway.py), else
        its listener; until it answers 200; then the copy's files back, untimed."""
        lds = json.loads(json.dumps(self.lds))
        listener = next(x for x in lds["resources"] if x["name"] == self.gateway_listener)
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        vhost = {
            "name": host,
            "domains": [host],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": self.cluster}}],
        }
        hosts = None
        if "rds" in manager:
            path = self.dst / "rds" / f"{manager['rds']['route_config_name']}.pb"
            original = self.tables.get(path) or self.tables.setdefault(path, _read(path))
            table = original["resources"][0]
            # Shallow copies: the unchanged hosts stay the same objects, so their bytes are
            # encoded once for the whole series, as kubelbd's own encoder does (untimed).
            changed_table = {**table, "virtual_hosts": [*table.get("virtual_hosts", []), vhost]}
            changed = {**original, "resources": [changed_table]}
            hosts = self.hosts.setdefault(path, protos.Remembered())
        else:
            path, original, changed = self.dst / "lds.pb", self.lds, lds
            manager["route_config"].setdefault("virtual_hosts", []).append(vhost)
        data = _encode(changed, f"f{n}", hosts)
        restored = _encode(original, f"r{n}", hosts)
        start = time.monotonic()
        write_atomically(path, data)
        await self.until(host, 200, start + 30, poll=0.001, port=self.gateway_port)
        took = time.monotonic() - start
        write_atomically(path, restored)
        await self.until(host, 404, time.monotonic() + 30, poll=0.005, port=self.gateway_port)
        return took

    async def restore(self, hosts: list[str], scopes: list[str], clusters: list[str]) -> None:
        """Back to the copied configuration (the scopes and the new cluster gone), and wait
        until Envoy has it."""
        self.ads.serve(SCOPED_ROUTE, dict.fromkeys(scopes))
        generation = self.ads.serve(CLUSTER, dict.fromkeys(clusters))
        deadline = time.monotonic() + 30
        for host in hosts:
            await self.until(host, 404, deadline, poll=0.005)
        if not await self.ads.wait_applied(generation, deadline - time.monotonic()):
            raise TimeoutError("the restored clusters were not applied")

    async def until(
        self, host: str, code: int, deadline: float, poll: float, port: int = 0
    ) -> None:
        """Until the floor Envoy answers `code` for `host` (by `deadline`, monotonic)."""
        while await self.status(host, port) != code:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}: still no {code}")
            await asyncio.sleep(poll)


def config_copy(layout: Layout, dst: Path, admin: int, http_port: int = 0) -> dict[str, Any]:
    """kubelbd's files copied into `dst` for a second Envoy: the route tables as they are,
    the bootstrap with `admin` for its admin port, and the listener file returned in its JSON
    form (`_read`), every path moved to `dst` and, with `http_port`, the plain HTTP
    listener's port made that one, for the caller to change and write."""
    src = lb.config_dir(layout)
    shutil.copytree(src / "rds", dst / "rds")
    moves = [(str(src), str(dst))]
    if http_port:
        moves.append((f'"port_value": {layout.envoy_http_port}', f'"port_value": {http_port}'))
    text = json.dumps(_read(src / "lds.pb"))
    for old, new in moves:
        text = text.replace(old, new)
    boot = (src / "bootstrap.yaml").read_text().replace(str(src), str(dst))
    boot = boot.replace(f"port_value: {layout.envoy_admin_port}", f"port_value: {admin}")
    (dst / "bootstrap.yaml").write_text(boot)
    lds: dict[str, Any] = json.loads(text)
    return lds


def _read(path: Path) -> dict[str, Any]:
    """A file of kubelbd's (a DiscoveryResponse) in its JSON form."""
    return protos.read_file(path.read_bytes())


def _encode(doc: dict[str, Any], version: str, hosts: protos.Remembered | None = None) -> bytes:
    """A file's JSON form (`_read`) as Envoy reads it, with version `version`."""
    return protos.discovery_response(version, [protos.resource(r, hosts) for r in doc["resources"]])


def _some_cluster(clusters: list[dict[str, Any]]) -> str:
    for c in clusters:
        if "/echo/" in c["name"] and c.get("load_assignment", {}).get("endpoints"):
            return str(c["name"])
    raise RuntimeError("no echo cluster in kubelbd's Envoy")


def ensure_fleet() -> Layout:
    """The running fleet (reused, like the tests do), or a new one."""
    if subprocess.run([FLEET, "status"], capture_output=True).returncode != 0:
        subprocess.run([FLEET, "down"], capture_output=True)
        subprocess.run([FLEET, "up"], check=True)
    state = State.load(fleet_dir() / "state.json")
    assert state is not None
    return Layout(state.tenants, state.base_port, fleet_dir(), state.replicas)


async def run(
    layout: Layout,
    scales: list[int],
    changes: int,
    kinds: list[str],
    burst: int = 20,
    fill: str = "ingress",
    keep: bool = False,
) -> None:
    bench = Bench(layout, changes, burst, fill_kind=fill)
    await bench.open()
    rows: list[str] = []
    try:
        await bench.until("never.bench.test", 404)
        for scale in scales:
            await bench.fill(scale)
            print(f"-- {bench.present} routes present; {memory(layout)}", flush=True)
            for kind in kinds:
                rows += await measure(bench, kind)
    finally:
        await bench.close(keep)
        if keep:
            print(f"-- kept: namespace {bench.ns} in every tenant", flush=True)
    print("\n| series | n | median ms | p99 ms | min ms | max ms |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


def memory(layout: Layout) -> str:
    """kubelbd's and its Envoy's RSS (replica 1), read once a scale is filled."""
    kubelbd, envoy = proc_rss_kib(kubelbd_pid()) / 1024, proc_rss_kib(lb.envoy_pid(layout)) / 1024
    return f"kubelbd RSS {kubelbd:.0f} MiB, Envoy RSS {envoy:.0f} MiB"


async def measure(bench: Bench, kind: str) -> list[str]:
    """Changes of one kind, each followed by a sample of both floors: the three series see the
    same machine (a floor measured minutes apart from the changes can differ by 2x at small
    scales on this 2-core machine, as other work comes and goes). A pause before a change and
    before the floors lets the previous step's background work (the tenant's controllers,
    the node emulators) finish, so each is measured alone, as the floor is defined."""
    label = f"{bench.present} routes"
    what = f"burst of {bench.burst}" if kind == "burst" else f"{kind} change"
    live = Series(f"{label}, {what}")
    watch = Series(f"floor: API write → watch event ({label}, {what})")
    envoy = Series(f"floor: Envoy applies the same files ({label}, {what})")
    nodeport = Series(f"floor: a NodePort Service made until it answers ({label}, {what})")
    nf = NodePortFloor(bench)
    count = bench.burst if kind == "burst" else 1
    listener = f"gw/{bench.tenants[0]}/{bench.ns}.{GATEWAY}.gateway/80"
    pid, cpu = kubelbd_pid(), 0.0
    async with WatchFloor(bench) as wf, EnvoyFloor(bench.layout, listener) as ef:
        for n in range(bench.changes):
            await asyncio.sleep(SETTLE)
            started = dt.datetime.now(dt.UTC)
            before = cpu_seconds(pid)
            if kind == "burst":
                live.values.append(await bench.burst_change(n))
            else:
                live.values.append(await bench.change(kind, n))
            cpu += cpu_seconds(pid) - before
            if SAMPLES:  # where a slow one falls, to read kubelbd's log beside it
                print(f"   sample {n}: {started:%H:%M:%S.%f} {live.values[-1] * 1000:.1f} ms",
                      file=sys.stderr, flush=True)  # fmt: skip
            await asyncio.sleep(SETTLE)
            watch.values.append(await wf.sample(count))
            envoy.values.append(await ef.change("route" if kind == "burst" else kind, count))
            if kind == "backend":
                await asyncio.sleep(SETTLE)
                nodeport.values.append(await nf.sample(n))
    rows = [live.row(), watch.row(), envoy.row()]
    floor = statistics.median(watch.values) + statistics.median(envoy.values)
    how = "median watch + median Envoy apply"
    if nodeport.values:
        # The twin is made while Envoy applies the route: the slower of the two counts.
        rows.append(nodeport.row())
        floor = statistics.median(watch.values) + max(
            statistics.median(envoy.values), statistics.median(nodeport.values)
        )
        how = "median watch + the slower median of Envoy apply and NodePort made"
    ratio = statistics.median(live.values) / floor
    for row in rows:
        print(row, flush=True)
    print(f"   {kind} floor ({how}): {floor * 1000:.1f} ms; change / floor: {ratio:.2f}x",
          flush=True)  # fmt: skip
    # Its whole cycle: the change, its statuses and DNS, its removal (not the floors').
    print(f"   kubelbd CPU a {what}, its whole cycle: "
          f"{cpu / bench.changes * 1000:.0f} ms", flush=True)  # fmt: skip
    return rows
