"""hack/bench certs: N certificates on one real Envoy, by design of certificate delivery.

Each run renders N HTTPS hosts (self-signed certificates, one Route each) with kubelbd's own
Model, TLS plan, Renderer and Publisher into a fresh config directory, starts Envoy on free
loopback ports, and measures:

- start: Envoy spawned → a TLS handshake with SNI presents the expected certificate for the
  first, the last and 8 random hosts (then, untimed, every one of the N is checked);
- rss: Envoy's resident memory once all are served; inotify: its inotify instances;
- rotation: a new certificate for one host published → the first handshake presenting it;
- lds: an unrelated listener added to lds.pb → Envoy reports that LDS version applied;
- kept: a keep-alive HTTPS connection opened before the rotation still answers a request
  right after it and again after Envoy's drain time (5 s).

Designs (`--designs`): `files`, one SDS file subscription per certificate (kubelbd before
this benchmark: each is an inotify instance); `watched-dir`, the same with the subscription's
`watched_directory` set to the secrets directory; `inline`, the certificates inline in the
listener (a rotation is a filter chain update); `ads`, SDS over one delta ADS gRPC stream
from kubelbd (kubelbd.envoy.ads), what kubelbd renders. The others are derived from it. Runs
interleave the designs, so a change in the machine's load touches them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import socket
import ssl
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from cryptography.hazmat.primitives import serialization
from kubefleet import certs as fleet_certs
from kubefleet.fleet import proc_rss_kib

from kubelbd.envoy import process as envoy_process
from kubelbd.envoy.ads import DiscoveryServer
from kubelbd.envoy.common import config_source
from kubelbd.envoy.publisher import Publisher
from kubelbd.envoy.renderer import Files, Renderer
from kubelbd.envoy.settings import ADS_SOCKET, FRONT_TLS, Settings
from kubelbd.envoy.type_urls import HCM, LISTENER, ROUTER, SDS_SECRET
from kubelbd.ir import tls
from kubelbd.ir.http import Model
from kubelbd.records import parse
from kubelbd.records.names import copy_name, secret_id
from kubelbd.records.types import RouteRecord, TenantRecord

from .stats import percentile

TENANT = "bench"
DESIGNS = ("files", "watched-dir", "inline", "ads")
DRAIN_TIME = 5.0  # EnvoyProcess passes --drain-time-s 5


@dataclass
class Pair:
    host: str
    sid: str
    cert_pem: bytes
    key_pem: bytes
    der: bytes


def self_signed(host: str, sid: str) -> Pair:
    pair = fleet_certs.self_signed(host)
    return Pair(
        host, sid, pair.cert_pem(), pair.key_pem(),
        pair.cert.public_bytes(serialization.Encoding.DER),
    )  # fmt: skip


def certificates(n: int, domain: str = "certs.example") -> dict[str, Pair]:
    """host -> its certificate, for hosts h0.<domain> ... h<n-1>.<domain> (`route(i, ...)`)."""
    return {
        f"h{i}.{domain}": self_signed(
            f"h{i}.{domain}", secret_id(TENANT, copy_name("default", f"c{i}"))
        )
        for i in range(n)
    }


def route(i: int, host: str) -> RouteRecord:
    backend = {"service": "web", "port": "80", "nodePort": 30080}
    raw = {
        "source": {
            "kind": "Ingress",
            "namespace": "default",
            "name": f"r{i}",
            "uid": f"uid-{i}",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "rules": [
            {"host": host, "paths": [{"path": "/", "pathType": "Prefix", "backends": [backend]}]}
        ],
        "tls": [{"hosts": [host], "secretName": f"c{i}", "source": "tenant"}],
    }
    return RouteRecord(TENANT, f"default.r{i}", parse.route_spec(raw), 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Rendering:
    """kubelbd's renderer and its state for one config directory."""

    settings: Settings
    routes: list[RouteRecord]
    model: Model = field(default_factory=Model)
    renderer: Renderer = field(init=False)
    served: list[tls.CertificateData] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.renderer = Renderer(self.settings)

    def full(self, pairs: dict[str, Pair]) -> Files:
        files = self.renderer.update(
            self.model.ir,
            self.model.apply(self.routes, (), [TenantRecord(TENANT, ("127.0.0.1",))]),
        )
        files.update(self.tls(pairs))
        return files

    def tls(self, pairs: dict[str, Pair]) -> Files:
        """The files TLS changes; the certificates go to `self.served` (as in dataplane.tls)."""
        secrets = {p.sid: tls.CertificateData(p.sid, p.cert_pem, p.key_pem) for p in pairs.values()}
        plan = tls.plan(self.model.ir, self.routes, secrets, dt.datetime.now(dt.UTC))
        assert not plan.problems, list(plan.problems.items())[:3]
        self.served = list(plan.secrets.values())
        return self.renderer.update_tls(plan, {}, False)

    def lds(self) -> list[dict[str, Any]]:
        """The listeners as they are (inline certificates change them, kubelbd's do not)."""
        return self.renderer._lds()


