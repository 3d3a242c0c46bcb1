"""High availability: two kubelbd+Envoy replicas, one Lease.

Every replica serves every route from the records; only the Lease holder writes. Killing the
leader mid-churn hands over within the lease duration, loses no route, moves no allocation
or NodePort, and fails no request to an established route through either replica. A rolling
restart of one replica drains its Envoy: no failed request through the other, no established
connection cut through its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anyio
import pytest
from kubefleet.fleet import State
from kubefleet.layout import ROOT, Layout, Replica, fleet_dir

from kubelbd.kube import Kube
from kubelbd.kube.lease import Leadership, LeaseElector, LeaseSettings
from kubelbd.objects import INGRESSES, LEASES, SERVICES

from .support import (
    FleetHandle,
    _http_exchange,
    backend,
    create_namespace,
    delete_namespace,
    deploy_app,
    eventually,
    free_port,
    http_get,
    ingress_obj,
    rule,
    run_fleet,
    service,
    unique,
)

pytestmark = pytest.mark.e2e

NAMESPACE = "kubelb"
LEASE_DURATION = 15.0  # kubelbd's default, which the fleet runs with
RETRY_PERIOD = 2.0


def replicas(layout: Layout) -> tuple[Replica, ...]:
    if layout.replicas < 2:
        pytest.skip("needs `hack/fleet up --replicas 2` (hack/test brings the fleet up so)")
    return layout.replica_set


async def holder(mgmt: Kube) -> str:
    lease = await mgmt.get(LEASES, "kubelbd", NAMESPACE)
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


async def served_by(r: Replica, host: str) -> bool:
    status, body, _ = await http_get(f"http://127.0.0.1:{r.http_port}/", host=host)
    assert status == 200, f"{r.name} {host}: {status} {str(body)[:100]}"
    return True


# ---- the elector on its own, against the real API server --------------------------------------


async def test_one_leader_at_a_time_and_a_released_lease_passes_at_once(
    fleet: FleetHandle,
) -> None:
    mgmt = fleet.kube["mgmt"]
    name = unique("lease")

    def elector(identity: str) -> tuple[LeaseElector, Leadership]:
        lead = Leadership()
        settings = LeaseSettings(NAMESPACE, identity, name, 3.0, 2.0, 0.2)
        return LeaseElector(mgmt, settings, lead), lead

    a, lead_a = elector("a")
    b, lead_b = elector("b")
    try:
        async with anyio.create_task_group() as tg:
            scope_a = anyio.CancelScope()

            async def run_a() -> None:
                with scope_a:
                    await a.run()

            tg.start_soon(run_a)
            await eventually(lambda: _true(lead_a.leading), 10, 0.05, "a to lead")
            tg.start_soon(b.run)
            await eventually(lambda: _true(lead_b.decided.is_set()), 10, 0.05, "b to decide")
            # b sees a live holder for longer than a lease duration: it never takes over.
            end = time.monotonic() + 4.0
            while time.monotonic() < end:
                assert lead_a.leading and not lead_b.leading
                await asyncio.sleep(0.1)
            scope_a.cancel()  # a stops: it releases the Lease on its way out
            start = time.monotonic()
            await eventually(lambda: _true(lead_b.leading), 10, 0.05, "b to lead")
            assert time.monotonic() - start < 1.5, "a released Lease must pass within a retry"
            assert not lead_a.leading
            lease = await mgmt.get(LEASES, name, NAMESPACE)
            assert lease["spec"]["holderIdentity"] == "b"
            assert lease["spec"]["leaseTransitions"] >= 1
            tg.cancel_scope.cancel()
    finally:
        await mgmt.delete(LEASES, name, NAMESPACE)


async def _true(value: bool) -> bool:
    return value


# ---- the fleet's replicas -----------------------------------------------------------------------


@dataclass
class Load:
    """Keep-alive HTTP/1.1 clients, two per (replica, host), each request on the connection
    it already has. A failure is a request that got no response or a 5xx. A connection the
    server closed after a response (`Connection: close`, a drain) is left, and a new one is
    made only once the replica says it is ready (its /readyz), as a health-checked load
    balancer in front of the replicas does: a replica that drains gets no new connection.
    A refused connect is counted apart: nothing was established."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    refused: int = 0

    async def client(self, r: Replica, host: str) -> None:
        check = False
        while True:
            if check and not await _ready(r):
                await asyncio.sleep(0.05)
                continue
            check = True
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", r.http_port)
            except OSError:
                self.refused += 1
                continue
            try:
                while True:
                    headers: dict[str, str] = {}
                    try:
                        async with asyncio.timeout(5):
                            status, body = await _http_exchange(
                                reader, writer, host, "/ha", headers
                            )
                    except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                        self.failures.append(f"{_now()} {r.name} {host}: {e!r}")
                        break
                    if status >= 500:
                        self.failures.append(f"{_now()} {r.name} {host}: {status} {body!r:.80}")
                    else:
                        self.ok += 1
                    if headers.get("connection", "").lower() == "close":
                        break
                    await asyncio.sleep(0.01)
            finally:
                writer.close()


