"""Records for unit tests, built the way the data plane reads them (checked by records.parse)."""

from __future__ import annotations

from typing import Any

from kubelbd.records import parse
from kubelbd.records.types import RouteRecord


def route(
    tenant: str,
    name: str,
    rules: list[Any],
    created: str = "2026-01-01T00:00:00Z",
    generation: int = 1,
    **extra: Any,
) -> RouteRecord:
    """Route `name` (`<namespace>.<ingress>`) of `tenant`, from an Ingress in that namespace."""
    namespace, _, ingress = name.partition(".")
    raw = {
        "source": {
            "kind": "Ingress",
            "namespace": namespace,
            "name": ingress,
            "uid": f"uid-{tenant}-{name}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "rules": rules,
        **extra,
    }
    # Stored by the management cluster when the tenant object was made, in these tests.
    return RouteRecord(tenant, name, parse.route_spec(raw), generation, created)
