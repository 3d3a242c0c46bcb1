"""kubelbd.certs.issuers.Issuers with cert-manager: a Certificate per wanted certificate in the
tenant's namespace, what the Route shows meanwhile, and a cluster without cert-manager."""

from __future__ import annotations

import math

import pytest

from kubelbd.certs import issuers as issuers_module
from kubelbd.certs.acme import ACMESettings
from kubelbd.certs.cert_manager import CERTIFICATES
from kubelbd.certs.issuers import Issuers
from kubelbd.ir.tls import Wanted
from kubelbd.objects import NAMESPACES
from kubelbd.records.names import TLS_LABEL, labels

from .fakekube import FakeKube
from .orchestration import namespace, running, until

WANTED = Wanted(
    "a/default.shop-tls", ("shop.example.com",), "cert-manager", ("ClusterIssuer", "le")
)


async def never_published(challenges: dict[str, str]) -> bool:
    raise AssertionError("no ACME certificate is wanted")


async def issuers() -> tuple[FakeKube, Issuers, list[int]]:
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace("tenant-a", labels("a")))
    progress: list[int] = []
    out = Issuers(mgmt, ACMESettings(), dict, never_published, lambda: progress.append(1))
    return mgmt, out, progress


def reason(iss: Issuers, w: Wanted) -> str:
    problem = iss.pending().get(w.secret_id)
    return problem.reason if problem is not None else ""


async def test_a_wanted_certificate_is_requested_shown_as_waiting_and_withdrawn() -> None:
    mgmt, iss, progress = await issuers()
    iss.update({WANTED.secret_id: WANTED})
    async with running(iss.run):
        await until(lambda: mgmt.stored(CERTIFICATES, "default.shop-tls", "tenant-a"), "applied")
        cert = mgmt.stored(CERTIFICATES, "default.shop-tls", "tenant-a")
        assert cert is not None
        assert cert["metadata"]["labels"] == labels("a")
        assert cert["spec"]["secretName"] == "default.shop-tls"
        assert cert["spec"]["dnsNames"] == ["shop.example.com"]
        assert cert["spec"]["issuerRef"] == {
            "group": "cert-manager.io",
            "kind": "ClusterIssuer",
            "name": "le",
        }
        assert cert["spec"]["secretTemplate"]["labels"][TLS_LABEL] == "true"
        await until(lambda: reason(iss, WANTED) == "WaitingForCertManager", "pending")
        assert progress  # the data plane was told

        iss.update({})
        await until(
            lambda: mgmt.stored(CERTIFICATES, "default.shop-tls", "tenant-a") is None, "deleted"
        )
        await until(lambda: iss.pending() == {}, "nothing pending")


async def test_without_cert_manager_the_route_says_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(issuers_module, "NOT_INSTALLED_RETRY", 0.05)
    mgmt, iss, _ = await issuers()
    mgmt.fail("*", CERTIFICATES, status=404, times=math.inf)  # the CRD is not there
    iss.update({WANTED.secret_id: WANTED})
    async with running(iss.run):
        await until(lambda: reason(iss, WANTED) == "CertManagerNotInstalled", "pending")
        assert mgmt.stored(CERTIFICATES, "default.shop-tls", "tenant-a") is None
        # Installed later: requested again soon, with nothing else changing (the issuers
        # otherwise sleep until a certificate is due, up to a minute).
        mgmt.heal()
        await until(lambda: reason(iss, WANTED) == "WaitingForCertManager", "requested")
        assert mgmt.stored(CERTIFICATES, "default.shop-tls", "tenant-a") is not None


async def test_a_certificate_whose_delete_failed_is_deleted_on_a_later_pass() -> None:
    mgmt, iss, _ = await issuers()
    iss.update({WANTED.secret_id: WANTED})
    async with running(iss.run):
        await until(lambda: reason(iss, WANTED) == "WaitingForCertManager", "requested")
        mgmt.fail("delete", CERTIFICATES, status=500)
        iss.update({})
        await until(lambda: any(c.method == "delete" for c in mgmt.calls), "a delete refused")
        # A later pass (here: the next change of what is wanted) tries again.
        other = Wanted("a/default.other-tls", ("o.example.com",), "cert-manager", ("Issuer", "ca"))
        iss.update({other.secret_id: other})
        await until(lambda: mgmt.stored(CERTIFICATES, "default.other-tls", "tenant-a"), "a pass")
        await until(lambda: iss.pending().get(other.secret_id), "the pass done")
        assert mgmt.stored(CERTIFICATES, "default.shop-tls", "tenant-a") is None


async def test_a_certificate_the_api_refuses_is_its_routes_problem_only() -> None:
    """One request cert-manager's API refuses (422: a value it does not take) must not hold
    up any other tenant's certificates."""
    mgmt, iss, _ = await issuers()
    other = Wanted("b/default.web-tls", ("web.example.com",), "cert-manager", ("Issuer", "ca"))
    await mgmt.create(NAMESPACES, namespace("tenant-b", labels("b")))
    mgmt.fail("apply", CERTIFICATES, name="default.shop-tls", status=422, times=math.inf)
    iss.update({WANTED.secret_id: WANTED, other.secret_id: other})
    async with running(iss.run):
        await until(lambda: reason(iss, WANTED) == "CertificateRefused", "refused")
        await until(lambda: reason(iss, other) == "WaitingForCertManager", "the other requested")
        assert mgmt.stored(CERTIFICATES, "default.web-tls", "tenant-b") is not None
