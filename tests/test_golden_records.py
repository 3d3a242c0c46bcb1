"""Golden: records as the management cluster holds them → what the data plane reads.

Input: record specs as some kubelbd wrote them (or someone edited them). Output: the spec
after records.parse (migrated to today's shape), or why it is refused. A record in an older
shape must read exactly as its rewritten form: a fleet upgraded in place keeps serving.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubelbd.records import parse
from kubelbd.records.parse import RecordError

from .goldens import cases, check, read_input

PARSERS = {"Route": parse.route_spec, "LoadBalancer": parse.lb_spec}


def read(kind: str, spec: Any) -> Any:
    try:
        return PARSERS[kind](spec)
    except RecordError as e:
        return f"refused: {e}"


@pytest.mark.parametrize("case", cases("records"))
def test_records(case: str) -> None:
    data = read_input("records", case)
    check("records", case, {n: read(r["kind"], r["spec"]) for n, r in data["records"].items()})


def test_migration_leaves_the_cached_object_alone() -> None:
    old: dict[str, Any] = {
        "source": {},
        "rules": [{"host": "a", "paths": [{"backend": {"service": "s"}}]}],
    }
    migrated = parse.migrate_route_spec(old)
    assert migrated["rules"][0]["paths"][0]["backends"] == [{"service": "s"}]
    assert old["rules"][0]["paths"][0] == {"backend": {"service": "s"}}  # the informer's copy
    assert parse.migrate_route_spec(migrated) is migrated  # today's shape: no copy at all
