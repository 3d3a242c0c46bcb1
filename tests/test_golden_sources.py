"""Golden: tenant objects → record specs (and the problems they carry), per source kind.

Input: tenants, each with IngressClasses, Services and Ingresses as a tenant would write
them, and Gateway API objects (gateways, httproutes, referenceGrants, gatewayClasses, and
namespaces: name -> labels). kubelbd's NodePort twins are added as it would make them,
with nodePorts 32000 + n.
Output: per tenant object, the record it becomes (kind, name, spec) or why it is not ours.
Every spec must fit its CRD's schema and its TypedDict (what the data plane reads back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from kubelbd.kube import crds
from kubelbd.objects import CONFIGMAPS, INGRESS_CLASSES, NAMESPACES, SERVICES, Obj, Resource
from kubelbd.records import parse
from kubelbd.records.claims import with_claims
from kubelbd.records.policy import Policy, for_tenant, policy_of
from kubelbd.sources import SOURCES, backendtls, dnsnames, gatewayapi, twins
from kubelbd.sources.base import Source

from .goldens import cases, check, conforms, read_input

#: where a case lists the Gateway API objects of a tenant
GATEWAY_KINDS = {
    "gateways": gatewayapi.GATEWAYS,
    "httproutes": gatewayapi.HTTPROUTES,
    "grpcroutes": gatewayapi.GRPCROUTES,
    "tlsroutes": gatewayapi.TLSROUTES,
    "tcproutes": gatewayapi.TCPROUTES,
    "udproutes": gatewayapi.UDPROUTES,
    "referenceGrants": gatewayapi.REFERENCE_GRANTS,
    "gatewayClasses": gatewayapi.GATEWAY_CLASSES,
    "backendTLSPolicies": backendtls.BACKEND_TLS_POLICIES,
}

SCHEMAS = {
    doc["spec"]["names"]["kind"]: doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in crds.load()
}


class View:
    """A tenant's caches, from the case; twins made as kubelbd would (nodePorts 32000 + n)."""

    def __init__(self, tenant: dict[str, Any]) -> None:
        # The operator's policy, as a Tenant record's spec would say it (default: open), and
        # the fleet's --dns-base-domain when the case names one.
        defaults = Policy(base_domain=tenant.get("baseDomain", ""))
        self.memo: dict[str, Any] = {}
        self.policy = for_tenant(policy_of(tenant.get("policy"), defaults), tenant.get("name", ""))
        self.objects: dict[Resource, dict[str, Obj]] = {SERVICES: {}, INGRESS_CLASSES: {}}
        n = 0
        for svc in tenant.get("services") or []:
            meta = svc["metadata"]
            meta.setdefault("namespace", "default")
            meta.setdefault("uid", f"uid-{meta['name']}")
            self.objects[SERVICES][f"{meta['namespace']}/{meta['name']}"] = svc
        for svc in list(self.objects[SERVICES].values()):
            if twins.needs_twin(svc):
                twin = twins.twin(svc)
                for p in twin["spec"]["ports"]:
                    p["nodePort"] = 32000 + n
                    n += 1
                meta = twin["metadata"]
                self.objects[SERVICES][f"{meta['namespace']}/{meta['name']}"] = twin
        for cls in tenant.get("ingressClasses") or []:
            self.objects[INGRESS_CLASSES][cls["metadata"]["name"]] = cls
        # Gateway API: Gateways (and the routes, grants, classes) where their kind keeps
        # them; namespaces by name, with their labels (allowedRoutes selectors read them).
        for field, resource in GATEWAY_KINDS.items():
            kept = self.objects.setdefault(resource, {})
            for obj in tenant.get(field) or []:
                meta = obj["metadata"]
                if resource.namespaced:
                    meta.setdefault("namespace", "default")
                    meta.setdefault("uid", f"uid-{meta['name']}")
                    meta.setdefault("generation", 1)
                kept[
                    f"{meta['namespace']}/{meta['name']}" if resource.namespaced else meta["name"]
                ] = obj
        # ConfigMaps as the caches keep them (a CA bundle, nothing else).
        for cm in tenant.get("configMaps") or []:
            cm["metadata"].setdefault("namespace", "default")
            kept_cm = backendtls.kept_config_map(cm)
            meta = kept_cm["metadata"]
            self.objects.setdefault(CONFIGMAPS, {})[f"{meta['namespace']}/{meta['name']}"] = kept_cm
        namespaces = self.objects.setdefault(NAMESPACES, {})
        for name, labels in (tenant.get("namespaces") or {}).items():
            namespaces[name] = {"metadata": {"name": name, "labels": labels or {}}}

    def get(self, resource: Resource, namespace: str, name: str) -> Obj | None:
        k = f"{namespace}/{name}" if resource.namespaced else name
        return self.objects.get(resource, {}).get(k)

    def all(self, resource: Resource) -> Iterable[Obj]:
        return self.objects.get(resource, {}).values()

    def twin(self, namespace: str, name: str) -> Obj | None:
        return self.get(SERVICES, namespace, twins.twin_name(name))


