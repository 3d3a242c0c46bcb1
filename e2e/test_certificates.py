"""Issued certificates: ACME against Pebble (a real ACME server, built from its Go module and
started by the fleet), which resolves through the fleet's BIND: HTTP-01 for a host (validated
only once kubelbd published it), DNS-01 for a wildcard and its base name (the answers
published into BIND by kubelbd, and gone afterwards); and cert-manager Certificates (the test
plays cert-manager). ACME hosts are under the fleet's zone, example.test, or the CA could not
resolve them."""

from __future__ import annotations

import base64
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from kubefleet import certs

from kubelbd.objects import CRDS, INGRESSES, SECRETS, Obj, Resource

from .support import (
    FleetHandle,
    backend,
    deploy_app,
    eventually,
    fleet_env,
    https_request,
    ingress_obj,
    namespace_in,
    route_condition,
    rule,
    served_over_plain_http,
    tenant_policy,
    tls_site,
    unique,
)

pytestmark = pytest.mark.e2e

CERTIFICATES = Resource("cert-manager.io/v1", "certificates")


@pytest.fixture
async def ns(fleet: FleetHandle) -> AsyncIterator[str]:
    async with namespace_in(fleet, "cert", ["alpha"]) as name:
        yield name


@pytest.fixture
def pebble_root(fleet: FleetHandle) -> Iterator[str]:
    """Pebble's issuing root, from its management API (it makes a new one at every start)."""
    import urllib.request

    from kubefleet.lb import build_pebble

    minica = ssl.create_default_context(cafile=str(build_pebble() / "pebble.minica.pem"))
    url = f"https://127.0.0.1:{fleet.layout.pebble_management_port}/roots/0"
    with urllib.request.urlopen(url, context=minica, timeout=5) as r:
        pem = r.read()
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(pem)
        f.flush()
        yield f.name


async def test_acme_issues_through_envoy_and_renews(
    fleet: FleetHandle, ns: str, pebble_root: str
) -> None:
    kube, mgmt = fleet.kube["alpha"], fleet.kube["mgmt"]
    host = f"{unique('acme')}.alpha.example.test"
    await tls_site(kube, ns, "web", host, "web-tls", **{"kubelb.io/tls-acme": "true"})
    https = f"127.0.0.1:{fleet.layout.envoy_https_port}"

    async def issued() -> dict:  # type: ignore[type-arg]
        status, body, cert = await https_request(https, host, "/acme", pebble_root)
        assert status == 200 and body["pod"].startswith("web-"), body
        return cert

    # Pebble fetched the challenge from Envoy's HTTP listener, so this proves that path too.
    first = await eventually(issued, timeout=60, what="a certificate issued by Pebble")
    secret = await mgmt.get(SECRETS, f"{ns}.web-tls", "tenant-alpha")
    assert secret["metadata"]["labels"]["kubelb.io/tls-source"] == "acme"

    await route_condition(mgmt, "alpha", f"{ns}.web", "CertificateReady", status="True")

    # The fleet's Pebble issues 45-second certificates: renewal comes once a third of the
    # lifetime is left (not before, and before the certificate expires).
    not_before = ssl.cert_time_to_seconds(first["notBefore"])
    not_after = ssl.cert_time_to_seconds(first["notAfter"])
    renew_at = not_after - (not_after - not_before) / 3

    async def renewed() -> float:
        cert = await issued()
        assert cert["serialNumber"] != first["serialNumber"], "not renewed yet"
        return time.time()

    seen = await eventually(renewed, timeout=90, interval=0.5, what="the certificate renewed")
    assert seen >= renew_at - 1, f"renewed {renew_at - seen:.1f} s before two thirds"
    assert seen < not_after, f"renewed {seen - not_after:.1f} s after the old one expired"


async def txt_at(fleet: FleetHandle, name: str) -> set[str]:
    """The TXT values the fleet's BIND answers at `name`."""
    host, _, port = fleet_env(fleet.layout)["DNS_SERVER_ADDR"].rpartition(":")
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    answer = await dns.asyncquery.tcp(query, host, port=int(port), timeout=2)
    if answer.rcode() != dns.rcode.NOERROR:
        return set()
    return {r.to_text() for rrset in answer.answer for r in rrset}


async def test_acme_issues_a_wildcard_by_dns01(
    fleet: FleetHandle, ns: str, pebble_root: str
) -> None:
    """`*.<tenant>.<base>`: the wildcard a tenant asks for under its own domain
    (--dns-base-domain), by naming it in an ACME TLS entry."""
    kube, mgmt = fleet.kube["alpha"], fleet.kube["mgmt"]
    base = f"alpha.{fleet_env(fleet.layout)['DNS_BASE_DOMAIN']}"
    await deploy_app(kube, ns, "wild")
    ing = ingress_obj(
        "wild",
        [rule(h, ("/", "Prefix", backend("wild"))) for h in (f"*.{base}", base)],
        tls=[{"hosts": [f"*.{base}", base], "secretName": "wild-tls"}],
        annotations={"kubelb.io/tls-acme": "true"},
    )
    await kube.create(INGRESSES, ing, ns)
    https = f"127.0.0.1:{fleet.layout.envoy_https_port}"

    async def issued(name: str) -> dict:  # type: ignore[type-arg]
        status, body, cert = await https_request(https, name, "/wild", pebble_root)
        assert status == 200 and body["pod"].startswith("wild-"), body
        return cert

    # Pebble could only validate the wildcard by the TXT kubelbd published into BIND.
    cert = await eventually(
        lambda: issued(f"www.{base}"), timeout=60, what="a wildcard certificate from Pebble"
    )
    assert {v for k, v in cert["subjectAltName"] if k == "DNS"} == {f"*.{base}", base}
    await issued(base)  # the same certificate serves the base name
    await route_condition(mgmt, "alpha", f"{ns}.wild", "CertificateReady", status="True")

    async def answers_removed() -> bool:
        assert await txt_at(fleet, f"_acme-challenge.{base}") == set()
        return True

    await eventually(answers_removed, what="the DNS-01 answers removed from BIND")


