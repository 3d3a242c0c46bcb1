"""A fast subset of the official Gateway API conformance suite (v1.6.3, hack/build-conformance)
against the fleet's tenant alpha, as `hack/conformance` runs it all: tests that pass today must
keep passing. The full profile, its time and what still fails: docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from .support import FleetHandle, fleet_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
FAST = ("HTTPRouteSimpleSameNamespace", "HTTPRouteMatching", "HTTPRouteReferenceGrant")


def suite_binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-conformance")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip()) / "conformance.test"


@pytest.mark.parametrize("test", FAST)
async def test_conformance(fleet: FleetHandle, test: str) -> None:
    binary = await anyio.to_thread.run_sync(suite_binary)
    env = os.environ | {"KUBECONFIG": fleet_env(fleet.layout)["KUBECONFIG_ALPHA"]}
    # The suite's base namespaces stay between runs: deleting them while the next run applies
    # them again would meet a namespace still terminating.
    result = await anyio.run_process(
        [str(binary), "-test.run", "TestConformance", "-test.v", "-gateway-class=kubelb",
         f"-run-test={test}", "-cleanup-base-resources=false"],
        env=env, check=False,
    )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0 and f"--- PASS: TestConformance/{test} " in out, out[-6000:]
