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
    assert result.returncode == 0 and passed == set(FAST), (
        sorted(set(FAST) - passed),
        failures(out),
        out[-3000:],
    )


def failures(out: str) -> str:
    """What the suite said about the subtests that failed: its log lines that name an error
    or a failure (the output is long, and its tail alone hides why)."""
    lines = out.splitlines()
    said = [
        line for line in lines
        if "--- FAIL" in line or "Error" in line or "error" in line or "timed out" in line
    ]  # fmt: skip
    return "\n".join(said[-60:])