def secret_file(sid: str) -> str:
    """Where the file designs keep one certificate (kubelbd's layout before the ADS one), in
    the publisher's binary form (envoy/protos.py), which Envoy reads by the extension."""
    return "secrets/" + sid.replace("/", ".") + ".pb"


def sds_secret(p: Pair) -> dict[str, Any]:
    return {
        "@type": SDS_SECRET,
        "name": p.sid,
        "tls_certificate": {
            "certificate_chain": {"inline_string": p.cert_pem.decode()},
            "private_key": {"inline_string": p.key_pem.decode()},
        },
    }


def _chains(files: Files) -> list[dict[str, Any]]:
    https = next(x for x in files.get("lds.pb", []) if x["name"] == FRONT_TLS)
    chains: list[dict[str, Any]] = https["filter_chains"]
    return chains


def as_design(design: str, files: Files, pairs: dict[str, Pair], config_dir: str) -> Files:
    """kubelbd's (ads) rendering, turned into the files of `design`."""
    files = orjson.loads(orjson.dumps(files))  # a deep copy
    if design == "ads":
        return files
    by_sid = {p.sid: p for p in pairs.values()}
    for chain in _chains(files) if "lds.pb" in files else []:
        ctx = chain["transport_socket"]["typed_config"]["common_tls_context"]
        (sds,) = ctx.pop("tls_certificate_sds_secret_configs")
        if design in ("files", "watched-dir"):
            path = f"{config_dir}/{secret_file(sds['name'])}"
            source = config_source(path)
            if design == "watched-dir":  # moves into the directory trigger the reload
                source["path_config_source"]["watched_directory"] = {"path": str(Path(path).parent)}
            ctx["tls_certificate_sds_secret_configs"] = [
                {"name": sds["name"], "sds_config": source}
            ]
        else:
            p = by_sid[sds["name"]]
            ctx["tls_certificates"] = [
                {
                    "certificate_chain": {"inline_string": p.cert_pem.decode()},
                    "private_key": {"inline_string": p.key_pem.decode()},
                }
            ]
    if design in ("files", "watched-dir"):
        for p in pairs.values():
            files[secret_file(p.sid)] = [sds_secret(p)]
    return files


