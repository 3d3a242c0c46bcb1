"""A real BIND 9 on loopback, authoritative for one zone that takes dynamic updates and zone
transfers signed with a TSIG key generated for the run: what kubelbd's RFC 2136 publisher is
tested against (only a real server says which prerequisites it honours and how).

Self-contained on purpose: the fleet's own BIND (hack/kubefleet) is not needed by the unit
tests. `named` runs in the foreground (`-g`, as root here) with an empty `controls {}` so rndc
binds nothing; it is ready when it logs "running", and is stopped by its PID."""

from __future__ import annotations

import base64
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

NAMED = "/usr/sbin/named"
KEY_NAME = "kubelbd-test"
ALGORITHM = "hmac-sha256"
STARTUP_SECONDS = 30


@dataclass(frozen=True)
class Bind:
    address: str
    port: int
    zone: str
    key_name: str
    key_secret: str
    algorithm: str

    @property
    def server(self) -> str:
        return f"{self.address}:{self.port}"


def _config(directory: Path, port: int, zone: str, secret: str) -> str:
    return f"""
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm {ALGORITHM}; secret "{secret}"; }};
zone "{zone}" {{
    type primary;
    file "{directory}/{zone}.db";
    update-policy {{ grant {KEY_NAME} zonesub ANY; }};
    allow-transfer {{ key {KEY_NAME}; }};
}};
"""


def _zone_file(zone: str) -> str:
    return f"""$TTL 60
@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 1
@ IN NS ns.{zone}.
ns IN A 127.0.0.1
"""


@contextmanager
def bind_server(directory: Path, zone: str = "example.test") -> Iterator[Bind]:
    """named serving `zone` on a free loopback port until the block ends."""
    port = free_port()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    (directory / f"{zone}.db").write_text(_zone_file(zone))
    conf = directory / "named.conf"
    conf.write_text(_config(directory, port, zone, secret))
    proc = subprocess.Popen(
        [NAMED, "-g", "-4", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = _Log(proc)
    try:
        if not log.running.wait(STARTUP_SECONDS) or proc.poll() is not None:
            raise RuntimeError("named did not start:\n" + "".join(log.lines[-30:]))
        yield Bind("127.0.0.1", port, zone, KEY_NAME, secret, ALGORITHM)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.thread.join()


class _Log:
    """named's log, read to its end by a thread (a pipe nobody drains would stop named once
    full); `running` is set when named says it is running (every zone loaded, every socket
    bound), or when it exits."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.running = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self.lines.append(line)
                if line.rstrip().endswith("running"):
                    self.running.set()
        self.running.set()


def free_port() -> int:
    """A loopback port free for both TCP and UDP, as named binds both."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
