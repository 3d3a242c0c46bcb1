"""Helpers shared by end-to-end tests: clients per cluster, polling, raw traffic."""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from kubefleet import certs
from kubefleet.layout import ROOT, Layout

from kubelbd.dataplane.reporter import RECORD_SETTLE
from kubelbd.dataplane.reporter import RECORD_YIELD as STATUS_YIELD
from kubelbd.kube import ApiError, Kube
from kubelbd.objects import DEPLOYMENTS, INGRESSES, NAMESPACES, SERVICES, Obj
from kubelbd.records.names import ROUTES, TENANTS
from kubelbd.tenant.records import RECORD_YIELD as WRITE_YIELD

T = TypeVar("T")

FLEET = str(ROOT / "hack" / "fleet")

#: How long a record's status may take by design while tenant objects' statuses are still to
#: be written (on a fleet other tests keep busy, say): a Route record's write yields to them up
#: to WRITE_YIELD, then its status settles and yields up to RECORD_SETTLE + STATUS_YIELD more.
#: Polls of a record's status allow that, and the usual 30 s on top (a poll of 30 s alone
#: failed when the suite's other objects kept the tenants' status writers busy).
RECORD_STATUS_TIMEOUT = WRITE_YIELD + RECORD_SETTLE + STATUS_YIELD + 30.0


class FleetHandle:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.kube: dict[str, Kube] = {}

    async def open(self) -> None:
        for c in self.layout.clusters:
            self.kube[c.name] = await Kube.from_file(self.layout.kubeconfig(c.name), c.name)

    async def aclose(self) -> None:
        for k in self.kube.values():
            await k.aclose()

    @property
    def tenants(self) -> list[str]:
        return [c.name for c in self.layout.tenant_clusters]

    def node_ips(self, cluster: str) -> list[str]:
        return [n.ip for n in self.layout.cluster(cluster).nodes]


def fleet(*args: str) -> None:
    """Run hack/fleet; fail the test with its error line if it fails."""
    r = subprocess.run([FLEET, *args], text=True, capture_output=True)
    assert r.returncode == 0, f"hack/fleet {' '.join(args)}: {r.stderr.strip()}"


async def run_fleet(*args: str) -> None:
    await asyncio.to_thread(fleet, *args)


async def eventually(
    check: Callable[[], Awaitable[T]],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll until `check` returns a truthy value without raising; the last failure is reported."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await check()
            if result:
                return result
            last = None
        except (TimeoutError, AssertionError, OSError, aiohttp.ClientError, ApiError) as e:
            last = e  # ApiError: e.g. the object under test does not exist yet
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
        await asyncio.sleep(interval)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def create_namespace(kube: Kube, name: str) -> None:
    await kube.create(
        NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )


async def delete_namespace(kube: Kube, name: str) -> None:
    await kube.delete(NAMESPACES, name)


def echo_deployment(name: str, replicas: int = 3, ports: list[Obj] | None = None) -> Obj:
    ports = ports or [{"name": "http", "containerPort": 8080}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "echo",
                            "image": "registry.k8s.io/echo-basic:emulated",
                            "ports": ports,
                        }
                    ],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def service(name: str, ports: list[Obj], type_: str = "ClusterIP", **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": type_, "selector": {"app": name}, "ports": ports, **spec},
    }


async def deploy_echo(
    kube: Kube, ns: str, name: str, replicas: int = 3, svc_type: str = "ClusterIP", **svc_spec: Any
) -> Obj:
    """An echo Deployment and its Service; returns the Service as created."""
    await kube.create(DEPLOYMENTS, echo_deployment(name, replicas), ns)
    svc = service(name, [{"name": "http", "port": 80, "targetPort": 8080}], svc_type, **svc_spec)
    return await kube.create(SERVICES, svc, ns)


