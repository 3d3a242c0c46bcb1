"""Session fixtures for end-to-end tests: one fleet per test session, reused if already up.

A fleet that is already up (a developer's `hack/fleet up`) is reused and left running. One
this session brought up is taken down at the end unless KUBELBD_KEEP_FLEET=1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
from kubefleet.fleet import State
from kubefleet.layout import ROOT, Layout, fleet_dir

from .support import FleetHandle

FLEET = str(ROOT / "hack" / "fleet")


def _fleet_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEET, *args], text=True, capture_output=True, check=check)


@pytest.fixture(scope="session")
def fleet_layout() -> Iterator[Layout]:
    started = False
    if _fleet_cmd("status", check=False).returncode != 0:
        _fleet_cmd("down", check=False)
        up = _fleet_cmd("up", check=False)
        if up.returncode != 0:
            pytest.fail(f"hack/fleet up failed:\n{up.stdout}\n{up.stderr}", pytrace=False)
        started = True
    state = State.load(fleet_dir() / "state.json")
    assert state is not None
    yield Layout(state.tenants, state.base_port, fleet_dir(), state.replicas)
    if started and os.environ.get("KUBELBD_KEEP_FLEET") != "1":
        _fleet_cmd("down", check=False)


@pytest.fixture(scope="session")
async def fleet(fleet_layout: Layout) -> AsyncIterator[FleetHandle]:
    handle = FleetHandle(fleet_layout)
    await handle.open()
    try:
        yield handle
    finally:
        await handle.aclose()
