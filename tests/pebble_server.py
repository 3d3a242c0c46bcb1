"""Pebble (Let's Encrypt's ACME test server) on loopback, resolving every name through a given
DNS server: with tests/bind_server.py behind it, an ACME validation succeeds only when the name
(or its `_acme-challenge` answer) is really published there.

Built by hack/build-pebble (cached; the fleet uses the same binaries). Ready when its
directory answers over HTTPS with its test root; stopped by its PID."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubefleet.lb import PEBBLE_ENV, build_pebble, pebble_config

from tests.bind_server import free_port

STARTUP_SECONDS = 30


@dataclass(frozen=True)
class Pebble:
    directory: str  # the ACME directory URL
    ca_bundle: str  # trusts Pebble's own HTTPS certificate
    http_port: int  # where Pebble fetches HTTP-01 answers, at the address the name resolves to


@contextmanager
def pebble_server(directory: Path, dns_server: str) -> Iterator[Pebble]:
    """Pebble validating through `dns_server` (address:port) until the block ends."""
    bin_dir = build_pebble()
    port, management, http_port = free_port(), free_port(), free_port()
    config = pebble_config(bin_dir, port, management, http_port, free_port())
    conf = directory / "pebble.json"
    conf.write_text(json.dumps(config))
    log = (directory / "pebble.log").open("w")
    proc = subprocess.Popen(
        [str(bin_dir / "pebble"), f"-config={conf}", f"-dnsserver={dns_server}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ | PEBBLE_ENV,
    )
    ca = str(bin_dir / "pebble.minica.pem")
    url = f"https://127.0.0.1:{port}/dir"
    try:
        _wait_ready(proc, url, ca, directory / "pebble.log")
        yield Pebble(url, ca, http_port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, ca: str, log: Path) -> None:
    context = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            with urllib.request.urlopen(url, context=context, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("pebble did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.05)
