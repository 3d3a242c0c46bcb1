"""Hypothesis for every unit test: no per-example deadline, no "too slow" health check, and
the same examples on every run unless asked otherwise.

Deadlines and the health check measure wall-clock time, and CI shares its two cores with a
fleet of API servers and Envoy: an example that takes 250 ms there fails a deadline it meets
everywhere else, and the failure does not replay. Performance is the benchmarks' business
(hack/bench). Derandomized, a run is reproducible and CI judges the change, not the luck of
a seed; `KUBELBD_HYPOTHESIS=explore` draws new examples (what to run while looking for bugs:
the hostile-object suite found several that way)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from kubefleet import gatewayapi

RELAXED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("kubelbd", derandomize=True, **RELAXED)  # type: ignore[arg-type]
settings.register_profile("explore", **RELAXED)  # type: ignore[arg-type]
settings.load_profile("explore" if os.environ.get("KUBELBD_HYPOTHESIS") == "explore" else "kubelbd")


@pytest.fixture(scope="session")
def conformance_bin() -> Path:
    """hack/build-conformance's bin directory (the Gateway API conformance suite, echo-basic;
    their CRDs beside it): cached, ~4 min cold. Skips only without a Go toolchain."""
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        pytest.skip("no Go toolchain to build the conformance suite with (hack/build-conformance)")
    return gatewayapi.build()