async def ready_pods(kube: Kube, ns: str, app: str) -> set[str]:
    from kubelbd.objects import PODS

    pods, _ = await kube.list(PODS, ns, labelSelector=f"app={app}")
    out = set()
    for p in pods:
        if p["metadata"].get("deletionTimestamp"):
            continue
        conds = {c["type"]: c["status"] for c in (p.get("status") or {}).get("conditions") or []}
        if conds.get("Ready") == "True":
            out.add(p["metadata"]["name"])
    return out


async def http_get(
    url: str,
    host: str | None = None,
    timeout: float = 3.0,
    source: str | None = None,
    **kw: Any,
) -> tuple[int, Any, dict[str, str]]:
    """One request on a fresh connection (from loopback address `source`, when given):
    status, decoded JSON (or text), headers."""
    headers = dict(kw.pop("headers", {}))
    if host is not None:
        headers["Host"] = host
    conn = aiohttp.TCPConnector(force_close=True, local_addr=(source, 0) if source else None)
    async with (
        aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.get(url, headers=headers, allow_redirects=False, **kw) as r,
    ):
        text = await r.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return r.status, body, dict(r.headers)


async def tcp_echo(host: str, port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            await writer.drain()
            got = b""
            while len(got) < len(payload):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
            return got
        finally:
            writer.close()


async def udp_echo(host: str, port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not fut.done():
                fut.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not fut.done():
                fut.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(P, remote_addr=(host, port))
    try:
        transport.sendto(payload)
        return await asyncio.wait_for(fut, timeout)
    finally:
        transport.close()


# ---- the load balancer ----------------------------------------------------------------------


def lb_addr(layout: Layout) -> str:
    return f"127.0.0.1:{layout.envoy_http_port}"


async def lb_get(
    layout: Layout, host: str, path: str = "/", timeout: float = 3.0
) -> tuple[int, Any]:
    """One request through Envoy's HTTP listener: (status, JSON body or text)."""
    status, body, _ = await http_get(f"http://{lb_addr(layout)}{path}", host=host, timeout=timeout)
    return status, body


async def until_served(
    layout: Layout,
    host: str,
    path: str = "/",
    status: int = 200,
    timeout: float = 30.0,
    check: Callable[[Any], bool] | None = None,
) -> Any:
    """Poll through Envoy until host+path answers `status` (and `check(body)` holds)."""

    async def probe() -> Any:
        got, body = await lb_get(layout, host, path)
        assert got == status, f"{host}{path}: {got} {str(body)[:200]}"
        if check is not None:
            assert check(body), f"{host}{path}: unexpected body {str(body)[:300]}"
        return body if body else True

    return await eventually(probe, timeout=timeout, what=f"{host}{path} -> {status}")


def ingress_obj(
    name: str,
    rules: list[Obj] | None = None,
    default_backend: Obj | None = None,
    class_name: str | None = "kubelb",
    annotations: dict[str, str] | None = None,
    tls: list[Obj] | None = None,
) -> Obj:
    spec: Obj = {}
    if class_name:
        spec["ingressClassName"] = class_name
    if rules is not None:
        spec["rules"] = rules
    if default_backend is not None:
        spec["defaultBackend"] = default_backend
    if tls is not None:
        spec["tls"] = tls
    meta: Obj = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def backend(service: str, port: int | str = 80) -> Obj:
    ref = {"number": port} if isinstance(port, int) else {"name": port}
    return {"service": {"name": service, "port": ref}}


def rule(host: str | None, *paths: tuple[str, str, Obj]) -> Obj:
    """rule("a.example", ("/", "Prefix", backend("web")), ...)"""
    out: Obj = {"http": {"paths": [{"path": p, "pathType": t, "backend": b} for p, t, b in paths]}}
    if host:
        out["host"] = host
    return out


async def deploy_app(kube: Kube, ns: str, name: str, replicas: int = 1) -> None:
    """An echo Deployment with a ClusterIP Service on port 80 (named http) -> 8080."""
    await kube.create(DEPLOYMENTS, echo_deployment(name, replicas), ns)
    svc = service(name, [{"name": "http", "port": 80, "targetPort": 8080}])
    await kube.create(SERVICES, svc, ns)


# ---- TLS ----------------------------------------------------------------------------------


async def https_request(
    addr: str,
    sni: str,
    path: str = "/",
    cafile: str | None = None,
    timeout: float = 3.0,
    host_header: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, dict[str, Any]]:
    """One HTTPS request with SNI (and the same Host, unless `host_header` says otherwise),
    with `headers` besides; (status, JSON body or text, the server's certificate)."""
    import ssl

    ctx = ssl.create_default_context(cafile=cafile)
    host, _, port = addr.rpartition(":")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=ctx, server_hostname=sni
        )
        try:
            cert = writer.get_extra_info("peercert") or {}
            status, body = await _http_exchange(
                reader, writer, host_header or sni, path, send=headers
            )
            return status, body, cert
        finally:
            writer.close()


async def _http_exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    path: str,
    headers_out: dict[str, str] | None = None,
    send: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """HTTP/1.1 on an open connection, which stays open for the next request, with the
    request headers `send` besides Host; the response's headers go into `headers_out`, when
    given."""
    more = "".join(f"{k}: {v}\r\n" for k, v in (send or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{more}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if headers_out is not None:
        headers_out.clear()
        headers_out.update(headers)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    text = body.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class KeptConnection:
    """An HTTPS connection kept open across changes, to prove it survives them."""

    def __init__(self, addr: str, sni: str, cafile: str) -> None:
        self.addr, self.sni, self.cafile = addr, sni, cafile
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> KeptConnection:
        import ssl

        ctx = ssl.create_default_context(cafile=self.cafile)
        host, _, port = self.addr.rpartition(":")
        self.reader, self.writer = await asyncio.open_connection(
            host, int(port), ssl=ctx, server_hostname=self.sni
        )
        self.cert = self.writer.get_extra_info("peercert") or {}
        return self

    async def get(self, path: str = "/") -> tuple[int, Any]:
        """A request on the kept connection; its response headers end up in `headers`."""
        async with asyncio.timeout(5):
            return await _http_exchange(self.reader, self.writer, self.sni, path, self.headers)

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()


@asynccontextmanager
async def namespace_in(
    fleet: FleetHandle, prefix: str, tenants: list[str] | None = None
) -> AsyncIterator[str]:
    """A fresh namespace of the same name in each of `tenants` (default: all), removed after."""
    name = unique(prefix)
    where = tenants if tenants is not None else fleet.tenants
    for t in where:
        await create_namespace(fleet.kube[t], name)
    try:
        yield name
    finally:
        for t in where:
            await delete_namespace(fleet.kube[t], name)


def conditions(obj: Obj | None) -> dict[str, Obj]:
    """An object's status conditions by type."""
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


async def route_condition(mgmt: Kube, tenant: str, route: str, cond_type: str, **want: str) -> None:
    """Wait until the Route record `route` of `tenant` has a `cond_type` condition whose
    fields equal `want` (e.g. status="True", reason="...")."""

    async def check() -> bool:
        conds = conditions(await mgmt.get(ROUTES, route, f"tenant-{tenant}"))
        cond = conds.get(cond_type, {})
        assert all(cond.get(k) == v for k, v in want.items()), conds
        return True

    await eventually(
        check, timeout=RECORD_STATUS_TIMEOUT, what=f"{cond_type} {want} on Route {tenant}/{route}"
    )


async def served_over_plain_http(layout: Layout, host: str) -> None:
    """Plain HTTP answers 200 for `host` (once its pod is ready) and never redirects it."""

    async def plain() -> bool:
        status, _, headers = await http_get(f"http://{lb_addr(layout)}/", host=host)
        if 300 <= status < 400:
            raise RuntimeError(f"{host} redirected to {headers.get('Location')}")
        return status == 200

    await eventually(plain, what=f"{host} over plain HTTP, not redirected")


async def tls_site(
    kube: Kube, ns: str, name: str, host: str, secret: str, **annotations: str
) -> None:
    """An echo app behind an Ingress whose one host is served over TLS with `secret`."""
    await deploy_app(kube, ns, name)
    ing = ingress_obj(
        name,
        [rule(host, ("/", "Prefix", backend(name)))],
        tls=[{"hosts": [host], "secretName": secret}],
        annotations=annotations or None,
    )
    await kube.create(INGRESSES, ing, ns)


def tls_secret(name: str, pair: certs.KeyPair | None = None, crt: bytes | None = None,
               key: bytes | None = None) -> Obj:  # fmt: skip
    """A tenant TLS Secret with `pair`'s certificate and key, or `crt` and `key` as given."""
    crt = crt if crt is not None else pair.cert_pem()  # type: ignore[union-attr]
    key = key if key is not None else pair.key_pem()  # type: ignore[union-attr]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name},
        "data": {
            "tls.crt": base64.b64encode(crt).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


# ---- traffic and faults -------------------------------------------------------------------


class Traffic:
    """Requests to one host, back to back, on fresh connections; remembers every failure."""

    def __init__(self, layout: Layout, host: str) -> None:
        self.layout = layout
        self.host = host
        self.ok = 0
        self.failures: list[str] = []
        #: when each failure was seen (time.monotonic()), in the order of `failures`
        self.failed_at: list[float] = []

    async def run(self) -> None:
        while True:
            try:
                status, body = await lb_get(self.layout, self.host, "/traffic", timeout=5)
                if status == 200:
                    self.ok += 1
                else:
                    self._failed(f"{status} {str(body)[:100]}")
            except Exception as e:  # any failure counts
                self._failed(repr(e))
            await asyncio.sleep(0.02)

    def _failed(self, what: str) -> None:
        self.failures.append(f"{_now()} {what}")
        self.failed_at.append(time.monotonic())


def _now() -> str:
    return time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"


@asynccontextmanager
async def traffic(layout: Layout, host: str, clients: int = 1) -> AsyncIterator[Traffic]:
    """Requests to `host` from `clients` concurrent clients while the block runs."""
    t = Traffic(layout, host)
    tasks = [asyncio.create_task(t.run()) for _ in range(clients)]
    try:
        yield t
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def bounce_controllers(cluster: str) -> None:
    """After an API server outage: client-go's reflectors back off up to 30 s, so restart
    the controllers, and the next test finds a cluster that creates pods right away."""
    for component in ("controller-manager", "scheduler"):
        await run_fleet("stop", component, cluster)
        await run_fleet("start", component, cluster)


# ---- the operator's tenant policy ---------------------------------------------------------


async def tenant_record(mgmt: Kube, tenant: str) -> Obj:
    return await mgmt.get(TENANTS, tenant, f"tenant-{tenant}")


@asynccontextmanager
async def tenant_policy(mgmt: Kube, tenant: str, spec: Obj) -> AsyncIterator[None]:
    """The operator sets `spec` fields of a tenant's policy for a while, then puts the
    Tenant spec back as it was."""
    before = (await tenant_record(mgmt, tenant)).get("spec") or {}
    await policy_in_force(mgmt, tenant, {"spec": spec})
    try:
        yield
    finally:
        undo = {k: before.get(k) for k in spec}  # null removes what was not there
        await policy_in_force(mgmt, tenant, {"spec": undo})


async def policy_in_force(mgmt: Kube, tenant: str, patch: Obj) -> None:
    """Patch a Tenant record, then wait until kubelbd says the policy of that generation is
    the one in force (its PolicyAccepted condition observed it): objects the tenant writes
    afterwards are judged by it (the Tenant record and the tenant's objects come through
    different watches, in no order)."""
    written = await mgmt.patch(TENANTS, tenant, patch, f"tenant-{tenant}")
    generation = written["metadata"]["generation"]

    async def observed() -> bool:
        record = await tenant_record(mgmt, tenant)
        found = [
            c.get("observedGeneration", 0)
            for c in (record.get("status") or {}).get("conditions") or []
            if c.get("type") == "PolicyAccepted"
        ]
        assert found and found[0] >= generation, (found, generation)
        return True

    await eventually(observed, what=f"tenant {tenant}'s policy of generation {generation}")


def _replica_names() -> list[str]:
    from kubefleet.fleet import State
    from kubefleet.layout import Layout, fleet_dir

    state = State.load(fleet_dir() / "state.json")
    assert state is not None, "the fleet is not up"
    layout = Layout(state.tenants, state.base_port, fleet_dir(), state.replicas)
    return [r.name for r in layout.replica_set]


async def stop_kubelbd() -> None:
    """kubelbd down: every replica (with one left, it would take over and carry on)."""
    for name in reversed(_replica_names()):
        await run_fleet("stop", name)


async def start_kubelbd() -> None:
    """Every replica up again, the first first: it takes the released Lease and leads."""
    for name in _replica_names():
        await run_fleet("start", name)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_until_ready(proc: subprocess.Popen[bytes], layout: Layout, log: Path) -> None:
    """The restarted kubelbd serves (its first publish is done: every tenant resynced) and
    Envoy is ready; a kubelbd that exits meanwhile fails the test with its last lines, rather
    than leaving the test to time out on whatever it waits for first."""
    urls = [
        f"http://127.0.0.1:{layout.kubelbd_health_port}/readyz",
        f"http://127.0.0.1:{layout.envoy_admin_port}/ready",
    ]
    deadline = time.monotonic() + 60
    while not all(_ready(u) for u in urls):
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            pytest.fail(f"kubelbd ({log.name}) exited:\n" + "\n".join(tail), pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"kubelbd ({log.name}) not ready within 60 s", pytrace=False)
        time.sleep(0.1)


@contextmanager
def kubelbd_as_component(
    layout: Layout, component: Path, argv: Callable[[list[str]], list[str]], log_name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """The fleet's kubelbd restarted as deploy/ with `component` deploys it: the Component's
    RBAC granted to kubelbd's ServiceAccount, and `argv` (given the fleet's) for its flags.
    The other replicas stop meanwhile: replicas of one Deployment run one mode, and this one
    must hold the Lease to write. Afterwards the fleet's replicas run again, the RBAC goes."""
    from kubefleet import lb as fleet_lb
    from kubefleet import manifests
    from kubefleet.fleet import Fleet, State

    state = State.load(layout.state_file)
    assert state is not None
    added = manifests.component_rbac(component)
    for doc in added:
        fleet_lb.apply_document(Fleet(layout), doc)
    command = argv([*state.procs["kubelbd"].argv])
    others = [r.name for r in layout.replica_set[1:]]
    for name in others:
        fleet("stop", name)
    fleet("stop", "kubelbd")
    path = layout.logs / log_name
    log = open(path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_until_ready(proc, layout, path)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        fleet("start", "kubelbd")
        for name in others:
            fleet("start", name)
        for doc in reversed(added):
            fleet_lb.delete_document(Fleet(layout), doc)


# ---- the operator's views -----------------------------------------------------------------


def fleet_env(layout: Layout) -> dict[str, str]:
    """What hack/fleet up wrote into .fleet/fleet.env (KUBECONFIG_MGMT, ENVOY_ADMIN_ADDR,
    KUBELBD_HEALTH_ADDR, ...), as the operator's shell would have it after sourcing it."""
    out = {}
    for line in layout.env_file.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            out[key] = value
    return out


def free_port() -> int:
    """A loopback TCP port nobody listens on now (for a replica of a test's own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
