"""Certificates over kubelbd's secret server (kubelbd.envoy.ads), held to a real Envoy.

`envoy --mode validate` does not read the dynamic files, so it never showed the problem this
design solves (one inotify instance per certificate file: Envoy aborted at 108 certificates
with the default limit of 128): only a real start does. These tests start one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from benchlib.certs import (
    KeepAlive,
    Pair,
    Rendering,
    certificates,
    free_port,
    handshake,
    inotify_instances,
    route,
    self_signed,
)
from google.protobuf.message import DecodeError

from kubelbd.envoy import process as envoy_process
from kubelbd.envoy.ads import DiscoveryServer, parse_delta_request
from kubelbd.envoy.publisher import Publisher
from kubelbd.envoy.settings import ADS_SOCKET, Settings

from .test_properties import needs_envoy

N = 1000
DEADLINE = 90.0  # Envoy builds 1,000 filter chains in ~3 s here, much longer on a busy machine


async def until(check: Callable[[], bool], what: str, envoy: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert envoy.poll() is None, f"envoy exited with {envoy.returncode} waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def stats(admin_port: int) -> dict[str, object]:
    url = f"http://127.0.0.1:{admin_port}/stats?format=json&filter=^listener_manager"
    with urllib.request.urlopen(url, timeout=5) as r:
        return {s["name"]: s.get("value") for s in orjson.loads(r.read())["stats"] if "name" in s}


class Fleet:
    """N HTTPS hosts rendered by kubelbd into `config`, served by one Envoy."""

    def __init__(self, config: Path, n: int) -> None:
        self.config = config
        self.pairs = certificates(n)
        self.port, self.admin_port = free_port(), free_port()
        settings = Settings(
            config_dir=str(config), http_address="127.0.0.1", http_port=free_port(),
            https_address="127.0.0.1", https_port=self.port,
        )  # fmt: skip
        routes = [route(i, host) for i, host in enumerate(self.pairs)]
        self.rendering = Rendering(settings, routes)
        self.server = DiscoveryServer(config / ADS_SOCKET)

    def serves(self, *hosts: str) -> bool:
        return all(handshake(self.port, h) == self.pairs[h].der for h in hosts)

    def rotate(self, host: str) -> Pair:
        old = self.pairs[host]
        self.pairs[host] = self_signed(old.host, old.sid)
        self.rendering.tls(self.pairs)
        self.server.put(self.rendering.served)
        return self.pairs[host]


def start_envoy(bootstrap: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        argv = envoy_process.EnvoyProcess(bootstrap).argv()
        return subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Fleet, subprocess.Popen[bytes]]]:
    config = tmp_path / "c"  # a short path: a Unix socket's is at most 107 bytes
    config.mkdir()
    f = Fleet(config, N)
    files = f.rendering.full(f.pairs)
    await f.server.start()
    f.server.put(f.rendering.served)
    await Publisher(config, stream=f.server).publish(files)
    bootstrap = envoy_process.write_bootstrap(config, f"127.0.0.1:{f.admin_port}", "test")
    envoy = start_envoy(bootstrap, tmp_path / "envoy.log")
    try:
        yield f, envoy
    finally:
        envoy.terminate()
        envoy.wait(timeout=30)
        await f.server.stop()


@needs_envoy
async def test_a_thousand_certificates_rotate_without_touching_the_listener(
    fleet: tuple[Fleet, subprocess.Popen[bytes]],
) -> None:
    f, envoy = fleet
    hosts = list(f.pairs)
    await until(lambda: f.serves(hosts[0], hosts[-1]), "the first and last host", envoy)
    assert f.serves(*hosts[::50]), "a sample of the 1,000 hosts"
    # One stream for all: Envoy's inotify instances do not grow with the certificates.
    assert inotify_instances(envoy.pid) < 64
    assert await f.server.wait_settled(DEADLINE), "envoy acknowledged every certificate"

    target = hosts[N // 2]
    conn = KeepAlive(f.port, target)
    assert conn.request() == "ok"
    before = stats(f.admin_port)
    new = f.rotate(target)
    await until(lambda: handshake(f.port, target) == new.der, "the rotated certificate", envoy)
    after = stats(f.admin_port)
    # The listener was not touched, so nothing drains and the open connection carries on.
    lds = "listener_manager.lds.version_text"
    assert after[lds] == before[lds]
    assert after["listener_manager.total_filter_chains_draining"] == 0
    assert conn.request() == "ok"
    conn.close()
    assert await f.server.wait_settled(DEADLINE)

    # kubelbd restarts: Envoy keeps its certificates, reconnects and says what it holds, so
    # a rotation after that reaches it as well.
    await f.server.stop()
    assert f.serves(hosts[1])
    restarted = DiscoveryServer(f.server.socket_path)
    restarted.put(f.rendering.served)
    f.server = restarted
    await restarted.start()
    await until(restarted.settled, "envoy reconnected", envoy)
    newer = f.rotate(hosts[1])
    await until(lambda: handshake(f.port, hosts[1]) == newer.der, "a rotation after it", envoy)
    assert os.stat(f.server.socket_path).st_mode & 0o777 == 0o660


def test_a_request_that_does_not_parse_is_refused_not_raised() -> None:
    with pytest.raises(DecodeError):
        parse_delta_request(b"\x12\xff\xff\xff\xff\x0f")  # longer than the message
    with pytest.raises(DecodeError):
        parse_delta_request(b"\x13")  # wire type 3 (groups): never sent by Envoy
