"""Fleet benchmarks: `fleet up` time with cached binaries, the fleet's memory, cold builds."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from kubefleet.fleet import State, proc_rss_kib
from kubefleet.layout import ROOT, fleet_dir

from .stats import summary

FLEET = str(ROOT / "hack" / "fleet")


def bench_up(runs: int, tenants: int, base_port: int) -> None:
    """Time `hack/fleet up` (binaries cached) in a private fleet dir, then measure its RSS."""
    times, rss = [], []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
        env = {**os.environ, "KUBELBD_FLEET_DIR": d}
        for i in range(runs):
            start = time.monotonic()
            subprocess.run(
                [FLEET, "up", "--tenants", str(tenants), "--base-port", str(base_port)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            times.append(time.monotonic() - start)
            time.sleep(5)  # let start-up settle before reading memory
            state = State.load(Path(d) / "state.json")
            assert state is not None
            rss.append(sum(proc_rss_kib(p.pid) for p in state.procs.values()) / 1024)
            subprocess.run([FLEET, "down"], env=env, check=True, capture_output=True)
            print(f"run {i + 1}: up {times[-1]:.1f}s, RSS {rss[-1]:.0f} MiB", flush=True)
    print(f"fleet up ({tenants} tenants): {summary(times, 's', 1)}")
    print(f"fleet RSS after up: median {statistics.median(rss):.0f} MiB, max {max(rss):.0f} MiB")


def bench_build() -> None:
    """A cold build: empty binary cache, empty Go build cache and module cache."""
    with tempfile.TemporaryDirectory(prefix="bench-build-") as d:
        env = {
            **os.environ,
            "KUBELBD_CACHE": f"{d}/cache",
            "GOCACHE": f"{d}/gocache",
            "GOMODCACHE": f"{d}/gomod",
        }
        start = time.monotonic()
        subprocess.run([str(ROOT / "hack" / "build-kube")], env=env, check=True)
        cold = time.monotonic() - start
        start = time.monotonic()
        subprocess.run(
            [str(ROOT / "hack" / "build-kube")], env=env, check=True, capture_output=True
        )
        warm = time.monotonic() - start
        subprocess.run(["chmod", "-R", "u+w", d], check=False)  # the module cache is read-only
    print(f"cold build (downloads included): {cold:.0f}s; cached re-run: {warm * 1000:.0f}ms")


def kubelbd_pid() -> int:
    """The running fleet's kubelbd (replica 1)."""
    state = State.load(fleet_dir() / "state.json")
    if state is None or "kubelbd" not in state.procs or not state.procs["kubelbd"].pid:
        raise SystemExit("no fleet with a kubelbd is running (hack/fleet up)")
    return state.procs["kubelbd"].pid
