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
#: one of each thing kubelbd does, and the tests that found its bugs: HTTP and HTTPS
#: listeners, matches, grants, certificate references, filters (paths rewritten and
#: redirected), status of the tenant's own
#: GatewayClass, a GRPCRoute, TLSRoutes passed through and terminated on one port, a
#: TCPRoute and UDPRoutes (one to CoreDNS), BackendTLSPolicies (CA ConfigMaps changing,
#: names checked, conflicts)
FAST = (
    "HTTPRouteSimpleSameNamespace",
    "HTTPRouteMatching",
    "HTTPRouteReferenceGrant",
    "HTTPRouteHTTPSListener",
    "GatewaySecretReferenceGrantSpecific",
    "GatewayInvalidTLSConfiguration",
    "HTTPRouteRequestHeaderModifier",
    "HTTPRouteRedirectHostAndStatus",
    "HTTPRouteRewritePath",
    "HTTPRouteRedirectPath",
    "GatewayClassObservedGenerationBump",
    "GRPCExactMethodMatching",
    "TLSRouteMixedTerminationSameNamespace",
    "TCPRouteWeightedRouting",
    "UDPRouteWeightedRouting",
    "UDPRoute",
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "BackendTLSPolicyConflictResolution",
)


PROFILES = "GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS,GATEWAY-TCP,GATEWAY-UDP"


def suite_binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-conformance")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip()) / "conformance.test"


async def test_conformance(fleet: FleetHandle) -> None:
    binary = await anyio.to_thread.run_sync(suite_binary)
    env = os.environ | {"KUBECONFIG": fleet_env(fleet.layout)["KUBECONFIG_ALPHA"]}
    # One run of the suite for all of them (its setup, the base Gateways and backends, once).
    # The base namespaces stay between runs: deleting them while the next run applies them
    # again would meet a namespace still terminating.
    selected = f"^TestConformance$/^({'|'.join(FAST)})$"
    result = await anyio.run_process(
        [str(binary), "-test.run", selected, "-test.v", "-gateway-class=kubelb",
         "-cleanup-base-resources=false", f"-conformance-profiles={PROFILES}"],
        env=env, check=False,
    )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    passed = {t for t in FAST if f"--- PASS: TestConformance/{t} " in out}
    if result.returncode != 0 or passed != set(FAST):
        # pytest.fail: an assertion's message is cut short in CI's output, and with it why.
        failed = sorted(set(FAST) - passed)
        pytest.fail(f"failed: {failed}\n{said_by(out, failed)}\n--- tail:\n{out[-2000:]}",
                    pytrace=False)  # fmt: skip


def said_by(out: str, tests: list[str]) -> str:
    """What the suite logged for these tests and their subtests. `go test -v` runs them in
    parallel, so their lines interleave; each `=== RUN/NAME/CONT` line names whose lines follow."""
    names = {f"TestConformance/{t}" for t in tests}
    said: list[str] = []
    current = ""
    for line in out.splitlines():
        marker = line.split()
        if len(marker) >= 3 and marker[0] in ("===", "---"):
            current = marker[2]  # "=== RUN   TestX/y" or "--- FAIL: TestX/y (0.72s)"
        if "/".join(current.split("/")[:2]) in names:  # the test, or one of its subtests
            said.append(line)
    return "\n".join(said[-120:])
