"""Golden files: an input and the output it must give, side by side, read as a diff.

Each pure boundary has a folder of `<case>.in.yaml` / `<case>.out.yaml` pairs under
tests/golden/: `sources/` (tenant objects → record specs and problems), `ir/` (records → IR,
TLS, Layer 4 and every status), `envoy/` (IR → Envoy's files), `records/` (records written by
an older kubelbd → today's shape). The IR is written and read in one YAML shape (`dump_ir`,
`load_ir`), so an `ir/` output can be read as an `envoy/` input.

A missing or different output fails. After an intended change, regenerate and read the diff:

    KUBELBD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden_*.py
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelbd.ir.http import IR, BackendTLS, Cluster, PathRule, Target, VirtualHost
from kubelbd.ir.l4 import L4Cluster, L4Listener

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KUBELBD_UPDATE_GOLDEN") == "1"


def cases(stage: str) -> list[str]:
    return sorted(p.name.removesuffix(".in.yaml") for p in (GOLDEN / stage).glob("*.in.yaml"))


def read_input(stage: str, case: str) -> Any:
    return yaml.safe_load((GOLDEN / stage / f"{case}.in.yaml").read_text())


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a shared object written out in full each time: a diff reads it there


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(tuple, lambda d, v: d.represent_list(list(v)))


def dump(value: Any) -> str:
    return yaml.dump(
        value, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=100,
        allow_unicode=True,
    )  # fmt: skip


def check(stage: str, case: str, got: Any) -> None:
    """`got` must equal `<case>.out.yaml`; written only with KUBELBD_UPDATE_GOLDEN=1."""
    path = GOLDEN / stage / f"{case}.out.yaml"
    text = dump(got)
    if UPDATE:
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"{path.relative_to(GOLDEN.parent)} is missing: write it with "
                    "KUBELBD_UPDATE_GOLDEN=1 and review it")  # fmt: skip
    assert text == path.read_text(), f"{stage}/{case}: output differs from {path.name}"


# ---- the IR as YAML ------------------------------------------------------------------------


def dump_target(t: Target | None) -> Any:
    if t is None:
        return None
    return {"route": t.route, "backends": [{"cluster": c, "weight": w} for c, w in t.backends]}


def load_target(d: Any) -> Target | None:
    if d is None:
        return None
    return Target(tuple((b["cluster"], b["weight"]) for b in d["backends"]), d["route"])


def dump_vhost(vh: VirtualHost | None) -> Any:
    if vh is None:
        return None
    return {
        "tenant": vh.tenant,
        "host": vh.host,
        "rules": [
            {"path": r.path, "exact": r.exact, "target": dump_target(r.target)} for r in vh.rules
        ],
        "fallback": dump_target(vh.fallback),
    }


def load_vhost(d: Any) -> VirtualHost | None:
    if d is None:
        return None
    rules = tuple(
        PathRule(r["path"], r["exact"], load_target(r["target"]))  # type: ignore[arg-type]
        for r in d["rules"]
    )
    return VirtualHost(d["tenant"], d["host"], rules, load_target(d["fallback"]))


def dump_backend_tls(tls: BackendTLS) -> dict[str, Any]:
    out: dict[str, Any] = {"hostname": tls.hostname, "ca": tls.ca}
    if tls.subject_alt_names:
        out["subjectAltNames"] = [list(x) for x in tls.subject_alt_names]
    return out


def dump_ir(ir: IR) -> dict[str, Any]:
    return {
        "vhosts": {h: dump_vhost(v) for h, v in sorted(ir.vhosts.items())},
        "catchAll": dump_vhost(ir.catch_all),
        "clusters": {
            n: {
                "tenant": c.tenant,
                "addresses": list(c.addresses),
                "port": c.port,
                **({"http2": True} if c.http2 else {}),
                **({"tls": dump_backend_tls(c.tls)} if c.tls else {}),
            }
            for n, c in sorted(ir.clusters.items())
        },
        "served": {r: list(h) for r, h in sorted(ir.served.items())},
        "conflicts": {r: [list(x) for x in c] for r, c in sorted(ir.conflicts.items())},
    }


def load_ir(d: dict[str, Any]) -> IR:
    ir = IR()
    for host, vh in (d.get("vhosts") or {}).items():
        loaded = load_vhost(vh)
        assert loaded is not None
        ir.vhosts[host] = loaded
    ir.catch_all = load_vhost(d.get("catchAll"))
    for name, c in (d.get("clusters") or {}).items():
        t = c.get("tls")
        sans = tuple(tuple(x) for x in (t or {}).get("subjectAltNames") or [])
        tls = BackendTLS(t["hostname"], t["ca"], sans) if t else None
        ir.clusters[name] = Cluster(
            name, c["tenant"], tuple(c["addresses"]), c["port"], c.get("http2", False), tls
        )
    ir.served = {r: list(h) for r, h in (d.get("served") or {}).items()}
    ir.conflicts = {r: [(h, t) for h, t in c] for r, c in (d.get("conflicts") or {}).items()}
    return ir


def dump_l4(listeners: list[L4Listener], clusters: list[L4Cluster]) -> dict[str, Any]:
    return {
        "listeners": [dataclasses.asdict(x) for x in listeners],
        "clusters": [{**dataclasses.asdict(c), "addresses": list(c.addresses)} for c in clusters],
    }


def load_l4(d: dict[str, Any] | None) -> tuple[list[L4Listener], list[L4Cluster]]:
    d = d or {}
    listeners = [L4Listener(**x) for x in d.get("listeners") or []]
    clusters = [
        L4Cluster(**{**c, "addresses": tuple(c["addresses"])}) for c in d.get("clusters") or []
    ]
    return listeners, clusters


def conforms(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the CRD's schema does not declare: the API server would drop or refuse them."""
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