def translate(source: Source, obj: Obj, view: View) -> Any:
    meta = obj["metadata"]
    if not source.is_ours(obj, view):
        return "not ours"
    record = source.record_name(meta["namespace"], meta["name"])
    result = source.translate(obj, view)
    spec_schema = SCHEMAS[source.record.kind]["properties"]["spec"]
    assert conforms(result.spec, spec_schema) == [], conforms(result.spec, spec_schema)
    if source.record.kind == "Route":
        # As the tenant side writes it: with when each host was claimed.
        stamped = with_claims(result.spec, None, "", "2026-01-01T00:00:00.000000Z")
        assert conforms(stamped, spec_schema) == [], conforms(stamped, spec_schema)
        assert parse.route_spec(stamped) == stamped
    checked = (parse.route_spec if source.record.kind == "Route" else parse.lb_spec)(result.spec)
    assert checked == result.spec, "the spec does not survive the data plane's parsing"
    assert [p.spec() for p in result.problems] == result.spec.get("problems", [])
    out = {"record": f"{source.record.kind} {record}", "spec": result.spec}
    copied = source.references(obj, view).tls_secrets
    if copied:  # the tenant Secrets copied to the management cluster for it
        out["tlsSecrets"] = sorted(f"{ns}/{name}" for ns, name in copied)
    return out


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tenant in case["tenants"]:
        view = View(tenant)
        got: dict[str, Any] = {}
        kinds = {
            "Ingress": tenant.get("ingresses") or [],
            "Service": tenant.get("services") or [],
            "Gateway": tenant.get("gateways") or [],
            "HTTPRoute": tenant.get("httproutes") or [],
            "GRPCRoute": tenant.get("grpcroutes") or [],
            "TLSRoute": tenant.get("tlsroutes") or [],
            "TCPRoute": tenant.get("tcproutes") or [],
            "UDPRoute": tenant.get("udproutes") or [],
        }
        for source in SOURCES:
            if source.kind == "BackendTLSPolicy":
                # Nothing of its own is served: the statuses it reports.
                for _, reported in source.reported_objects(view):
                    meta = reported["metadata"]
                    key = f"BackendTLSPolicy {meta['namespace']}/{meta['name']}"
                    got[key] = {"status": reported["status"]}
                continue
            for obj in kinds[source.kind]:
                meta = obj["metadata"]
                meta.setdefault("namespace", "default")
                meta.setdefault("uid", f"uid-{meta['name']}")
                meta.setdefault("generation", 1)
                if source.kind == "Service" and obj.get("spec", {}).get("type") != "LoadBalancer":
                    continue  # Services that are only backends: not worth a line each
                got[f"{source.kind} {meta['namespace']}/{meta['name']}"] = translate(
                    source, obj, view
                )
        out[tenant["name"]] = got
    return out


@pytest.mark.parametrize("case", cases("sources"))
def test_sources(case: str) -> None:
    check("sources", case, run_case(read_input("sources", case)))


def test_there_are_cases() -> None:
    assert len(cases("sources")) >= 8


def test_an_object_names_at_most_max_names() -> None:
    """A tenant's annotation cannot fill the zone: past MAX_NAMES the rest is a problem."""
    names = ",".join(f"n{i}.example.test" for i in range(dnsnames.MAX_NAMES + 5))
    got = dnsnames.read({"kubelb.io/hostname": names}, Policy(), "default", "db", names=True)
    assert len(got.hostnames) == dnsnames.MAX_NAMES
    assert [p.reason for p in got.problems] == ["TooManyNames"]


@pytest.mark.parametrize("raw", ["²", "1" * 5000, "-5", "1.5", "5d", "86401", "25h", ""])
def test_a_ttl_that_is_no_ttl_is_a_problem_never_an_exception(raw: str) -> None:
    ttl, problems = dnsnames.ttl_of({"kubelb.io/dns-ttl": raw})
    assert ttl is None and [p.reason for p in problems] == ["InvalidAnnotation"]


@pytest.mark.parametrize(("raw", "seconds"), [("0", 0), ("90s", 90), ("5m", 300), ("1h30m", 5400)])
def test_ttls_in_seconds_or_go_durations(raw: str, seconds: int) -> None:
    assert dnsnames.ttl_of({"external-dns.alpha.kubernetes.io/ttl": raw}) == (seconds, [])


def test_a_repeated_or_refused_annotation_costs_a_bounded_spec() -> None:
    policy = for_tenant(Policy(base_domain="lb.example.test"), "alpha")
    autos = dnsnames.read(
        {"kubelb.io/hostname": ",".join(["auto"] * 10000)}, policy, "d", "db", True
    )
    assert autos.hostnames == ["db-d.alpha.lb.example.test"] and autos.problems == []
    refused = ",".join(f"x{i}.beta.lb.example.test" for i in range(10000))
    many = dnsnames.read({"kubelb.io/hostname": refused}, policy, "d", "db", names=True)
    assert many.hostnames == [] and len(many.problems) == dnsnames.MAX_PROBLEMS
