"""Through a real Envoy: the front listener's hop into a shard is no limit of its own.

Every host of a shard goes through that shard's internal cluster, so whatever limit that
cluster has is shared by all of them. Envoy's default circuit breakers allow 1,024
connections (one per request in flight over HTTP/1.1): with them, the 1,025th request in
flight over all of a shard's hosts together (long polls, uploads, WebSockets) was answered
503 by Envoy itself, while each host's own backend was far below its own limit.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kubelbd.envoy.renderer import Renderer
from kubelbd.ir.http import Model
from kubelbd.records.types import RouteRecord, TenantRecord

from . import records
from .live_envoy import live_settings, running_envoy
from .test_properties import needs_envoy

pytestmark = needs_envoy

#: requests in flight per host: each host's own cluster stays below Envoy's default 1,024
PER_HOST = 600
HOSTS = 2
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class HeldBackend:
    """Counts each request for /held and answers none of them until the test ends; answers
    anything else at once (Envoy's TCP health checks only connect)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port: int = self.listener.getsockname()[1]
        self.held = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        pending: dict[socket.socket, bytes] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    pending[conn] = b""
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                data = conn.recv(65536)
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    pending.pop(conn, None)
                    continue
                pending[conn] += data
                if b"\r\n\r\n" in pending[conn]:
                    if pending[conn].startswith(b"GET /held "):
                        self.held += 1
                    else:
                        conn.sendall(OK)
                    pending[conn] = b""
        for conn in pending:
            conn.close()
        sel.close()

    @contextmanager
    def serving(self) -> Iterator[HeldBackend]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)
            self.listener.close()


def _routes(port: int) -> list[RouteRecord]:
    """HOSTS hosts, each with a Service of its own (so a cluster of its own) on `port`."""
    out = []
    for i in range(HOSTS):
        backend = {"service": f"web{i}", "port": "80", "nodePort": port}
        rule = {
            "host": f"h{i}.example.com",
            "paths": [{"path": "/", "pathType": "Prefix", "backends": [backend]}],
        }
        out.append(records.route("alpha", f"default.h{i}", [rule]))
    return out


def test_a_shard_carries_more_requests_in_flight_than_one_cluster_may(tmp_path: Path) -> None:
    settings = live_settings(tmp_path, shards=1)  # every host in the one shard
    backend = HeldBackend()
    with ExitStack() as stack:
        stack.enter_context(backend.serving())
        model, renderer = Model(), Renderer(settings)
        tenants = [TenantRecord("alpha", ("127.0.0.1",))]
        files = renderer.update(model.ir, model.apply(_routes(backend.port), (), tenants))
        envoy = stack.enter_context(running_envoy(tmp_path, files))
        clients = []
        for n in range(HOSTS * PER_HOST):
            c = stack.enter_context(_connected(settings.http_port))
            c.sendall(f"GET /held HTTP/1.1\r\nHost: h{n % HOSTS}.example.com\r\n\r\n".encode())
            clients.append(c)
        deadline = time.monotonic() + 30
        while backend.held < len(clients) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the backend's count, with a deadline
        answered = _answered(clients)
        assert backend.held == len(clients), (
            f"{backend.held} of {len(clients)} requests reached the backends; "
            f"Envoy answered {len(answered)} itself, e.g. {answered[:1]}\n{envoy.log()}"
        )


@contextmanager
def _connected(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        yield s


def _answered(clients: list[socket.socket]) -> list[bytes]:
    """The first line of every answer already there (none is expected: all are held)."""
    out = []
    with selectors.DefaultSelector() as sel:
        for c in clients:
            sel.register(c, selectors.EVENT_READ)
        for key, _ in sel.select(0):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            out.append(sock.recv(65536).split(b"\r\n", 1)[0])
    return out
