"""Golden: records → the fleet's IR, TLS plan, Layer 4 placements, and every status.

Input: the records of a fleet as the management cluster holds them (Routes, LoadBalancers
with the allocation in their status, Tenants), the certificates in the tenants' namespaces
(described, and made for the test), what the issuers report, and whether Envoy applied.
Output: the IR (ir.http), the TLS plan (ir.tls), the Layer 4 placements and resources
(ir.l4), and the status of every record and of the tenant object it came from (ir.status):
conditions without timestamps, addresses and Events. The `ir` part of an output can be
read as the `ir` of an envoy/ input.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubelbd.envoy.gateway import gateway_listener, gateway_tls_listener
from kubelbd.envoy.settings import Settings
from kubelbd.ir import gateway_model, gateway_status, tls
from kubelbd.ir.http import Cluster, PathRule, Target, VirtualHost, build
from kubelbd.ir.l4 import Placement, Pool, PortRange, place
from kubelbd.ir.l4 import build as build_l4
from kubelbd.ir.status import DNSState, Report, lb_report, route_report
from kubelbd.records import parse
from kubelbd.records.names import NAMESPACE_PREFIX
from kubelbd.records.problems import Problem
from kubelbd.records.status import Event, SourceStatus
from kubelbd.records.types import LBRecord, LoadBalancerIngress, RouteRecord, TenantRecord

from .goldens import cases, check, dump_ir, dump_l4, read_input

_KEYS: list[ec.EllipticCurvePrivateKey] = []
#: the Envoy settings the Gateway listeners render with (only timeouts and checks matter)
ENVOY_SETTINGS = Settings(config_dir="/config")
P256 = bytes.fromhex("06082a8648ce3d030107")  # the DER of OID 1.2.840.10045.3.1.7
PRIME192V3 = bytes.fromhex("06082a8648ce3d030103")  # 1.2.840.10045.3.1.3


def _key(n: int) -> ec.EllipticCurvePrivateKey:
    while len(_KEYS) <= n:
        _KEYS.append(ec.generate_private_key(ec.SECP256R1()))
    return _KEYS[n]


def certificate(sid: str, d: dict[str, Any]) -> tls.CertificateData:
    """A certificate as a case describes it: names and validity, or broken on purpose."""
    if d.get("malformed"):
        return tls.CertificateData(sid, b"-----BEGIN CERTIFICATE-----\nnope\n-----END "
                                   b"CERTIFICATE-----\n", b"x")  # fmt: skip
    key = _key(0)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, d["names"][0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime.fromisoformat(d["notBefore"]))
        .not_valid_after(dt.datetime.fromisoformat(d["notAfter"]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in d["names"]]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    signer = _key(1) if d.get("keyMismatch") else key
    key_pem = signer.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    if d.get("unsupportedCurve"):
        # The same certificate, its key on a curve the library does not implement
        # (prime192v3 for P-256): it parses, and raises when its public key is read.
        der = cert.public_bytes(serialization.Encoding.DER).replace(P256, PRIME192V3)
        cert_pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return tls.CertificateData(sid, cert_pem, key_pem)


def api_object(kind: str, record_id: str, d: dict[str, Any]) -> dict[str, Any]:
    tenant, name = record_id.split("/", 1)
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE_PREFIX + tenant,
                     "generation": d.get("generation", 1)},
        "spec": d["spec"],
        "status": d.get("status") or {},
    }  # fmt: skip


def dump_report(r: Report) -> dict[str, Any]:
    out: dict[str, Any] = {"status": r.status}
    if r.source is not None:
        s = r.source
        out["tenantObject"] = {
            "object": f"{s.kind} {s.namespace}/{s.name}",
            "addresses": [f"{k}: {v}" for k, v in s.addresses],
            "events": [f"{e.type} {e.reason}: {e.message}" for e in s.events],
        }
        if s.document:
            out["tenantObject"]["status"] = json.loads(s.document)
    return out


def problems(ps: list[Problem]) -> list[str]:
    return [f"{p.reason}: {p.message}" for p in ps]


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    tenants = {
        name: TenantRecord(name, tuple(addresses))
        for name, addresses in (case.get("tenants") or {}).items()
    }
    routes: list[RouteRecord] = []
    for rid, d in sorted((case.get("routes") or {}).items()):
        route = parse.route_record(api_object("Route", rid, d))
        assert route is not None
        routes.append(route)
    model = build(routes, tenants.values())
    out: dict[str, Any] = {"ir": dump_ir(model)}

    now = dt.datetime.fromisoformat(case.get("now", "2026-06-01T00:00:00+00:00"))
    certs = {sid: certificate(sid, d) for sid, d in (case.get("certificates") or {}).items()}
    pending = {sid: Problem(**p) for sid, p in (case.get("pending") or {}).items()}
    tls_routes = [r for r in routes if r.spec.get("tls")]
    plan = tls.plan(model, tls_routes, certs, now, pending)
    if tls_routes:
        out["tls"] = {
            "hosts": {h: {"secret": t.secret, "redirect": t.redirect}
                      for h, t in sorted(plan.hosts.items())},
            "problems": {r: problems(ps) for r, ps in sorted(plan.problems.items())},
            "issue": {sid: {"hosts": list(w.hosts), "source": w.source, "issuer": list(w.issuer)}
                      for sid, w in sorted(tls.wanted(model, tls_routes).items())},
        }  # fmt: skip

    applied = case.get("applied", True)
    public = case.get("publicAddress", "")
    reports = [route_report(r, model, plan.problems.get(r.id, []), public, applied) for r in routes]

    l4 = case.get("loadBalancers")
    if l4:
        lbs: list[LBRecord] = []
        current = {}
        for rid, d in sorted((l4.get("records") or {}).items()):
            obj = api_object("LoadBalancer", rid, d)
            rec = parse.lb_record(obj)
            assert rec is not None
            lbs.append(rec)
            current[rid] = parse.lb_status(obj["status"])
        where: Pool | PortRange = (
            Pool(l4.get("pool", "")) if l4["mode"] == "pool" else PortRange(**l4["range"])
        )
        placements, failures = place(lbs, current, where)
        listeners, clusters = build_l4(lbs, tenants, placements)
        out["l4"] = {
            "placements": {r: _placement(p) for r, p in sorted(placements.items())},
            "failures": {r: f"{e.reason}: {e.message}" for r, e in sorted(failures.items())},
            **dump_l4(listeners, clusters),
        }
        mgmt_ingress: dict[str, list[LoadBalancerIngress]] = l4.get("managementIngress") or {}
        gateways = {r.id: r for r in lbs if "listeners" in r.spec}
        if gateways:
            # Gateway API: the Gateways' listeners with their routes, and (one stage on,
            # kept here so one case reads from records to Envoy) their Envoy listeners.
            gw = gateway_model.build(gateways, placements, routes, certs, now)
            out["gateways"] = {
                "listeners": [dataclasses.asdict(x) for x in gw.listeners],
                "attached": gw.attached,
                "served": gw.served,
                "hosts": gw.hosts,
                "secrets": sorted(gw.secrets),
                "unserved": {
                    g: {n: f"{p.reason}: {p.message}" for n, p in sorted(u.items())}
                    for g, u in sorted(gw.unserved.items())
                },
                "envoy": [gateway_listener(x, ENVOY_SETTINGS) for x in gw.listeners],
            }
            if gw.tls_listeners:
                out["gateways"]["tlsListeners"] = [dataclasses.asdict(x) for x in gw.tls_listeners]
                out["gateways"]["envoy"] += [gateway_tls_listener(x) for x in gw.tls_listeners]
            for r in routes:
                if "parents" in r.spec:
                    reports = [x for x in reports if x.id != r.id]
                    reports.append(gateway_status.route_report(r, gw, applied))
        for rec in lbs:
            if rec.id in gateways:
                placement = placements.get(rec.id)
                reports.append(
                    gateway_status.gateway_report(
                        rec, placement.address if placement else None, gw,
                        failures.get(rec.id), applied,
                    )
                )  # fmt: skip
                continue
            placement = placements.get(rec.id)
            ingress: list[LoadBalancerIngress] = []
            awaiting = None
            if placement is not None and l4["mode"] == "pool":
                ingress = [{"ip": placement.address}]
            elif placement is not None:
                ingress, awaiting = mgmt_ingress.get(rec.id, []), f"lb-{rec.id}"
            reports.append(lb_report(rec, ingress, failures.get(rec.id), awaiting, applied))
    out["status"] = {f"{r.kind.kind} {r.id}": dump_report(r) for r in reports}
    return out


def _placement(p: Placement) -> dict[str, Any]:
    return {
        "address": p.address,
        "ports": [f"{port}/{proto} -> {lp}" for port, proto, lp in p.ports],
    }


@pytest.mark.parametrize("case", cases("ir"))
def test_ir(case: str) -> None:
    check("ir", case, run_case(read_input("ir", case)))


def test_there_are_cases() -> None:
    assert len(cases("ir")) >= 10


def test_what_the_model_keeps_per_route_has_no_instance_dict() -> None:
    """The model, the status and the DNS names keep one of each of these per route (10,000
    of each at 10,000 routes): slots, not an instance dict (40 bytes less apiece)."""
    target = Target((("c", 1),), "r")
    kept = [
        target, PathRule("/", False, target), VirtualHost("t", "h", (), None),
        Cluster("c", "t", (), 1), DNSState(True, "Published", ""),
        SourceStatus("Ingress", "ns", "n", "u"), Event("Normal", "R", "m"),
    ]  # fmt: skip
    assert [type(k).__name__ for k in kept if hasattr(k, "__dict__")] == []
