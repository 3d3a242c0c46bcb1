"""BackendTLSPolicy: how policies are read (which applies, what is refused and why), what the
caches keep of a tenant's ConfigMaps, and the real Envoy accepting the clusters they make.
The whole picture is the golden cases sources/backendtls, ir/gateway-backend-tls and
envoy/backend-tls."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from kubelbd.objects import CONFIGMAPS, SERVICES, Obj, Resource
from kubelbd.records.policy import Policy
from kubelbd.sources import backendtls, gatewayapi, httproute
from kubelbd.sources.backendtls import BACKEND_TLS_POLICIES
from kubelbd.sources.backendtlspolicy import statuses
from kubelbd.sources.gatewayapi import GATEWAYS

from .goldens import read_input
from .test_golden_envoy import render
from .test_properties import _fails, envoy_validate, needs_envoy, static_bootstrap

CA = read_input("sources", "backendtls")["tenants"][0]["configMaps"][0]["data"]["ca.crt"]


class View:
    def __init__(self, objects: dict[Resource, list[Obj]]) -> None:
        self.objects = objects
        self.policy = Policy()
        self.memo: dict[str, Any] = {}

    def get(self, resource: Resource, namespace: str, name: str) -> Obj | None:
        return next(
            (
                o
                for o in self.objects.get(resource, [])
                if o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
            ),
            None,
        )

    def all(self, resource: Resource) -> Iterable[Obj]:
        return self.objects.get(resource, [])

    def twin(self, namespace: str, name: str) -> Obj | None:
        return None


def policy(
    name: str, target: dict[str, Any], validation: Any, ns: str = "apps", **meta: Any
) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, **meta},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", **target}],
            "validation": validation,
        },
    }


def ca_ref(name: str = "ca", kind: str = "ConfigMap") -> dict[str, str]:
    return {"group": "", "kind": kind, "name": name}


def config_map(name: str, ca: str, ns: str = "apps") -> Obj:
    return backendtls.kept_config_map(
        {"metadata": {"name": name, "namespace": ns}, "data": {"ca.crt": ca}}
    )


SERVICE = {
    "metadata": {"name": "web", "namespace": "apps"},
    "spec": {"ports": [{"name": "https", "port": 443}, {"port": 8443}]},
}


def view(*policies: Obj, maps: tuple[Obj, ...] = ()) -> View:
    return View({
        BACKEND_TLS_POLICIES: list(policies),
        CONFIGMAPS: [config_map("ca", CA), *maps],
        SERVICES: [SERVICE],
    })  # fmt: skip


def test_the_caches_keep_a_ca_bundle_and_nothing_else_of_a_config_map() -> None:
    obj = {
        "metadata": {"name": "x", "namespace": "n", "annotations": {"a": "b" * 1000}},
        "data": {"ca.crt": CA, "other": "y" * 100_000},
        "binaryData": {"z": "AAAA"},
    }
    kept = backendtls.kept_config_map(obj)
    assert kept == {"metadata": {"name": "x", "namespace": "n"}, "data": {"ca.crt": CA},
                    "tooLarge": False}  # fmt: skip
    big = backendtls.kept_config_map({"metadata": {"name": "x"}, "data": {"ca.crt": CA * 100}})
    assert big["data"] == {} and big["tooLarge"] is True
    assert backendtls.kept_config_map({"metadata": {"name": "x"}}) == {"metadata": {"name": "x"}}
    odd = backendtls.kept_config_map({"metadata": {"name": "x"}, "data": ["ca.crt"]})
    assert odd == {"metadata": {"name": "x"}}  # what no API server should send: nothing kept


def test_a_policy_naming_the_port_precedes_one_for_the_whole_service_and_the_oldest_wins() -> None:
    valid = {"caCertificateRefs": [ca_ref()], "hostname": "a.example.com"}
    whole = policy("whole", {"name": "web"}, valid, creationTimestamp="2026-01-01T00:00:00Z")
    feb = "2026-02-01T00:00:00Z"
    https = {"name": "web", "sectionName": "https"}
    port = policy("port", https, {**valid, "hostname": "port.example.com"}, creationTimestamp=feb)
    later = policy("b-later", https, {**valid, "hostname": "later.example.com"},
                   creationTimestamp=feb)  # fmt: skip
    v = view(later, whole, port)
    tls = backendtls.upstream(v, "apps", "web", 443)
    assert isinstance(tls, dict) and tls["hostname"] == "later.example.com"  # same age: by name
    unnamed = backendtls.upstream(v, "apps", "web", 8443)
    assert isinstance(unnamed, dict) and unnamed["hostname"] == "a.example.com"
    assert backendtls.upstream(v, "other", "web", 443) is None  # policies are namespaced
    assert backendtls.upstream(view(), "apps", "web", 443) is None


@pytest.mark.parametrize(
    ("validation", "maps", "reason"),
    [
        ({"caCertificateRefs": [ca_ref("nope")], "hostname": "a.example.com"}, (),
         "InvalidCACertificateRef"),
        ({"caCertificateRefs": [ca_ref("bad")], "hostname": "a.example.com"},
         (config_map("bad", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),),
         "InvalidCACertificateRef"),
        ({"caCertificateRefs": [ca_ref("big")], "hostname": "a.example.com"},
         (config_map("big", CA * 50),), "InvalidCACertificateRef"),
        ({"caCertificateRefs": [ca_ref("ca", "Secret")], "hostname": "a.example.com"}, (),
         "InvalidKind"),
    ],
)  # fmt: skip
def test_a_policy_without_a_usable_ca_leaves_its_backend_unserved(
    validation: Any, maps: tuple[Obj, ...], reason: str
) -> None:
    p = policy("p", {"name": "web"}, validation)
    v = view(p, maps=maps)
    verdict = backendtls.read(p, v)
    assert verdict.tls is None
    assert verdict.accepted[:2] == (False, "NoValidCACertificate")
    assert verdict.resolved[:2] == (False, reason)
    why = backendtls.upstream(v, "apps", "web", 443)
    assert isinstance(why, str) and why.startswith("BackendTLSPolicy apps/p: ")


@pytest.mark.parametrize(
    "validation",
    [
        {"caCertificateRefs": [ca_ref()], "hostname": "*.example.com"},
        {"caCertificateRefs": [ca_ref()], "hostname": "not a name"},
        {"caCertificateRefs": [ca_ref()], "hostname": "a.example.com",
         "subjectAltNames": [{"type": "Hostname"}]},
        {"caCertificateRefs": [ca_ref()], "hostname": "a.example.com",
         "subjectAltNames": [{"type": "URI", "uri": "no scheme"}]},
        {"wellKnownCACertificates": "System", "hostname": "a.example.com"},
        {"hostname": 5},  # a tenant may loosen its CRD: a shape that does not fit
        "nonsense",
    ],
)  # fmt: skip
def test_a_policy_kubelbd_cannot_use_is_refused_never_an_exception(validation: Any) -> None:
    p = policy("p", {"name": "web"}, validation)
    verdict = backendtls.read(p, view(p))
    assert verdict.tls is None and verdict.accepted[0] is False
    assert isinstance(backendtls.upstream(view(p), "apps", "web", 443), str)


def test_equal_policies_are_one_key() -> None:
    refs = [ca_ref()]
    a = backendtls.read(
        policy("a", {"name": "web"}, {"caCertificateRefs": refs, "hostname": "x.example.com"}),
        view(),
    )
    b = backendtls.read(
        policy("b", {"name": "web"}, {"caCertificateRefs": refs, "hostname": "X.example.com."}),
        view(),
    )
    assert a.tls is not None and b.tls is not None
    assert backendtls.key_of(a.tls) == backendtls.key_of(b.tls)


@needs_envoy
def test_envoy_accepts_clusters_dialled_in_tls() -> None:
    files = render(read_input("envoy", "backend-tls"))
    assert sum("transport_socket" in c for c in files["cds.pb"]) == 2
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


def test_only_certificates_reach_envoy_as_cryptography_writes_them() -> None:
    noisy = f"comment\n{CA}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\ntail"
    assert backendtls.certificates(noisy) == CA
    assert backendtls.certificates(CA * 40) == CA * backendtls.MAX_CERTIFICATES
    assert (
        backendtls.certificates("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        is None
    )


#: certificates a hostile tenant may name as its CA (a hostile review's: v1 and v2 with
#: extensions, names that are no string of their type, keys that are no key, odd serials,
#: duplicated or malformed extensions, curves BoringSSL lacks), by what is odd about them
HOSTILE = json.loads((Path(__file__).parent / "data" / "hostile-ca-certificates.json").read_text())


@needs_envoy
def test_a_ca_certificate_kubelbd_takes_is_one_envoy_loads() -> None:
    """Each hostile certificate is refused, or Envoy loads the cluster it makes: never a
    cluster file Envoy refuses (its other clusters would wait behind it)."""
    case = read_input("envoy", "backend-tls")
    template = next(iter(case["ir"]["clusters"].values()))
    taken = {name: backendtls.certificates(pem) for name, pem in HOSTILE.items()}
    assert taken["good"] is not None
    assert taken["v1_with_ext"] is None and taken["utf8_invalid"] is None
    case["ir"]["clusters"] = {
        f"alpha/apps/{name}/30443/tls-x": {**template, "tls": {**template["tls"], "ca": ca}}
        for name, ca in taken.items()
        if ca is not None
    }
    case["ir"]["vhosts"] = {}
    files = render(case)
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


def test_the_policys_index_is_built_once_per_change_of_the_policies() -> None:
    p = policy("p", {"name": "web"}, {"caCertificateRefs": [ca_ref()], "hostname": "a.b"})
    v = view(p)
    first = backendtls.index(v)
    assert backendtls.index(v) is first
    p["metadata"]["resourceVersion"] = "2"
    assert backendtls.index(v) is not first


def test_a_policy_names_the_tcp_port_of_that_number() -> None:
    """A Service may have 443/UDP and 443/TCP under two names: the policy naming the TCP one
    applies (the backend is the TCP port)."""
    svc = {
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"ports": [{"name": "quic", "port": 443, "protocol": "UDP"},
                           {"name": "https", "port": 443, "protocol": "TCP"}]},
    }  # fmt: skip
    p = policy("p", {"name": "web", "sectionName": "https"},
               {"caCertificateRefs": [ca_ref()], "hostname": "a.example.com"})  # fmt: skip
    v = View({BACKEND_TLS_POLICIES: [p], CONFIGMAPS: [config_map("ca", CA)], SERVICES: [svc]})
    tls = backendtls.upstream(v, "apps", "web", 443)
    assert isinstance(tls, dict) and tls["hostname"] == "a.example.com"


def test_kubelbd_reports_on_the_policies_it_has_something_to_say_about() -> None:
    """No route of kubelbd's sends to what a policy targets: its status is another
    controller's business (none written); an entry kubelbd wrote before is taken out, and
    other controllers' entries stay as they are."""
    theirs = {"ancestorRef": {"name": "mesh"}, "controllerName": "example.com/mesh",
              "conditions": []}  # fmt: skip
    mine = {"ancestorRef": {"name": "gw"}, "controllerName": gatewayapi.CONTROLLER,
            "conditions": []}  # fmt: skip
    valid = {"caCertificateRefs": [ca_ref()], "hostname": "a.example.com"}
    alone = policy("alone", {"name": "web"}, valid)
    alone["status"] = {"ancestors": [theirs]}
    left = policy("left", {"name": "web"}, valid)
    left["status"] = {"ancestors": [theirs, mine]}
    reported = {o["metadata"]["name"]: o["status"] for _, o in statuses(view(alone, left))}
    assert reported == {"left": {"ancestors": [theirs]}}