def _now() -> str:
    return time.strftime("%H:%M:%S")


async def _ready(r: Replica) -> bool:
    return await _status(f"http://127.0.0.1:{r.health_port}/readyz") == 200


@contextlib.asynccontextmanager
async def load(targets: list[tuple[Replica, str]]) -> AsyncIterator[Load]:
    result = Load()
    tasks = [asyncio.create_task(result.client(r, h)) for r, h in targets for _ in range(2)]
    try:
        yield result
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def churn(fleet: FleetHandle, ns: str) -> AsyncIterator[list[str]]:
    """Ingresses created (and the older ones deleted) back to back while the test runs;
    yields the hosts of those that stand."""
    kube = fleet.kube["alpha"]
    standing: list[str] = []

    async def run() -> None:
        i = 0
        while True:
            i += 1
            h = f"churn-{i}.{ns}.example.test"
            await kube.create(
                INGRESSES, ingress_obj(f"churn-{i}", [rule(h, ("/", "Prefix", backend("app")))]),
                ns,
            )  # fmt: skip
            standing.append(h)
            if len(standing) > 5:
                old = standing.pop(0)
                await kube.delete(INGRESSES, old.split(".")[0], ns)
            await asyncio.sleep(0.3)

    task = asyncio.create_task(run())
    try:
        yield standing
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def fixed_state(fleet: FleetHandle, ns: str) -> tuple[object, object]:
    """What must never move across a failover: the LoadBalancer's address, the twin's
    nodePort."""
    kube = fleet.kube["alpha"]
    lb = await kube.get(SERVICES, "l4", ns)
    twin = await kube.get(SERVICES, "kubelb-app", ns)
    return (
        (lb.get("status") or {}).get("loadBalancer", {}).get("ingress"),
        [p["nodePort"] for p in twin["spec"]["ports"]],
    )


@pytest.fixture
async def app(fleet: FleetHandle) -> AsyncIterator[tuple[str, str]]:
    """(namespace, established host) in alpha, served by every replica; an L4 Service too."""
    ns = unique("ha")
    kube = fleet.kube["alpha"]
    await create_namespace(kube, ns)
    await deploy_app(kube, ns, "app", replicas=3)
    h = f"steady.{ns}.example.test"
    await kube.create(INGRESSES, ingress_obj("app", [rule(h, ("/", "Prefix", backend("app")))]), ns)
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    await kube.create(SERVICES, service("l4", ports, "LoadBalancer", selector={"app": "app"}), ns)
    for r in fleet.layout.replica_set:
        await eventually(lambda r=r: served_by(r, h), 30, what=f"{h} on {r.name}")  # type: ignore[misc]
    await eventually(lambda: fixed_state(fleet, ns), 30, what="allocation and twin")

    async def allocated() -> bool:
        address, _ = await fixed_state(fleet, ns)
        return bool(address)

    await eventually(allocated, 30, what="the LoadBalancer's address")
    yield ns, h
    await delete_namespace(kube, ns)


def _kill(name: str) -> None:
    state = State.load(fleet_dir() / "state.json")
    assert state is not None
    os.kill(state.procs[name].pid, signal.SIGKILL)


async def test_killing_the_leader_mid_churn_hands_over_and_loses_nothing(
    fleet: FleetHandle, app: tuple[str, str]
) -> None:
    first, second, *_ = replicas(fleet.layout)
    ns, h = app
    mgmt = fleet.kube["mgmt"]
    assert await holder(mgmt) == first.name
    before = await fixed_state(fleet, ns)
    try:
        async with load([(first, h), (second, h)]) as traffic, churn(fleet, ns) as standing:
            await eventually(lambda: _true(traffic.ok > 50 and len(standing) > 2), 30, 0.05,
                             "traffic and churn under way")  # fmt: skip
            await asyncio.to_thread(_kill, first.name)
            killed = time.monotonic()

            async def taken_over() -> bool:
                return await holder(mgmt) == second.name

            await eventually(taken_over, LEASE_DURATION + 10, 0.1, "the follower to lead")
            took = time.monotonic() - killed
            assert took <= LEASE_DURATION + RETRY_PERIOD + 1, f"takeover after {took:.1f} s"
            # The new leader writes: a route created now is served (by the leader's Envoy;
            # the dead leader's Envoy keeps its last files until its kubelbd is back).
            new = standing[-1]
            await eventually(lambda: served_by(second, new), 30, what=f"{new} on {second.name}")
            await run_fleet("start", first.name)  # as the kubelet restarts a container
        assert await holder(mgmt) == second.name, "the restarted replica must follow"
        for host in list(standing):
            for r in (first, second):
                await eventually(lambda r=r, host=host: served_by(r, host), 30,  # type: ignore[misc]
                                 what=f"{host} on {r.name}")  # fmt: skip
        assert await fixed_state(fleet, ns) == before, "no allocation or NodePort may move"
        assert traffic.ok > 100
        assert traffic.failures == [], traffic.failures[:5]
    finally:
        # The fleet as it was: replica 1 leads (its Envoy is the one ACME validates against).
        # Replica 2 stays stopped until then: restarted at once, it could take the Lease it
        # released back before replica 1's next try (a retry period later) came.
        if await holder(mgmt) != first.name:
            await run_fleet("stop", second.name)
            try:

                async def back() -> bool:
                    return await holder(mgmt) == first.name

                await eventually(back, LEASE_DURATION + 10, 0.2, "replica 1 to lead again")
            finally:
                await run_fleet("start", second.name)


