"""Through a real Envoy: a TLS connection speaks only for the hosts of its certificate, and a
backend learns the client's real address.

Two tenants share the HTTPS listener: alpha serves a.example.com and *.apps.example.com,
beta b.example.com, each with its own certificate, and beta a plain-HTTP host. A request whose
Host the certificate of its connection does not serve (domain fronting: SNI of one tenant,
Host of another) must be answered 421 by Envoy and never reach a backend.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubefleet import certs

from kubelbd.envoy.admin import EnvoyAdmin
from kubelbd.envoy.renderer import Renderer
from kubelbd.ir import tls
from kubelbd.ir.http import Model
from kubelbd.overview.envoy_facts import envoy_facts
from kubelbd.records.types import RouteRecord, TenantRecord
from kubelbd.snapshots import ENVOY_RESOURCES

from . import records
from .live_envoy import Envoy, echo_backend, eventually, live_settings, request, running_envoy
from .test_properties import needs_envoy

pytestmark = needs_envoy


@dataclass
class LB:
    envoy: Envoy
    http_port: int
    https_port: int
    ca_pem: bytes

    def https(self, sni: str, host: str, **kw: Any) -> tuple[int, str]:
        """(status, backend that answered, or "" when Envoy did)."""
        r = request(self.https_port, host, sni=sni, ca_pem=self.ca_pem, **kw)
        return r.status, r.json()["backend"] if r.status == 200 else ""


def _route(tenant: str, name: str, port: int, hosts: dict[str, str | None]) -> RouteRecord:
    """`hosts`: host -> the secret serving it over TLS (None: plain HTTP only)."""
    backend = {"service": "web", "port": "80", "nodePort": port}
    paths = [{"path": "/", "pathType": "Prefix", "backends": [backend]}]
    rules = [{"host": h, "paths": paths} for h in hosts]
    tls_entries = [
        {"hosts": [h], "secretName": s, "source": "tenant"} for h, s in hosts.items() if s
    ]
    return records.route(tenant, f"default.{name}", rules, tls=tls_entries)


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LB]:
    config_dir: Path = tmp_path_factory.mktemp("envoy")
    ca = certs.new_ca("live-ca")
    secrets = {}
    for sid, names in {
        "alpha/default.a-tls": ("a.example.com",),
        "alpha/default.wild-tls": ("*.apps.example.com",),
        "beta/default.b-tls": ("b.example.com",),
    }.items():
        pair = certs.issue(ca, names[0], dns=names, server=True)
        secrets[sid] = tls.CertificateData(sid, pair.cert_pem(), pair.key_pem())
    with echo_backend("alpha") as alpha_port, echo_backend("beta") as beta_port:
        settings = live_settings(config_dir, shards=2)
        routes = [
            _route(
                "alpha",
                "web",
                alpha_port,
                {"a.example.com": "a-tls", "*.apps.example.com": "wild-tls"},
            ),
            _route("beta", "web", beta_port, {"b.example.com": "b-tls", "plain.example.com": None}),
        ]
        tenants = [TenantRecord("alpha", ("127.0.0.1",)), TenantRecord("beta", ("127.0.0.1",))]
        model, renderer = Model(), Renderer(settings)
        files = renderer.update(model.ir, model.apply(routes, (), tenants))
        plan = tls.plan(model.ir, routes, secrets, dt.datetime.now(dt.UTC))
        assert not plan.problems
        files.update(renderer.update_tls(plan, {}, catch_all=False))
        with running_envoy(config_dir, files, list(secrets.values())) as envoy:
            out = LB(envoy, settings.http_port, settings.https_port, ca.cert_pem())
            assert eventually(lambda: out.https("a.example.com", "a.example.com")) == (
                200,
                "alpha",
            ), envoy.log()
            assert eventually(lambda: out.https("b.example.com", "b.example.com")) == (
                200,
                "beta",
            )
            yield out


def test_each_certificate_serves_its_own_hosts(lb: LB) -> None:
    assert lb.https("a.example.com", "a.example.com") == (200, "alpha")
    assert lb.https("b.example.com", "b.example.com") == (200, "beta")
    assert lb.https("x.apps.example.com", "x.apps.example.com") == (200, "alpha")
    # One certificate, any of its hosts: the wildcard covers its one-label names.
    assert lb.https("x.apps.example.com", "y.apps.example.com") == (200, "alpha")
    # Host matching ignores case and a port.
    assert lb.https("a.example.com", "A.Example.COM:443") == (200, "alpha")
    assert lb.https("a.example.com", f"a.example.com:{lb.https_port}") == (200, "alpha")


@pytest.mark.parametrize(
    ("sni", "host"),
    [
        ("a.example.com", "b.example.com"),  # alpha's certificate, beta's host
        ("b.example.com", "a.example.com"),  # and the other way round
        ("a.example.com", "B.EXAMPLE.COM:8443"),
        ("a.example.com", "x.apps.example.com"),  # the same tenant, another certificate
        ("x.apps.example.com", "a.example.com"),
        ("x.apps.example.com", "b.example.com"),
        ("x.apps.example.com", "deep.x.apps.example.com"),  # beyond what the wildcard covers
        ("a.example.com", "plain.example.com"),  # a host served without TLS
        ("a.example.com", "unknown.example.org"),
    ],
)
def test_a_host_outside_the_connections_certificate_is_misdirected(
    lb: LB, sni: str, host: str
) -> None:
    assert lb.https(sni, host) == (421, "")


@pytest.mark.parametrize("client", ["127.0.0.1", "127.0.0.7"])
def test_the_backend_sees_the_client_address_over_http(lb: LB, client: str) -> None:
    # From 127.0.0.1 exactly, Envoy's own X-Forwarded-For names the machine's first
    # non-loopback address instead of the client.
    r = request(
        lb.http_port, "plain.example.com", source=client, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert r.status == 200, r.body
    got = {k.lower(): v for k, v in r.json()["headers"].items()}
    # What the client said stays, but the address Envoy saw comes last: the one to trust.
    assert [a.strip() for a in got["x-forwarded-for"].split(",")] == ["203.0.113.9", client]
    assert got["x-forwarded-proto"] == "http"


@pytest.mark.parametrize("client", ["127.0.0.1", "127.0.0.8"])
def test_the_backend_sees_the_client_address_over_https(lb: LB, client: str) -> None:
    r = request(
        lb.https_port, "a.example.com", sni="a.example.com", ca_pem=lb.ca_pem, source=client
    )
    assert r.status == 200, r.body
    got = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert got["x-forwarded-for"] == client
    assert got["x-forwarded-proto"] == "https"
    # Nothing kubelbd uses internally to route reaches the backend.
    assert not [k for k in got if k.startswith("x-kubelb")]


async def test_admin_says_which_tenant_and_certificate_serve_each_host(lb: LB) -> None:
    """What the operator's views read of Envoy (kubelbd.overview.envoy_facts), as a real
    Envoy's /config_dump says it: the shard tables' hosts by tenant, the certificate by SNI."""
    admin = EnvoyAdmin(lb.envoy.admin)
    try:
        dumps = [await admin.config_dump(r) for r in ENVOY_RESOURCES]
    finally:
        await admin.aclose()
    facts = envoy_facts([c for d in dumps for c in d or []])
    assert facts.http_hosts == {
        "a.example.com": "alpha",
        "*.apps.example.com": "alpha",
        "b.example.com": "beta",
        "plain.example.com": "beta",
    }
    assert facts.https_hosts == {
        "a.example.com": "alpha/default.a-tls",
        "*.apps.example.com": "alpha/default.wild-tls",
        "b.example.com": "beta/default.b-tls",
    }
