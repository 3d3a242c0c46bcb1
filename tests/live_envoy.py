"""A real Envoy on loopback, fed the files kubelbd renders, and the two ends that talk to it: a
client that chooses its SNI, Host and source address, and echo backends that report what
they received. For what only Envoy itself can say (which backend a request reaches, which
headers it arrives with); the rest of the suite checks the configuration as data."""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from kubelbd.envoy.ads import DiscoveryServer
from kubelbd.envoy.process import EnvoyProcess, write_bootstrap
from kubelbd.envoy.publisher import Publisher
from kubelbd.envoy.settings import ADS_SOCKET, Settings
from kubelbd.ir.tls import CertificateData


def live_settings(config_dir: Path, shards: int) -> Settings:
    """kubelbd's Envoy settings for a live Envoy on loopback: free ports, and health checks
    quick enough for a test to wait on."""
    return Settings(
        config_dir=str(config_dir),
        http_address="127.0.0.1",
        http_port=free_port(),
        https_address="127.0.0.1",
        https_port=free_port(),
        shards=shards,
        health_check_interval="0.2s",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {"backend": self.server.name, "headers": dict(self.headers.items())}  # type: ignore[attr-defined]
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def echo_backend(name: str) -> Iterator[int]:
    """An HTTP backend on loopback answering every GET with its name and the request headers;
    yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.body)
        return out


def request(
    port: int,
    host: str,
    sni: str | None = None,
    ca_pem: bytes | None = None,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> Response:
    """One HTTP/1.1 GET to Envoy on `port` from `source`: over TLS with `sni` when given."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock: socket.socket = raw
    if sni is not None:
        ctx = ssl.create_default_context(cadata=(ca_pem or b"").decode() or None)
        sock = ctx.wrap_socket(raw, server_hostname=sni)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        # Read what Content-Length says rather than up to the close: after a local reply
        # Envoy waits (delayed_close_timeout, 1 s) for the client to close first.
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        length = int({k.strip().lower(): v for k, v in fields.items()}[b"content-length"])
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    return Response(int(head.split(b" ", 2)[1]), body)


@dataclass
class Stream:
    """The clusters and scopes of a publish, to kubelbd's server in the portal's thread (its
    loop)."""

    portal: BlockingPortal
    server: DiscoveryServer

    def serve(self, type_url: str, changes: Mapping[str, tuple[str, bytes] | None]) -> int:
        return self.portal.call(self.server.serve, type_url, changes)


@dataclass
class Envoy:
    config_dir: Path
    admin: str
    process: subprocess.Popen[bytes]
    publisher: Publisher

    def publish(self, files: dict[str, list[dict[str, Any]]]) -> None:
        anyio.run(self.publisher.publish, files)

    def log(self) -> str:
        return (self.config_dir / "envoy.log").read_text(errors="replace")[-5000:]


@contextmanager
def running_envoy(
    config_dir: Path,
    files: dict[str, list[dict[str, Any]]],
    certificates: list[CertificateData] | None = None,
) -> Iterator[Envoy]:
    """Envoy started on the published `files` and `certificates` (served by kubelbd's own
    secret server, in a thread of its own), ready (admin /ready answers 200); stopped, by its
    pid, on exit."""
    with start_blocking_portal() as portal:
        server = DiscoveryServer(config_dir / ADS_SOCKET)
        portal.call(server.start)
        try:
            portal.call(server.put, certificates or [])
            publisher = Publisher(config_dir)
            publisher.stream = Stream(portal, server)
            with _running_envoy(config_dir, files, publisher) as envoy:
                yield envoy
        finally:
            portal.call(server.stop)


@contextmanager
def _running_envoy(
    config_dir: Path, files: dict[str, list[dict[str, Any]]], publisher: Publisher
) -> Iterator[Envoy]:
    admin = f"127.0.0.1:{free_port()}"
    bootstrap = write_bootstrap(config_dir, admin, "live-test")
    anyio.run(publisher.publish, files)
    argv = EnvoyProcess(bootstrap, concurrency=1).argv()
    with (config_dir / "envoy.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    envoy = Envoy(config_dir, admin, process, publisher)
    try:
        deadline = time.monotonic() + 30
        while not _ready(admin):
            assert process.poll() is None, envoy.log()
            assert time.monotonic() < deadline, envoy.log()
            time.sleep(0.05)  # polling Envoy's admin, with a deadline
        yield envoy
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def eventually(check: Any, timeout: float = 20.0) -> Any:
    """`check()`'s value once it returns without an AssertionError or OSError (Envoy warms its
    clusters and health checks after /ready); the last error after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)