async def test_rolling_restart_of_a_replica_fails_no_request(
    fleet: FleetHandle, app: tuple[str, str]
) -> None:
    first, second, *_ = replicas(fleet.layout)
    _, h = app
    async with load([(first, h)]) as other, load([(second, h)]) as own:
        await eventually(lambda: _true(own.ok > 50), 30, 0.05, "traffic under way")
        ok_before = own.ok
        await run_fleet("restart", second.name)
        await eventually(lambda: served_by(second, h), 30, what=f"{h} on {second.name}")
        await eventually(lambda: _true(own.ok > ok_before + 50), 30, 0.05, "traffic after")
    assert other.failures == [], other.failures[:5]
    assert own.failures == [], own.failures[:5]
    assert own.ok > ok_before, "the restarted replica serves again"
    assert other.ok > 100


def _replica_argv(r: Replica, base: list[str], log: Path) -> list[str]:
    """Replica 1's command line, for another replica `r` on its own ports and volume, whose
    Envoy is its own to stop (no --keep-envoy), as in a pod."""
    lay_values = {
        "--config-dir": str(log.parent / "envoy"),
        "--http-listen": f"127.0.0.1:{r.http_port}",
        "--https-listen": f"127.0.0.1:{r.https_port}",
        "--envoy-admin": f"127.0.0.1:{r.admin_port}",
        "--health-listen": f"127.0.0.1:{r.health_port}",
        "--identity": "sigterm",
        "--envoy-log": str(log.parent / "envoy.log"),
    }
    out = []
    for a in base:
        flag = a.partition("=")[0]
        if flag == "--keep-envoy":
            continue
        out.append(f"{flag}={lay_values[flag]}" if flag in lay_values else a)
    return out


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


async def _status(url: str) -> int:
    try:
        status, _, _ = await http_get(url, timeout=2)
    except (OSError, aiohttp.ClientError, TimeoutError):
        return 0
    return status


async def test_sigterm_fails_readiness_then_drains_envoy_then_exits(
    fleet: FleetHandle, app: tuple[str, str], tmp_path: Path
) -> None:
    _, h = app
    state = State.load(fleet_dir() / "state.json")
    assert state is not None
    r = Replica(9, *(free_port() for _ in range(4)))
    log = tmp_path / "kubelbd.log"
    proc = await asyncio.to_thread(_spawn, _replica_argv(r, state.procs["kubelbd"].argv, log), log)
    readyz = f"http://127.0.0.1:{r.health_port}/readyz"
    envoy_ready = f"http://127.0.0.1:{r.admin_port}/ready"
    try:
        await eventually(lambda: _is(_status(readyz), 200), 60, 0.1, "the replica ready")
        await eventually(lambda: served_by(r, h), 30, what=f"{h} on the new replica")
        async with load([(r, h)]) as own:
            await eventually(lambda: _true(own.ok > 50), 30, 0.05, "traffic under way")
            proc.send_signal(signal.SIGTERM)
            # Readiness fails first, then Envoy's own health check (its drain began) ...
            await eventually(lambda: _is(_status(readyz), 503), 2, 0.02, "readiness to fail")
            await eventually(lambda: _is(_status(envoy_ready), 503), 2, 0.02, "Envoy draining")
            # ... and only after the drain does the replica exit, taking its Envoy along.
            exited = await asyncio.to_thread(proc.wait, 30)
        assert exited == 0, log.read_text()[-2000:]
        assert await _status(envoy_ready) == 0, "Envoy still answers after kubelbd exited"
        assert own.failures == [], own.failures[:5]
        assert own.ok > 50
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _is(status: Awaitable[int], want: int) -> bool:
    return await status == want
