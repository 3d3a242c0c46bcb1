"""Hypothesis for every unit test: no per-example deadline, no "too slow" health check.

Both measure wall-clock time, and CI shares its two cores with a fleet of API servers and
Envoy: an example that takes 250 ms there fails a deadline it meets everywhere else, and
the failure does not replay. Performance is the benchmarks' business (hack/bench)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("kubelbd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kubelbd")