def test_a_route_carries_at_most_max_per_route_validations() -> None:
    n = backendtls.MAX_PER_ROUTE + 1
    services = [{"metadata": {"name": f"s{i}", "namespace": "apps"},
                 "spec": {"type": "NodePort", "ports": [{"port": 443, "nodePort": 30000 + i}]}}
                for i in range(n)]  # fmt: skip
    policies = [policy(f"p{i}", {"name": f"s{i}"},
                       {"caCertificateRefs": [ca_ref()], "hostname": f"h{i}.example.com"})
                for i in range(n)]  # fmt: skip
    listener = {"name": "http", "port": 80, "protocol": "HTTP"}
    gateway = {"metadata": {"name": "gw", "namespace": "apps"},
               "spec": {"gatewayClassName": "kubelb", "listeners": [listener]}}  # fmt: skip
    route = {"metadata": {"name": "r", "namespace": "apps", "uid": "u", "generation": 1},
             "spec": {"parentRefs": [{"name": "gw"}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/{half}"}}],
                                 "backendRefs": [{"name": f"s{i}", "port": 443}
                                                 for i in range(n) if i % 2 == half]}
                                for half in (0, 1)]}}  # fmt: skip
    v = View({BACKEND_TLS_POLICIES: policies, CONFIGMAPS: [config_map("ca", CA)],
              SERVICES: services, GATEWAYS: [gateway]})  # fmt: skip
    result = httproute.translate(route, v)
    assert len(result.spec.get("backendTLS", {})) == backendtls.MAX_PER_ROUTE
    paths = result.spec["rules"][0]["paths"]
    backends = [b for p in paths for b in p["backends"]]
    assert len(backends) == n and sum("tls" in b for b in backends) == n - 1
    (refused,) = [b for b in backends if "tls" not in b]
    assert refused is backends[-1] and "nodePort" not in refused  # the last one met
    assert "BackendTLSPolicy validations" in refused["problem"]
