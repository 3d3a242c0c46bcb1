"""The HTTPS side of the renderer: which hosts its front table lists, and when it is rewritten."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubefleet import certs

from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.scopes import FALLBACK, host_scope_name, scope_file
from kubelbd.envoy.settings import FRONT_TLS, Settings, rds_file
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


def _http_front(files: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    table: dict[str, Any] = files[scope_file(FALLBACK)][0]["route_configuration"]
    return table


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
    # Plain HTTP still serves the plain host (in its scope) and redirects the secure one.
    http = _http_front(files)
    assert files[scope_file(host_scope_name("plain.example.com"))]
    assert "plain.example.com" not in _domains(http)
    redirect = next(vh for vh in http["virtual_hosts"] if vh["name"] == "redirect-to-https")
    assert redirect["domains"] == ["secure.example.com"]
    assert not files.get(scope_file(host_scope_name("secure.example.com")))  # taken back

    # Another plain host: its scope, and no table (nor Envoy's rebuild of one).
    more = renderer.update(model.ir, model.apply([_route("more", "more.example.com")]))
    assert set(more) == {scope_file(host_scope_name("more.example.com"))}
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
    http = {vh["name"]: vh for vh in _http_front(files)["virtual_hosts"]}
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


# ---- a host changing certificates: make before break ---------------------------------------


def _switching(secret_name: str, tenant: str = "alpha") -> RouteRecord:
    """The route of secure.example.com, served with `secret_name`."""
    rules = _route("secure", "secure.example.com").spec["rules"]
    entry = {"hosts": ["secure.example.com"], "secretName": secret_name, "source": "tenant"}
    return records.route(tenant, "default.secure", list(rules), tls=[entry])


def _pair(sid: str, host: str = "secure.example.com", days: int = 30) -> tls.CertificateData:
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    pair = certs.issue(certs.new_ca("test-ca"), host, dns=(host,), server=True, valid_until=until)
    return tls.CertificateData(sid, pair.cert_pem(), pair.key_pem())


def _plan_of(
    route: RouteRecord,
    secrets: dict[str, tls.CertificateData],
    previous: tls.TLSPlan | None,
    now: dt.datetime | None = None,
) -> tls.TLSPlan:
    model = Model()
    model.apply([route], (), [TenantRecord(route.tenant, ("10.0.0.1",))])
    return tls.plan(model.ir, [route], secrets, now or dt.datetime.now(dt.UTC), previous=previous)


def test_a_host_keeps_its_certificate_until_the_new_secret_is_there() -> None:
    """An Ingress names another Secret: until its copy arrives, the host is served with the
    certificate it had (the route says what is wrong), not dropped from HTTPS; once it is
    there, the host moves to it."""
    old, new = "alpha/default.old-tls", "alpha/default.new-tls"
    first = _plan_of(_switching("old-tls"), {old: _pair(old)}, None)
    assert first.hosts["secure.example.com"].secret == old
    # The route now names new-tls, whose copy is not there yet; old-tls's copy is gone too
    # (copies follow the references): the previous plan's certificate is what is kept.
    waiting = _plan_of(_switching("new-tls"), {}, first)
    assert waiting.hosts["secure.example.com"].secret == old
    assert set(waiting.secrets) == {old}
    (problem,) = waiting.problems["alpha/default.secure"]
    assert problem.reason == "SecretNotFound"
    moved = _plan_of(_switching("new-tls"), {new: _pair(new)}, waiting)
    assert moved.hosts["secure.example.com"] == tls.TLSHost(
        "secure.example.com", new, True, formerly=old, held_since=None
    )
    assert set(moved.secrets) == {new} and not moved.problems
    # Later plans keep what it was served with before, until its certificate changes again.
    again = _plan_of(_switching("new-tls"), {new: _pair(new)}, moved)
    assert again.hosts["secure.example.com"].formerly == old


def test_a_certificate_is_kept_only_while_the_new_one_is_not_there_and_for_so_long() -> None:
    old, new = "alpha/default.old-tls", "alpha/default.new-tls"
    first = _plan_of(_switching("old-tls"), {old: _pair(old)}, None)
    # The new Secret is there but bad (another host's): the tenant's mistake is reported,
    # and the old certificate is not kept for it.
    bad = _plan_of(_switching("new-tls"), {new: _pair(new, host="other.example.com")}, first)
    assert "secure.example.com" not in bad.hosts and not bad.secrets
    (problem,) = bad.problems["alpha/default.secure"]
    assert problem.reason == "CertificateHostMismatch"
    # The same Secret's content turned bad, or the Secret deleted: the tenant meant the old
    # certificate to go; it is not kept.
    replaced = _plan_of(_switching("old-tls"), {old: _pair(old, host="other.example.com")}, first)
    assert "secure.example.com" not in replaced.hosts
    deleted = _plan_of(_switching("old-tls"), {}, first)
    assert "secure.example.com" not in deleted.hosts and not deleted.secrets
    # Not there: kept, but for HOLD at most, counted from when the keeping began.
    start = dt.datetime.now(dt.UTC)
    kept = _plan_of(_switching("new-tls"), {}, first, now=start)
    assert kept.hosts["secure.example.com"].held_since == start
    still = _plan_of(_switching("new-tls"), {}, kept, now=start + tls.HOLD)
    assert still.hosts["secure.example.com"].secret == old
    over = _plan_of(_switching("new-tls"), {}, still, now=start + tls.HOLD * 2)
    assert "secure.example.com" not in over.hosts and not over.secrets


def test_a_kept_certificate_must_still_be_good_and_the_tenants_own() -> None:
    old = "alpha/default.old-tls"
    first = _plan_of(_switching("old-tls"), {old: _pair(old, days=1)}, None)
    # Expired since: not kept; the host has no HTTPS until its new Secret is there.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    expired = _plan_of(_switching("new-tls"), {}, first, now=later)
    assert "secure.example.com" not in expired.hosts and not expired.secrets
    # The host now belongs to beta, whose Secret is not there: alpha's certificate is never
    # served for it, nor remembered as the one before.
    taken = _plan_of(_switching("beta-tls", tenant="beta"), {}, first)
    assert "secure.example.com" not in taken.hosts and not taken.secrets
    beta = "beta/default.beta-tls"
    served = _plan_of(_switching("beta-tls", tenant="beta"), {beta: _pair(beta)}, first)
    assert served.hosts["secure.example.com"].formerly == ""


def test_connections_of_the_former_certificate_are_still_forwarded() -> None:
    """After a host moves to another certificate, requests on connections made with the one
    before (Envoy drains them) are forwarded, not answered 421; any other certificate's
    connection still gets 421."""
    old, new = "alpha/default.old-tls", "alpha/default.new-tls"
    route = _switching("new-tls")
    model, renderer = Model(), Renderer(SETTINGS)
    renderer.update(model.ir, model.apply([route], (), [TenantRecord("alpha", ("10.0.0.1",))]))
    plan = tls.TLSPlan(
        hosts={"secure.example.com": tls.TLSHost("secure.example.com", new, True, old)},
        secrets={new: _pair(new)},
    )
    table = renderer.update_tls(plan, {}, False)[rds_file(FRONT_TLS)][0]
    (vh,) = [vh for vh in table["virtual_hosts"] if vh["domains"] == ["secure.example.com"]]
    *forward, last = vh["routes"]
    stamps = [r["match"]["headers"][0]["string_match"]["exact"] for r in forward]
    assert stamps == [new, old]
    assert {r["route"]["cluster"] for r in forward} == {forward[0]["route"]["cluster"]}
    assert last["direct_response"]["status"] == 421
