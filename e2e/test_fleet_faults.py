"""The fleet harness fails loudly and cleanly: one line naming the cause, nothing left behind.

Each test that starts processes uses its own fleet directory and ports, never the session's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubefleet import lb
from kubefleet.layout import ROOT, Layout
from kubefleet.procs import Proc, alive, spawn

from .support import FLEET, FleetHandle

pytestmark = pytest.mark.e2e

BUILD = str(ROOT / "hack" / "build-kube")


def run(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, text=True, capture_output=True, env=full_env, timeout=timeout)


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains `text` (our temp fleet dir)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if text in cmdline and state not in ("Z", "X") and int(d.name) != os.getpid():
            pids.append(int(d.name))
    return pids


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "no error output"
    return lines[-1]


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "fleet"
    yield d
    # Whatever a failed assertion left running, stop it (only processes of this directory).
    for pid in processes_mentioning(str(d)):
        os.kill(pid, signal.SIGKILL)


def test_build_without_go_names_the_cause(tmp_path: Path) -> None:
    r = run(["bash", BUILD], env={"PATH": "/usr/bin:/bin", "KUBELBD_CACHE": str(tmp_path)})
    assert r.returncode == 1
    assert "no Go toolchain" in one_error_line(r.stderr)
    assert r.stdout == ""


def test_failed_build_names_the_binary(tmp_path: Path) -> None:
    mod = tmp_path / "kube"
    shutil.copytree(ROOT / "hack" / "kube", mod)
    with open(mod / "go.mod", "a") as f:
        f.write("\nreplace k8s.io/api => ./does-not-exist\n")
    r = run(
        [BUILD], env={"KUBELBD_CACHE": str(tmp_path / "cache"), "KUBELBD_KUBE_MODULE": str(mod)}
    )
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "go build of kube-apiserver" in line and "failed" in line
    assert not any((tmp_path / "cache").rglob(".complete"))


def test_port_in_use_is_named_and_nothing_starts(fleet_dir: Path) -> None:
    base = 17400
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 11))  # alpha's kube-apiserver
        s.listen()
        r = run([FLEET, "up", "--base-port", str(base)], env={"KUBELBD_FLEET_DIR": str(fleet_dir)})
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "127.0.0.1:17411" in line and "alpha kube-apiserver" in line and "in use" in line
    assert processes_mentioning(str(fleet_dir)) == []
    assert not (fleet_dir / "state.json").exists()


def test_up_while_up_refuses_and_leaves_the_fleet_running(fleet: FleetHandle) -> None:
    r = run([FLEET, "up"])
    assert r.returncode == 1
    assert "already up" in one_error_line(r.stderr)
    assert run([FLEET, "status"]).returncode == 0


def test_half_started_fleet_is_reported_and_cleaned_up(fleet_dir: Path) -> None:
    from kubefleet.fleet import State

    fleet_dir.mkdir(parents=True)
    live = Proc("etcd", ["sleep", "300"], str(fleet_dir / "logs" / "etcd.log"))
    spawn(live, ROOT)
    assert alive(live)
    dead = Proc("mgmt/apiserver", ["true"], str(fleet_dir / "logs" / "apiserver.log"), pid=0)
    State(2, 17500, "/nonexistent", {"etcd": live, "mgmt/apiserver": dead}).save(
        fleet_dir / "state.json"
    )
    r = run([FLEET, "up", "--base-port", "17500"], env={"KUBELBD_FLEET_DIR": str(fleet_dir)})
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "half-started" in line and "mgmt/apiserver" in line
    assert not alive(live)  # the leftover process was stopped
    assert not (fleet_dir / "state.json").exists()


def test_failure_midway_stops_what_started(fleet_dir: Path) -> None:
    r = run(
        [FLEET, "up", "--base-port", "17600"],
        env={"KUBELBD_FLEET_DIR": str(fleet_dir), "KUBEFLEET_INJECT_FAILURE": "after-etcd"},
    )
    assert r.returncode == 1
    assert "injected failure" in one_error_line(r.stderr)
    assert "starting" in (fleet_dir / "logs" / "etcd.log").read_text()  # etcd did start
    assert processes_mentioning(str(fleet_dir)) == []


def test_down_leaves_nothing_and_up_after_down_works(fleet_dir: Path) -> None:
    env = {"KUBELBD_FLEET_DIR": str(fleet_dir)}
    layout = Layout(1, 17700, fleet_dir)
    for _ in range(2):
        r = run([FLEET, "up", "--tenants", "1", "--base-port", "17700"], env=env)
        assert r.returncode == 0, r.stderr
        assert run([FLEET, "status"], env=env).returncode == 0
        env_text = layout.env_file.read_text()
        assert "KUBECONFIG_ALPHA=" in env_text and "KUBECTL=" in env_text
        assert processes_mentioning(str(fleet_dir))
        config = lb.config_dir(layout)
        assert (config / "lds.pb").exists()
        r = run([FLEET, "down"], env=env)
        assert r.returncode == 0, r.stderr
        assert processes_mentioning(str(fleet_dir)) == []
        assert not config.exists()  # Envoy's files (and any private key) go with the fleet
        assert run([FLEET, "status"], env=env).returncode == 1
