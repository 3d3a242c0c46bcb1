"""The HTTPS side of the renderer: which hosts its front table lists, and when it is rewritten."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubefleet import certs

from kubelbd import tls
from kubelbd.envoy_config import FRONT, FRONT_TLS, Renderer, Settings, rds_file
from kubelbd.ir import Model, RouteRecord, TenantRecord

from .test_properties import envoy_validate, needs_envoy, static_bootstrap

SETTINGS = Settings(config_dir="/config", shards=3, https_port=8443)
BACKEND = {"service": "web", "port": "80", "nodePort": 30080}
SECRET = "alpha/default.site-tls"


def _route(name: str, host: str, with_tls: bool = False) -> RouteRecord:
    source = {"namespace": "default", "name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}
    spec: dict[str, Any] = {
        "source": source,
        "rules": [
            {"host": host, "paths": [{"path": "/", "pathType": "Prefix", "backend": BACKEND}]}
        ],
    }
    if with_tls:
        spec["tls"] = [{"hosts": [host], "secretName": "site-tls"}]
    return RouteRecord("alpha", f"default.{name}", spec, 1)


def _domains(table: dict[str, Any]) -> set[str]:
    return {d for vh in table["virtual_hosts"] if vh["name"] != "*" for d in vh["domains"]}


def test_https_front_lists_only_hosts_with_a_certificate() -> None:
    authority = certs.new_ca("test-ca")
    pair = certs.issue(authority, "secure.example.com", dns=("secure.example.com",), server=True)
    secrets = {SECRET: tls.CertificateData(SECRET, pair.cert_pem(), pair.key_pem())}
    model, renderer = Model(), Renderer(SETTINGS)
    secure = _route("secure", "secure.example.com", with_tls=True)
    tenants = [TenantRecord("alpha", ("10.0.0.1",))]
    files = renderer.update(
        model.ir, model.apply([secure, _route("plain", "plain.example.com")], (), tenants)
    )
    plan = tls.plan(model.ir, [secure], secrets, dt.datetime.now(dt.UTC))
    assert set(plan.hosts) == {"secure.example.com"}
    tls_files, stale = renderer.update_tls(plan, {}, catch_all=False)
    files.update(tls_files)
    assert not stale
    assert _domains(files[rds_file(FRONT_TLS)][0]) == {"secure.example.com"}
    # Plain HTTP still serves the plain host and redirects the secure one.
    http = files[rds_file(FRONT)][0]
    assert "plain.example.com" in _domains(http)
    redirect = next(vh for vh in http["virtual_hosts"] if vh["name"] == "redirect-to-https")
    assert redirect["domains"] == ["secure.example.com"]

    # Another plain host: the HTTPS table (and Envoy's rebuild of it) stays as it is.
    more = renderer.update(model.ir, model.apply([_route("more", "more.example.com")]))
    assert rds_file(FRONT) in more and rds_file(FRONT_TLS) not in more
    # The secure host goes: the HTTPS table loses it at once, before the TLS plan catches up.
    gone = renderer.update(model.ir, model.apply((), ["alpha/default.secure"]))
    assert _domains(gone[rds_file(FRONT_TLS)][0]) == set()


def test_https_refuses_plain_hosts_under_a_tls_wildcard() -> None:
    authority = certs.new_ca("test-ca")
    pair = certs.issue(authority, "*.example.com", dns=("*.example.com",), server=True)
    secrets = {SECRET: tls.CertificateData(SECRET, pair.cert_pem(), pair.key_pem())}
    model, renderer = Model(), Renderer(SETTINGS)
    wild = _route("wild", "*.example.com", with_tls=True)
    tenants = [TenantRecord("alpha", ("10.0.0.1",)), TenantRecord("beta", ("10.0.0.2",))]
    older = {**_route("plain", "foo.example.com").spec}
    older["source"] = {**older["source"], "creationTimestamp": "2025-01-01T00:00:00Z"}
    plain = RouteRecord("beta", "default.plain", older, 1)  # older: beta holds foo
    files = renderer.update(model.ir, model.apply([wild, plain], (), tenants))
    plan = tls.plan(model.ir, [wild], secrets, dt.datetime.now(dt.UTC))
    files.update(renderer.update_tls(plan, {}, catch_all=True)[0])
    table = files[rds_file(FRONT_TLS)][0]
    by_name = {vh["name"]: vh for vh in table["virtual_hosts"]}
    assert by_name["no-certificate"]["domains"] == ["foo.example.com"]
    assert by_name["no-certificate"]["routes"][0]["direct_response"]["status"] == 421
    # No catch-all over HTTPS: a host without a certificate is not served there.
    assert by_name["*"]["routes"][-1]["direct_response"]["status"] == 404


@needs_envoy
def test_wildcard_redirects_only_what_the_certificate_covers() -> None:
    authority = certs.new_ca("test-ca")
    pair = certs.issue(authority, "*.example.com", dns=("*.example.com",), server=True)
    secrets = {SECRET: tls.CertificateData(SECRET, pair.cert_pem(), pair.key_pem())}
    settings = Settings(
        config_dir="/config", http_address="127.0.0.1", http_port=18080, https_port=18443, shards=2
    )
    model, renderer = Model(), Renderer(settings)
    wild = _route("wild", "*.example.com", with_tls=True)
    tenants = [TenantRecord("alpha", ("10.0.0.1",))]
    files = renderer.update(model.ir, model.apply([wild], (), tenants))
    plan = tls.plan(model.ir, [wild], secrets, dt.datetime.now(dt.UTC))
    files.update(renderer.update_tls(plan, {}, catch_all=False)[0])
    http = {vh["name"]: vh for vh in files[rds_file(FRONT)][0]["virtual_hosts"]}
    vhost = http["redirect-to-https:*.example.com"]
    guarded, fallback = vhost["routes"]
    assert guarded["redirect"]["https_redirect"] and guarded["match"]["headers"]
    assert fallback["route"]["cluster"].startswith("shard.")  # deeper names: as plain HTTP
    # Envoy accepts it (the HTTPS listener, with its SDS files, is left out of the check).
    files["lds.json"] = [x for x in files["lds.json"] if x["name"] != FRONT_TLS]
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, result.stderr[-3000:]
