"""BackendTLSPolicy: how policies are read (which applies, what is refused and why), what the
caches keep of a tenant's ConfigMaps, and the real Envoy accepting the clusters they make.
The whole picture is the golden cases sources/backendtls, ir/gateway-backend-tls and
envoy/backend-tls."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from kubelbd.objects import CONFIGMAPS, SERVICES, Obj, Resource
from kubelbd.records.policy import Policy
from kubelbd.sources import backendtls
from kubelbd.sources.backendtls import BACKEND_TLS_POLICIES

from .goldens import read_input
from .test_golden_envoy import render
from .test_properties import _fails, envoy_validate, needs_envoy, static_bootstrap

CA = read_input("sources", "backendtls")["tenants"][0]["configMaps"][0]["data"]["ca.crt"]


class View:
    def __init__(self, objects: dict[Resource, list[Obj]]) -> None:
        self.objects = objects
        self.policy = Policy()

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
    assert sum("transport_socket" in c for c in files["cds.json"]) == 2
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
