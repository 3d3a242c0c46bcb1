"""The HTTPS side of the renderer: which hosts its front table lists, and when it is rewritten."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubefleet import certs

from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.settings import FRONT, FRONT_TLS, Settings, rds_file
from kubelbd.envoy.tls import CERTIFICATE_HEADER
from kubelbd.ir import tls
from kubelbd.ir.http import Model
from kubelbd.records.types import RouteRecord, TenantRecord

from . import records
from .test_properties import envoy_validate, needs_envoy, static_bootstrap

SETTINGS = Settings(config_dir="/config", shards=3, https_port=8443)
BACKEND = {"service": "web", "port": "80", "nodePort": 30080}
SECRET = "alpha/default.site-tls"


def _route(name: str, host: str, with_tls: bool = False) -> RouteRecord:
    rules = [{"host": host, "paths": [{"path": "/", "pathType": "Prefix", "backends": [BACKEND]}]}]
    if not with_tls:
        return records.route("alpha", f"default.{name}", rules)
    tls = [{"hosts": [host], "secretName": "site-tls", "source": "tenant"}]
    return records.route("alpha", f"default.{name}", rules, tls=tls)


def _domains(table: dict[str, Any]) -> set[str]:
    return {d for vh in table["virtual_hosts"] if vh["name"] != "*" for d in vh["domains"]}


def _certificate_for(host: str) -> dict[str, tls.CertificateData]:
    pair = certs.issue(certs.new_ca("test-ca"), host, dns=(host,), server=True)
    return {SECRET: tls.CertificateData(SECRET, pair.cert_pem(), pair.key_pem())}


def _render(
    settings: Settings,
    routes: list[RouteRecord],
    tenants: list[TenantRecord],
    tls_routes: list[RouteRecord],
    secrets: dict[str, tls.CertificateData],
    catch_all: bool = False,
) -> tuple[Model, Renderer, dict[str, list[dict[str, Any]]]]:
    """Routes, then their TLS plan, through one renderer, as the data plane does."""
    model, renderer = Model(), Renderer(settings)
    files = renderer.update(model.ir, model.apply(routes, (), tenants))
    plan = tls.plan(model.ir, tls_routes, secrets, dt.datetime.now(dt.UTC))
    files.update(renderer.update_tls(plan, {}, catch_all))
    return model, renderer, files


def test_https_front_lists_only_hosts_with_a_certificate() -> None:
    secure = _route("secure", "secure.example.com", with_tls=True)
    model, renderer, files = _render(
        SETTINGS,
        [secure, _route("plain", "plain.example.com")],
        [TenantRecord("alpha", ("10.0.0.1",))],
        [secure],
        _certificate_for("secure.example.com"),
    )
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
    wild = _route("wild", "*.example.com", with_tls=True)
    tenants = [TenantRecord("alpha", ("10.0.0.1",)), TenantRecord("beta", ("10.0.0.2",))]
    rules = _route("plain", "foo.example.com").spec["rules"]
    plain = records.route("beta", "default.plain", list(rules), "2025-01-01T00:00:00Z")
    # older: beta holds foo
    _, _, files = _render(
        SETTINGS, [wild, plain], tenants, [wild], _certificate_for("*.example.com"), catch_all=True
    )
    table = files[rds_file(FRONT_TLS)][0]
    by_name = {vh["name"]: vh for vh in table["virtual_hosts"]}
    assert by_name["no-certificate"]["domains"] == ["foo.example.com"]
    assert by_name["no-certificate"]["routes"][0]["direct_response"]["status"] == 421
    # No catch-all over HTTPS: a host without a certificate is misdirected there.
    assert by_name["*"]["routes"][-1]["direct_response"]["status"] == 421


@needs_envoy
def test_wildcard_redirects_only_what_the_certificate_covers() -> None:
    settings = Settings(
        config_dir="/config", http_address="127.0.0.1", http_port=18080, https_port=18443, shards=2
    )
    wild = _route("wild", "*.example.com", with_tls=True)
    tenants = [TenantRecord("alpha", ("10.0.0.1",))]
    _, _, files = _render(settings, [wild], tenants, [wild], _certificate_for("*.example.com"))
    http = {vh["name"]: vh for vh in files[rds_file(FRONT)][0]["virtual_hosts"]}
    vhost = http["redirect-to-https:*.example.com"]
    guarded, fallback = vhost["routes"]
    assert guarded["redirect"]["https_redirect"] and guarded["match"]["headers"]
    assert fallback["route"]["cluster"].startswith("shard.")  # deeper names: as plain HTTP
    # Envoy accepts it, the HTTPS listener included.
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, result.stderr[-3000:]


@needs_envoy
def test_each_https_host_is_forwarded_only_on_its_certificates_connections() -> None:
    """Domain fronting: the chain of each certificate stamps its requests, and a host's route
    in the shared HTTPS table forwards only requests with the stamp of its own certificate."""
    settings = Settings(
        config_dir="/config", http_address="127.0.0.1", http_port=18080, https_port=18443, shards=2
    )
    tenants = [TenantRecord("alpha", ("10.0.0.1",)), TenantRecord("beta", ("10.0.0.2",))]
    ca = certs.new_ca("test-ca")
    secrets = {}
    routes = []
    for tenant, host in [
        ("alpha", "a.example.com"),
        ("beta", "b.example.com"),
        ("beta", "*.b.example.com"),
    ]:
        name = f"{host.replace('*', 'any')}-tls"
        sid = f"{tenant}/default.{name}"
        pair = certs.issue(ca, host, dns=(host,), server=True)
        secrets[sid] = tls.CertificateData(sid, pair.cert_pem(), pair.key_pem())
        rules = _route("web", host).spec["rules"]
        entry = {"hosts": [host], "secretName": name, "source": "tenant"}
        routes.append(records.route(tenant, f"default.{name}", list(rules), tls=[entry]))
    model, _, files = _render(settings, routes, tenants, routes, secrets)
    assert len(model.ir.vhosts) == 3
    served_with = {
        h: s for h, s in (("a.example.com", "alpha/default.a.example.com-tls"),
                          ("b.example.com", "beta/default.b.example.com-tls"),
                          ("*.b.example.com", "beta/default.any.b.example.com-tls"))
    }  # fmt: skip
    table = files[rds_file(FRONT_TLS)][0]
    forwarded = {}
    for vh in table["virtual_hosts"]:
        *rest, last = vh["routes"]
        assert last["direct_response"]["status"] == 421  # whatever is not forwarded
        for route in rest:
            stamp = route["match"]["headers"][0]
            assert stamp["name"] == CERTIFICATE_HEADER
            forwarded.update({d: stamp["string_match"]["exact"] for d in vh["domains"]})
    assert forwarded == served_with
    https = next(x for x in files["lds.pb"] if x["name"] == FRONT_TLS)
    for chain in https["filter_chains"]:
        manager = chain["filters"][0]["typed_config"]
        tag = manager["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
        assert tag[0] == {"remove": CERTIFICATE_HEADER}  # never what the client sent
        assert tag[1]["append"]["header"] == {"key": CERTIFICATE_HEADER, "value": chain["name"]}
    assert CERTIFICATE_HEADER in table["request_headers_to_remove"]
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, result.stderr[-3000:]
