"""Golden files: tenant objects → Route records → Envoy resources, one case per behaviour.

Each `tests/golden/<case>.yaml` describes tenants (node addresses, Ingresses, Services) and
`<case>.json` holds what every stage makes of them: the Route spec and problems per Ingress,
then the route tables and clusters Envoy gets, and which hosts each route serves or lost. A
change of behaviour shows up as a diff of these files. Regenerate after an intended change:

    KUBELBD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelbd import crds, envoy_config, ingress, ir, nodeports

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = envoy_config.Settings(config_dir="/config", http_address="0.0.0.0", shards=4)
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def _with_twins(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The NodePort twins kubelbd would create, with deterministic nodePorts (32000 + n)."""
    out = list(services)
    n = 0
    for svc in services:
        if ingress.needs_nodeport(svc):
            twin = nodeports.twin(svc)
            for p in twin["spec"]["ports"]:
                p["nodePort"] = 32000 + n
                n += 1
            out.append(twin)
    return out


def _crd_schema(kind: str) -> dict[str, Any]:
    for doc in crds.load():
        if doc["spec"]["names"]["kind"] == kind:
            return dict(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    raise KeyError(kind)


def conforms(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the CRD's schema does not declare: the API server would refuse the record."""
    errors = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                errors += conforms(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                errors += conforms(v, extra, f"{path}.{k}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += conforms(v, schema["items"], f"{path}[{i}]")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}={value!r} not in {schema['enum']}")
    return errors


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    routes: list[ir.RouteRecord] = []
    tenants: list[ir.TenantRecord] = []
    translations: dict[str, Any] = {}
    for t in case["tenants"]:
        name = t["name"]
        tenants.append(ir.TenantRecord(name, tuple(t.get("addresses", []))))
        for svc in t.get("services", []):
            svc["metadata"].setdefault("namespace", "default")
            svc["metadata"].setdefault("uid", f"uid-{svc['metadata']['name']}")
        services = {
            (svc["metadata"]["namespace"], svc["metadata"]["name"]): svc
            for svc in _with_twins(t.get("services", []))
        }

        def lookup(ns: str, n: str, services: dict[Any, Any] = services) -> Any:
            return services.get((ns, n))

        def twin(ns: str, n: str, services: dict[Any, Any] = services) -> Any:
            return services.get((ns, nodeports.twin_name(n)))

        classes = t.get("ingressClasses", [])
        for obj in t.get("ingresses", []):
            meta = obj["metadata"]
            meta.setdefault("namespace", "default")
            meta.setdefault("uid", f"uid-{meta['name']}")
            meta.setdefault("generation", 1)
            route_name = ingress.route_name(meta["namespace"], meta["name"])
            if not ingress.is_ours(obj, classes):
                translations[f"{name}/{route_name}"] = "not ours"
                continue
            result = ingress.translate(obj, lookup, twin)
            schema = _crd_schema("Route")["properties"]["spec"]
            assert conforms(result.spec, schema) == [], conforms(result.spec, schema)
            translations[f"{name}/{route_name}"] = {
                "spec": result.spec,
                "problems": [f"{p.reason}: {p.message}" for p in result.problems],
            }
            routes.append(ir.RouteRecord(name, route_name, result.spec, 1))
    model = ir.build(routes, tenants)
    files = envoy_config.render(model, SETTINGS)
    route_tables = {
        path: res[0]["virtual_hosts"]
        for path, res in sorted(files.items())
        if path.startswith("rds/") and res[0]["virtual_hosts"]
    }
    static = {c["name"] for c in envoy_config.shard_clusters(SETTINGS)}
    return {
        "routes": translations,
        "envoy": {
            "route_tables": route_tables,
            "clusters": [c for c in files["cds.json"] if c["name"] not in static],
        },
        "served": model.served,
        "conflicts": {k: [list(x) for x in v] for k, v in model.conflicts.items()},
    }


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = yaml.safe_load((GOLDEN / f"{name}.yaml").read_text())
    got = run_case(case)
    expected_path = GOLDEN / f"{name}.json"
    text = json.dumps(got, indent=2, sort_keys=True) + "\n"
    if os.environ.get("KUBELBD_UPDATE_GOLDEN") == "1" or not expected_path.exists():
        expected_path.write_text(text)
        if os.environ.get("KUBELBD_UPDATE_GOLDEN") != "1":
            pytest.fail(f"{expected_path.name} did not exist; written, review it and re-run")
    assert text == expected_path.read_text(), f"{name}: output differs from {expected_path.name}"


def test_static_envoy_resources() -> None:
    """Listeners and shard clusters do not depend on records; one golden for them all."""
    got = {
        "listeners": envoy_config.listeners(SETTINGS),
        "shard_clusters": envoy_config.shard_clusters(SETTINGS),
    }
    path = GOLDEN / "static-envoy.json"
    text = json.dumps(got, indent=2, sort_keys=True) + "\n"
    if os.environ.get("KUBELBD_UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text()


def test_every_case_has_its_expectation() -> None:
    assert CASES, "no golden cases"
    for name in CASES:
        assert (GOLDEN / f"{name}.json").exists(), name
