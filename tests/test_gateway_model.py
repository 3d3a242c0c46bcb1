"""The Gateway model kept between changes (kubelbd.ir.gateway_model): any series of route,
Gateway, address and certificate changes leaves the kept models equal to a build from
nothing, and the renderer fed with them writes what a fresh renderer writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from kubefleet import certs

from kubelbd.envoy.common import Resource
from kubelbd.envoy.renderer import Renderer
from kubelbd.ir import gateway_model, tls
from kubelbd.ir.gateway_model import GatewayModel
from kubelbd.ir.l4 import Placement
from kubelbd.records import parse
from kubelbd.records.types import LBRecord, RouteRecord, TenantRecord

from . import records
from .test_properties import ENVOY_SETTINGS

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
TENANTS = ("alpha", "beta")
GATEWAYS = ("web", "api")
#: the listeners a Gateway may have: every kind the model treats differently
LISTENERS = {
    "http": {"port": 80, "protocol": "HTTP"},
    "a": {"port": 80, "protocol": "HTTP", "hostname": "a.example.test"},
    "wild": {"port": 80, "protocol": "HTTP", "hostname": "*.example.test"},
    "alt": {"port": 8080, "protocol": "HTTP"},
    "https": {"port": 443, "protocol": "HTTPS", "hostname": "*.example.test",
              "certificates": ["gw.cert"]},
    "shop": {"port": 443, "protocol": "HTTPS", "hostname": "shop.example.test",
             "certificates": ["gw.missing", "gw.cert"]},
    "tls": {"port": 8443, "protocol": "TLS", "tlsMode": "Passthrough"},
    "tcp": {"port": 9000, "protocol": "TCP"},
}  # fmt: skip
HOSTS = ("", "a.example.test", "b.example.test", "*.example.test", "x.a.example.test",
         "shop.example.test", "other.test")  # fmt: skip
CREATED = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
#: route names, an HTTPRoute's and a GRPCRoute's of one name among them (their rules tie
#: on everything but the record)
ROUTES = ("apps.r0.httproute", "apps.r1.httproute", "apps.r1.grpcroute", "apps.r2.httproute")
PAIR = certs.self_signed("*.example.test")


def gateway(tenant: str, name: str, listeners: list[str]) -> LBRecord:
    spec = parse.lb_spec(
        {"source": {"kind": "Gateway", "namespace": "gw", "name": name, "uid": f"u-{name}",
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
         "ports": [], "sessionAffinity": "None", "proxyProtocol": "",
         "listeners": [{"name": n, **LISTENERS[n]} for n in listeners]}
    )  # fmt: skip
    return LBRecord(tenant, f"gw.{name}.gateway", spec, 1, "2026-01-01T00:00:00Z")


@st.composite
def routes(draw: st.DrawFn, tenant: str) -> RouteRecord:
    parents = [
        {"ref": {"name": g}, "gateway": f"gw.{g}.gateway", "accepted": draw(st.booleans()),
         "listeners": draw(st.lists(st.sampled_from(sorted(LISTENERS)), max_size=3)),
         "reason": "Accepted", "message": ""}
        for g in draw(st.lists(st.sampled_from(GATEWAYS), min_size=1, max_size=2))
    ]  # fmt: skip
    rules: list[dict[str, Any]] = [
        {"host": draw(st.sampled_from(HOSTS)), "paths": [
            {"path": draw(st.sampled_from(("/", "/a", "/a/b"))),
             "pathType": draw(st.sampled_from(("Prefix", "Exact"))),
             "method": draw(st.sampled_from(("", "GET"))),
             "backends": [{"service": "web", "port": "80",
                           "nodePort": draw(st.sampled_from((30080, 30081)))}]}
            for _ in range(draw(st.integers(0, 2)))]}
        for _ in range(draw(st.integers(1, 3)))
    ]  # fmt: skip
    for rule in rules:
        for p in rule["paths"]:
            if not p["method"]:
                del p["method"]
    name = draw(st.sampled_from(ROUTES))
    route = records.route(tenant, name, rules, draw(st.sampled_from(CREATED)), parents=parents)
    route.spec["source"]["name"] = name.split(".")[1]  # r1: both kinds' source
    return route


@st.composite
def changes(draw: st.DrawFn) -> tuple[str, Any]:
    tenant = draw(st.sampled_from(TENANTS))
    kind = draw(st.sampled_from(("route", "route", "route", "delete", "gateway", "address",
                                 "certificate", "nodes")))  # fmt: skip
    if kind == "route":
        return kind, draw(routes(tenant))
    if kind == "delete":
        return kind, f"{tenant}/{draw(st.sampled_from(ROUTES))}"
    if kind == "gateway":
        name = draw(st.sampled_from(GATEWAYS))
        listeners = draw(st.lists(st.sampled_from(sorted(LISTENERS)), unique=True, max_size=4))
        return kind, (tenant, name, listeners)
    if kind == "address":
        return kind, (f"{tenant}/gw.{draw(st.sampled_from(GATEWAYS))}.gateway", draw(st.booleans()))
    return kind, tenant


def _certificates(valid: bool) -> dict[str, tls.CertificateData]:
    if not valid:
        return {}
    return {
        f"{t}/gw.cert": tls.CertificateData(f"{t}/gw.cert", PAIR.cert_pem(), PAIR.key_pem())
        for t in TENANTS
    }


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(steps=st.lists(changes(), min_size=1, max_size=25))
def test_kept_models_equal_a_build_from_nothing(steps: list[tuple[str, Any]]) -> None:
    gateways = {
        g.id: g
        for g in (gateway(t, n, ["http", "https", "tcp"]) for t in TENANTS for n in GATEWAYS)
    }
    placements = {gid: Placement(f"127.0.200.{i + 1}", ()) for i, gid in enumerate(gateways)}
    nodes = {t: TenantRecord(t, ("127.0.1.1",)) for t in TENANTS}
    held: dict[str, RouteRecord] = {}
    valid, version = True, 0
    models: dict[str, GatewayModel] = {}
    kept, on_disk = Renderer(ENVOY_SETTINGS), {}
    for number, (kind, change) in enumerate(steps):
        if kind == "route":
            held[change.id] = change
        elif kind == "delete":
            held.pop(change, None)
        elif kind == "gateway":
            g = gateway(*change)
            gateways[g.id] = g
        elif kind == "address":
            gid, placed = change
            if placed:
                placements[gid] = Placement(f"127.0.201.{number}", ())
            else:
                placements.pop(gid, None)
        elif kind == "certificate":
            valid, version = not valid, version + 1
        else:
            nodes[change] = TenantRecord(change, (f"127.0.2.{number}",))
        note(f"{number}: {kind} {change}")
        rs = [held[rid] for rid in sorted(held)]
        certificates = _certificates(valid)
        got = gateway_model.build_by_tenant(
            gateways, placements, rs, certificates, version, NOW, nodes, models
        )
        want = gateway_model.build(gateways, placements, rs, certificates, NOW, nodes)
        assert got == want
        on_disk.update(kept.update_gateways(got))
        fresh = Renderer(ENVOY_SETTINGS).update_gateways(want)
        assert _gateway_files(on_disk) == _gateway_files(fresh)


def _gateway_files(files: dict[str, list[Resource]]) -> dict[str, list[Resource]]:
    """The Gateways' part of the listener and cluster files (the rest is what an empty
    Ingress model renders; a fresh renderer leaves out a file with none of theirs)."""
    return {
        p: [r for r in files.get(p, []) if r["name"].startswith("gw/")]
        for p in ("lds.pb", "cds.pb")
    }