def handshake(port: int, host: str, timeout: float = 2.0) -> bytes | None:
    """The certificate Envoy presents for SNI `host`, or None if the handshake fails."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as s,
        ):
            return s.getpeercert(binary_form=True)
    except OSError:
        return None


async def poll(
    check: Callable[[], bool], deadline: float, alive: Callable[[], bool], what: str
) -> float:
    """Seconds until `check()` holds (polling every ~2 ms); raises on timeout or if Envoy died."""
    start = time.perf_counter()
    while not check():
        if not alive():
            raise RuntimeError("envoy exited")
        if time.perf_counter() - start > deadline:
            raise TimeoutError(f"no {what} after {deadline:.0f} s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


class KeepAlive:
    """One HTTP/1.1 keep-alive connection over TLS: does it still answer?"""

    def __init__(self, port: int, host: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.host = host

    def request(self) -> str:
        """'ok', 'ok+close' (answered, announcing the close) or 'closed'."""
        try:
            self.sock.sendall(f"GET / HTTP/1.1\r\nhost: {self.host}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "closed"
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().lower().split("\r\n")
            length = next(
                (int(x.split(":")[1]) for x in lines if x.startswith("content-length:")), 0
            )
            while len(body) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "closed"
                body += chunk
            return "ok+close" if "connection: close" in lines else "ok"
        except OSError:
            return "closed"

    def close(self) -> None:
        self.sock.close()


def inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += "inotify" in fd.readlink().name
    return count


def inotify_limit() -> str:
    return Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()


def rss_mib(pid: int) -> float:
    return proc_rss_kib(pid) / 1024


def bootstrap(config_dir: Path, admin_port: int) -> Path:
    """kubelbd's bootstrap: every design gets its clusters over the stream, and the file
    designs their certificates from files (`as_design`)."""
    boot = yaml.safe_load(
        envoy_process.render_bootstrap(
            envoy_process.TEMPLATE.read_text(), str(config_dir), f"127.0.0.1:{admin_port}", "b"
        )
    )
    path = config_dir / "bootstrap.json"
    path.write_bytes(orjson.dumps(boot))
    return path


def lds_applied(admin_port: int) -> str:
    """The LDS version Envoy reports applied."""
    url = f"http://127.0.0.1:{admin_port}/stats?format=json&type=TextReadouts"
    with urllib.request.urlopen(url, timeout=5) as r:  # loopback: quick enough to block
        body = r.read()
    for s in orjson.loads(body).get("stats", []):
        if s.get("name") == "listener_manager.lds.version_text":
            return str(s.get("value", ""))
    return ""


def extra_listener(port: int) -> dict[str, Any]:
    """A plain listener that has nothing to do with certificates."""
    hcm = {
        "@type": HCM,
        "stat_prefix": "bench_extra",
        "route_config": {"name": "bench_extra", "virtual_hosts": []},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "@type": LISTENER,
        "name": "bench-extra",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}
        ],
    }  # fmt: skip


@dataclass
class Result:
    ok: bool
    error: str = ""
    start: float = 0.0
    rss: float = 0.0
    inotify: int = 0
    rotation: float = 0.0
    lds: float = 0.0
    kept: str = ""


async def one_run(design: str, pairs: dict[str, Pair], seed: int) -> Result:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="kubelbd-bench-certs-") as tmp:
        config_dir = Path(tmp) / "config"
        config_dir.mkdir()
        https_port, admin_port = free_port(), free_port()
        settings = Settings(
            config_dir=str(config_dir), http_address="127.0.0.1", http_port=free_port(),
            https_address="127.0.0.1", https_port=https_port,
        )  # fmt: skip
        routes = [route(i, p.host) for i, p in enumerate(pairs.values())]
        rendering = Rendering(settings, routes)
        files = rendering.full(pairs)
        # The clusters go over the stream whatever the design (envoy/ads.py).
        server = DiscoveryServer(config_dir / ADS_SOCKET)
        publisher = Publisher(config_dir, stream=server)
        await server.start()
        if design == "ads":
            server.put(rendering.served)
        await publisher.publish(as_design(design, files, pairs, str(config_dir)))
        boot = bootstrap(config_dir, admin_port)
        log_path = Path(tmp) / "envoy.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *envoy_process.EnvoyProcess(boot).argv(),
                stdout=log_file, stderr=log_file, start_new_session=True,
            )  # fmt: skip
        try:
            return await _measure(design, pairs, rendering, publisher, server, proc, rng,
                                  https_port, admin_port, str(config_dir))  # fmt: skip
        except (RuntimeError, TimeoutError) as e:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return Result(False, f"{type(e).__name__} {e}: " + " | ".join(tail))
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
            await server.stop()


async def _measure(
    design: str,
    pairs: dict[str, Pair],
    rendering: Rendering,
    publisher: Publisher,
    server: DiscoveryServer,
    proc: asyncio.subprocess.Process,
    rng: random.Random,
    port: int,
    admin_port: int,
    config_dir: str,
) -> Result:
    def alive() -> bool:
        return proc.returncode is None

    hosts = list(pairs)
    sample = [hosts[0], hosts[-1], *rng.sample(hosts, min(8, len(hosts)))]

    def served(names: list[str]) -> bool:
        return all(handshake(port, h) == pairs[h].der for h in names)

    start = await poll(lambda: served(sample), 120, alive, "every sample host served")
    await asyncio.sleep(0.5)  # let start-up work settle before measuring the rest
    result = Result(True, start=start, rss=rss_mib(proc.pid), inotify=inotify_instances(proc.pid))
    missing = [h for h in hosts if handshake(port, h) != pairs[h].der]
    if missing:
        return Result(False, f"{len(missing)} hosts not served, e.g. {missing[:3]}")

    # Rotation of one host, with a keep-alive connection to it open.
    target = rng.choice(hosts)
    conn = KeepAlive(port, target)
    before = conn.request()
    old = pairs[target]
    pairs[target] = self_signed(old.host, old.sid)
    new_files = rendering.tls(pairs)
    if design == "inline":
        new_files["lds.pb"] = rendering.lds()
    t0 = time.perf_counter()
    if design == "ads":
        server.put(rendering.served)
    await publisher.publish(as_design(design, new_files, pairs, config_dir))
    await poll(lambda: handshake(port, target) == pairs[target].der, 30, alive, "rotation")
    result.rotation = time.perf_counter() - t0
    right_after = conn.request()
    await asyncio.sleep(DRAIN_TIME + 1.0)
    after_drain = conn.request()
    conn.close()
    result.kept = f"{before}/{right_after}/{after_drain}"
    if not served(sample):
        return Result(False, "hosts lost after the rotation")

    # An unrelated listener change: how long Envoy takes to apply lds.pb.
    with_extra = {"lds.pb": [*rendering.lds(), extra_listener(free_port())]}
    written = await publisher.publish(as_design(design, with_extra, pairs, config_dir))
    t0 = time.perf_counter()
    version = written["lds.pb"]
    while lds_applied(admin_port) != version:
        if not alive() or time.perf_counter() - t0 > 60:
            return Result(False, "lds not applied")
        await asyncio.sleep(0.002)
    result.lds = time.perf_counter() - t0
    return result


def _outcome(res: Result) -> str:
    if not res.ok:
        return f"FAILED: {res.error[:300]}"
    return (
        f"start {res.start * 1000:.0f} ms, rotation {res.rotation * 1000:.1f} ms, "
        f"lds {res.lds * 1000:.1f} ms, rss {res.rss:.0f} MiB, inotify {res.inotify}, "
        f"kept {res.kept}"
    )


def _line(name: str, values: list[float], unit: str, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return (
        f"  {name}: median {statistics.median(v):.1f} {unit}, p99 {percentile(v, 99):.1f} {unit}"
        f" (min {min(v):.1f}, max {max(v):.1f})"
    )


async def run(n: int, runs: int, designs: list[str]) -> None:
    print(f"certs: n={n} runs={runs} (inotify max_user_instances {inotify_limit()})")
    base = certificates(n)
    by_design: dict[str, list[Result]] = {d: [] for d in designs}
    for r in range(runs):
        for design in designs:
            res = await one_run(design, dict(base), seed=r)
            by_design[design].append(res)
            print(f"  {design} run {r + 1}: {_outcome(res)}", flush=True)
    for design, results in by_design.items():
        good = [r for r in results if r.ok]
        print(f"{design} (n={n}): {len(good)}/{runs} runs served every host")
        if good:
            print(_line("start → all served", [r.start for r in good], "ms", 1000))
            print(_line("rotation visible", [r.rotation for r in good], "ms", 1000))
            print(_line("unrelated LDS change applied", [r.lds for r in good], "ms", 1000))
            print(_line("Envoy RSS", [r.rss for r in good], "MiB"))
            print(f"  inotify instances: {sorted({r.inotify for r in good})}")
            print(f"  keep-alive before/after rotation/after drain: {[r.kept for r in good]}")
