"""Detached processes remembered by PID and start time, so we only ever signal our own.

A PID alone is not an identity: after a reboot or a long run it may belong to someone else.
The start time from /proc/<pid>/stat pins it down. Zombies count as gone (PID 1 here may not
reap the orphans `fleet up` leaves behind when it exits).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: str
    pid: int = 0
    start_time: int = 0
    env: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Proc:
        return cls(**d)


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def alive(p: Proc) -> bool:
    if not p.pid:
        return False
    st = _stat(p.pid)
    return st is not None and st[0] not in ("Z", "X") and st[1] == p.start_time


def spawn(p: Proc, cwd: Path) -> None:
    Path(p.log).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if p.env:
        env.update(p.env)
    with open(p.log, "ab") as log:
        log.write(f"\n--- {time.strftime('%H:%M:%S')} starting {' '.join(p.argv)}\n".encode())
        log.flush()
        child = subprocess.Popen(
            p.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    p.pid = child.pid
    st = _stat(child.pid)
    p.start_time = st[1] if st else 0


def stop(p: Proc, timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL. Only if the PID is still the process we started."""
    if not alive(p):
        p.pid = 0
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        p.pid = 0
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(p):
            _reap(p.pid)
            p.pid = 0
            return
        time.sleep(0.05)
    if alive(p):
        os.kill(p.pid, signal.SIGKILL)
        while alive(p):
            time.sleep(0.05)
    _reap(p.pid)
    p.pid = 0


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.strip().splitlines()[-lines:])
