"""Golden: the IR → Envoy's files (listeners, clusters, route tables).

Input: Envoy settings, the HTTP IR (the YAML the ir/ stage writes), the TLS plan (hosts
served over HTTPS, with which certificate and whether plain HTTP redirects), ACME answers,
and Layer 4 listeners and clusters. Output: every file the renderer writes, with the
resources that never depend on records (the HTTP front listener, the shard listeners and
their clusters, in the `static` case) left out of the others.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubelbd.envoy.http import shard_clusters, shard_listeners
from kubelbd.envoy.renderer import Files, Renderer
from kubelbd.envoy.scopes import front_listener
from kubelbd.envoy.settings import Settings
from kubelbd.ir.http import Delta
from kubelbd.ir.tls import CertificateData, TLSHost, TLSPlan

from .goldens import cases, check, load_ir, load_l4, read_input


def settings(d: dict[str, Any] | None) -> Settings:
    d = d or {}
    return Settings(
        config_dir="/config",
        http_address="0.0.0.0",
        http_port=8080,
        https_address="0.0.0.0",
        https_port=d.get("httpsPort", 0),
        https_redirect_port=d.get("httpsRedirectPort", 443),
        shards=d.get("shards", 4),
    )


def tls_plan(d: dict[str, Any] | None) -> TLSPlan:
    plan = TLSPlan()
    for host, h in ((d or {}).get("hosts") or {}).items():
        plan.hosts[host] = TLSHost(host, h["secret"], h.get("redirect", True))
        sid = h["secret"]
        # The renderer copies certificates as bytes; their content is not its business.
        plan.secrets[sid] = CertificateData(sid, f"CERT {sid}".encode(), f"KEY {sid}".encode())
    return plan


def render(case: dict[str, Any]) -> Files:
    s = settings(case.get("settings"))
    ir = load_ir(case.get("ir") or {})
    renderer = Renderer(s)
    files = renderer.update(ir, Delta.of_all(ir))
    challenges = case.get("challenges") or {}
    plan = tls_plan(case.get("tls"))
    if plan.hosts or challenges:
        files.update(renderer.update_tls(plan, challenges, ir.catch_all is not None))
    if case.get("l4"):
        files.update(renderer.update_l4(*load_l4(case["l4"])))
    return files


def listeners(s: Settings) -> list[dict[str, Any]]:
    return [front_listener(s), *shard_listeners(s)]


def without_static(files: Files, s: Settings) -> dict[str, Any]:
    static = {r["name"] for r in (*listeners(s), *shard_clusters(s))}
    out: dict[str, Any] = {}
    for path, resources in sorted(files.items()):
        kept = [r for r in resources if r.get("name") not in static or path.startswith("rds/")]
        if path.startswith("rds/") and not kept[0].get("virtual_hosts"):
            continue  # an empty shard table
        out[path] = kept
    return out


@pytest.mark.parametrize("case", cases("envoy"))
def test_envoy(case: str) -> None:
    data = read_input("envoy", case)
    check("envoy", case, without_static(render(data), settings(data.get("settings"))))


def test_static_resources() -> None:
    """The listeners and clusters that do not depend on records: one golden for them all."""
    s = settings({"shards": 2})
    check("envoy", "static", {"listeners": listeners(s), "clusters": shard_clusters(s)})


def test_there_are_cases() -> None:
    assert len(cases("envoy")) >= 10