CERT_MANAGER_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "certificates.cert-manager.io"},
    "spec": {
        "group": "cert-manager.io",
        "scope": "Namespaced",
        "names": {"kind": "Certificate", "plural": "certificates", "singular": "certificate"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
async def cert_manager(fleet: FleetHandle) -> AsyncIterator[None]:
    """cert-manager's Certificate kind, installed for this module's tests (cert-manager cannot
    run here). Once: a CRD deleted is gone only after every object of it, and applying it
    again meanwhile does not bring it back."""
    mgmt = fleet.kube["mgmt"]
    await mgmt.apply(CRDS, CERT_MANAGER_CRD)

    async def served() -> bool:
        await mgmt.list(CERTIFICATES)
        return True

    await eventually(served, what="the Certificate kind to be served")
    yield
    await mgmt.delete(CRDS, "certificates.cert-manager.io")


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [("cert-manager.io/cluster-issuer", "ClusterIssuer"), ("cert-manager.io/issuer", "Issuer")],
)
async def test_cert_manager_certificate_is_requested_and_served(
    fleet: FleetHandle, ns: str, cert_manager: None, annotation: str, kind: str
) -> None:
    mgmt = fleet.kube["mgmt"]
    host = f"{unique('cm')}.alpha.test"
    # The operator lets alpha use this ClusterIssuer (none by default; Issuers in its own
    # namespace of the management cluster are its own).
    async with tenant_policy(mgmt, "alpha", {"clusterIssuers": ["letsencrypt-prod"]}):
        await _cert_manager_serves(fleet, ns, host, annotation, kind)


async def test_a_cluster_issuer_the_operator_did_not_allow_is_refused(
    fleet: FleetHandle, ns: str, cert_manager: None
) -> None:
    kube, mgmt = fleet.kube["alpha"], fleet.kube["mgmt"]
    host = f"{unique('cm')}.alpha.test"
    await tls_site(kube, ns, "cm", host, "cm-tls", **{"cert-manager.io/cluster-issuer": "other"})
    await route_condition(mgmt, "alpha", f"{ns}.cm", "Accepted", reason="IssuerNotAllowed")
    assert await mgmt.get_or_none(CERTIFICATES, f"{ns}.cm-tls", "tenant-alpha") is None
    await served_over_plain_http(fleet.layout, host)


async def _cert_manager_serves(
    fleet: FleetHandle, ns: str, host: str, annotation: str, kind: str
) -> None:
    kube, mgmt = fleet.kube["alpha"], fleet.kube["mgmt"]
    await tls_site(kube, ns, "cm", host, "cm-tls", **{annotation: "letsencrypt-prod"})

    async def requested() -> Obj:
        return await mgmt.get(CERTIFICATES, f"{ns}.cm-tls", "tenant-alpha")

    cert_request = await eventually(requested, what="a Certificate in tenant-alpha")
    spec = cert_request["spec"]
    assert spec["dnsNames"] == [host]
    assert spec["secretName"] == f"{ns}.cm-tls"
    assert spec["issuerRef"] == {"group": "cert-manager.io", "kind": kind,
                                 "name": "letsencrypt-prod"}  # fmt: skip

    # Until the Secret exists, the Route says it waits for cert-manager; HTTP is not redirected.
    await route_condition(
        mgmt, "alpha", f"{ns}.cm", "CertificateReady", reason="WaitingForCertManager"
    )
    await served_over_plain_http(fleet.layout, host)

    # Play cert-manager: write the Secret it would write, with the template's labels.
    authority = certs.new_ca("fake-cert-manager-issuer")
    pair = certs.issue(authority, host, dns=(host,), server=True)
    template = spec["secretTemplate"]
    await mgmt.create(
        SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": spec["secretName"], "labels": template["labels"]},
            "data": {
                "tls.crt": base64.b64encode(pair.cert_pem()).decode(),
                "tls.key": base64.b64encode(pair.key_pem()).decode(),
            },
        },
        "tenant-alpha",
    )
    with tempfile.NamedTemporaryFile(suffix=".pem") as ca:
        ca.write(authority.cert_pem())
        ca.flush()

        async def served() -> bool:
            https = f"127.0.0.1:{fleet.layout.envoy_https_port}"
            status, body, _ = await https_request(https, host, "/cm", ca.name)
            assert status == 200 and body["pod"].startswith("cm-"), body
            return True

        await eventually(served, what="the cert-manager Secret served over HTTPS")
    # The Ingress going away takes its Certificate with it.
    await kube.delete(INGRESSES, "cm", ns)

    async def gone() -> bool:
        assert await mgmt.get_or_none(CERTIFICATES, f"{ns}.cm-tls", "tenant-alpha") is None
        return True

    await eventually(gone, what="the Certificate to be deleted")
