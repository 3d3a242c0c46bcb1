"""Gateway API in the fleet model (kubelbd.ir.gateway) and its Envoy listeners: hostnames
meet as Gateway API says, rules take its precedence, and the real Envoy accepts the result.
The full picture, records to Envoy, is the golden case tests/golden/ir/gateway-http."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import json
import re
import sys
from typing import Any

import pytest
from kubefleet import certs

from kubelbd.envoy import gateway as envoy_gateway
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.settings import gateway_table_name, rds_file
from kubelbd.ir import gateway, gateway_model, tls
from kubelbd.ir.http import Delta, Model
from kubelbd.ir.l4 import Placement
from kubelbd.records import parse
from kubelbd.records.types import LBRecord, TenantRecord

from . import records
from .test_properties import ENVOY_SETTINGS, _fails, envoy_validate, needs_envoy, static_bootstrap

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("listener", "host", "meets"),
    [
        (None, "", "*"),
        (None, "a.example.test", "a.example.test"),
        ("a.example.test", "", "a.example.test"),
        ("a.example.test", "a.example.test", "a.example.test"),
        ("a.example.test", "b.example.test", None),
        ("*.example.test", "a.example.test", "a.example.test"),
        ("*.example.test", "a.b.example.test", "a.b.example.test"),  # any depth
        ("*.example.test", "example.test", None),
        ("*.example.test", "*.b.example.test", "*.b.example.test"),
        ("a.example.test", "*.example.test", "a.example.test"),
        ("*.b.example.test", "*.example.test", "*.b.example.test"),
        ("*.example.test", "*.other.test", None),
    ],
)
def test_hostnames_meet_as_gateway_api_says(
    listener: str | None, host: str, meets: str | None
) -> None:
    assert gateway.intersect(listener, host) == meets


def gw(listeners: list[dict[str, Any]]) -> LBRecord:
    spec = parse.lb_spec(
        {"source": {"kind": "Gateway", "namespace": "gw", "name": "web", "uid": "u",
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
         "ports": [], "sessionAffinity": "None", "proxyProtocol": "", "listeners": listeners}
    )  # fmt: skip
    return LBRecord("alpha", "gw.web.gateway", spec, 1, "2026-01-01T00:00:00Z")


def attached(name: str, paths: list[dict[str, Any]], listeners: list[str], created: str) -> Any:
    parent = {"ref": {"name": "web"}, "gateway": "gw.web.gateway", "listeners": listeners,
              "accepted": True, "reason": "Accepted", "message": ""}  # fmt: skip
    rules = [{"host": "", "paths": paths}]
    return records.route("alpha", f"apps.{name}", rules, created, parents=[parent])


def path(
    p: str, kind: str = "Prefix", port: int = 30080, h2c: bool = False, **match: Any
) -> dict[str, Any]:
    backend = {"service": "web", "port": "80", "nodePort": port}
    if h2c:
        backend["protocol"] = "h2c"
    return {"path": p, "pathType": kind, "backends": [backend], **match}


def test_precedence_exact_longest_method_headers_then_age() -> None:
    older = attached("old", [path("/a"), path("/a", method="GET")], ["http"], "2026-01-01")
    newer = attached(
        "new",
        [path("/a", headers=[{"name": "x", "value": "1", "type": "Exact"}]), path("/a/b"),
         path("/a", "Exact")],
        ["http"], "2026-02-01",
    )  # fmt: skip
    g = gw([{"name": "http", "port": 80, "protocol": "HTTP"}])
    out = gateway_model.build(
        {g.id: g}, {g.id: Placement("127.0.200.1", ())}, [newer, older], {}, NOW
    )
    [listener] = out.listeners
    [chain] = listener.chains
    [host] = chain.hosts
    order = [(r.path, r.exact, r.method, len(r.headers), r.target.route) for r in host.rules]
    assert order == [
        ("/a", True, "", 0, newer.id),
        ("/a/b", False, "", 0, newer.id),
        ("/a", False, "GET", 0, older.id),
        ("/a", False, "", 1, newer.id),
        ("/a", False, "", 0, older.id),
    ]
    assert out.attached == {g.id: {"http": 2}}
    assert out.served == {newer.id: [f"{g.id}/http"], older.id: [f"{g.id}/http"]}


def test_a_gateway_without_an_address_serves_nothing_but_counts_its_routes() -> None:
    route = attached("r", [path("/")], ["http"], "2026-01-01")
    g = gw([{"name": "http", "port": 80, "protocol": "HTTP"}])
    out = gateway_model.build({g.id: g}, {}, [route], {}, NOW)
    assert out.listeners == [] and out.served == {} and out.attached == {g.id: {"http": 1}}


@needs_envoy
def test_envoy_accepts_gateway_listeners_beside_the_shared_one() -> None:
    route = attached(
        "r",
        [path("/", port=30080), path("/api", "Exact", port=30081,
              headers=[{"name": "x-v", "value": "2", "type": "Exact"}],
              queryParams=[{"name": "q", "value": "1", "type": "Exact"}], method="POST"),
         path("/h", requestHeaders={"set": [{"name": "x-a", "value": "1"}],
                                    "add": [{"name": "x-b", "value": "2"}], "remove": ["x-c"]},
              responseHeaders={"add": [{"name": "x-d", "value": "3"}], "remove": ["server"]}),
         path("/r", redirect={"scheme": "https", "hostname": "a.example.test", "port": 8443,
                              "statusCode": 308}),
         path("/s", redirect={"statusCode": 301}), path("/grpc", port=30082, h2c=True),
         path("/slow", timeouts={"request": 90000, "backendRequest": 500}),
         # Envoy's formatter would read these (and reject the first): literal here.
         path("/percent", requestHeaders={"set": [{"name": "x-p", "value": "50%"}], "add": [
             {"name": "x-e", "value": "%ENVIRONMENT(HOME)%"}]}),
         # Past a million seconds: never in exponent notation.
         path("/long", timeouts={"request": 4 * 99999 * 3_600_000, "backendRequest": 1_234_567}),
         path("/unbounded", timeouts={"request": 0, "backendRequest": 0}),
         # URLRewrite and a redirect's path: regex rewrites Envoy checks (the prefix escaped)
         path("/v1.0", rewrite={"hostname": "in.example.test",
                                "path": {"type": "ReplacePrefixMatch", "value": "/"}}),
         path("/v2", rewrite={"path": {"type": "ReplaceFullPath", "value": "/x$1"}}),
         path("/old", redirect={"statusCode": 302,
                                "path": {"type": "ReplacePrefixMatch", "value": "/new"}}),
         path("/gone", redirect={"path": {"type": "ReplaceFullPath", "value": "/"}}),
         # The longest prefix Gateway API allows, rewritten and redirected: a regex of about
         # 1,030 RE2 instructions, which Envoy 1.40 takes with no runtime limit set (older
         # Envoys refused a program over 100 by default: this would tell)
         path("/" + "p-" * 511 + "x", rewrite={
             "path": {"type": "ReplacePrefixMatch", "value": "/"}}),
         path("/" + "r." * 511 + "x", redirect={
             "path": {"type": "ReplacePrefixMatch", "value": "/new"}})],
        ["http", "alt"], "2026-01-01",
    )  # fmt: skip
    g = gw([{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.test"},
            {"name": "alt", "port": 8081, "protocol": "HTTP"}])  # fmt: skip
    model = Model()
    model.apply(upserts=[route], tenants=[TenantRecord("alpha", ("127.0.1.1",))])
    renderer = Renderer(ENVOY_SETTINGS)
    files = renderer.update(model.ir, _all(model))
    out = gateway_model.build({g.id: g}, {g.id: Placement("127.0.200.1", ())}, [route], {}, NOW)
    files.update(renderer.update_gateways(out))
    assert "typed_extension_protocol_options" in next(
        c for c in files["cds.pb"] if c["name"].endswith("/h2c")
    )  # an HTTP/2 cluster, for Envoy to check
    text = json.dumps(files["lds.pb"])
    assert '"50%%"' in text and '"%%ENVIRONMENT(HOME)%%"' in text
    assert '"1439985600.000s"' in text and '"1234.567s"' in text
    names = {x["name"] for x in files["lds.pb"]}
    assert {"gw/alpha/gw.web.gateway/80", "gw/alpha/gw.web.gateway/8081"} <= names
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


def _all(model: Model) -> Delta:
    return Delta.of_all(model.ir)


@needs_envoy
def test_envoy_takes_a_gateway_listener_before_its_clusters() -> None:
    """Envoy reads the listener file when it changes, possibly before the cluster file
    written just before it: a listener naming a cluster Envoy does not have yet must still be
    taken (a rejected listener file holds up every other listener change)."""
    route = attached("r", [path("/", port=30099)], ["http"], "2026-01-01")
    g = gw([{"name": "http", "port": 80, "protocol": "HTTP"}])
    out = gateway_model.build({g.id: g}, {g.id: Placement("127.0.200.1", ())}, [route], {}, NOW)
    renderer = Renderer(ENVOY_SETTINGS)
    files = renderer.update(Model().ir, _all(Model()))  # no backend cluster at all
    files.update(renderer.update_gateways(out))
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


@needs_envoy
def test_envoy_accepts_https_listeners_chosen_by_sni() -> None:
    """HTTPS listeners of one port, with and without hostnames, each with its certificate
    (inline here as the secret server would send it): Envoy takes the listener."""
    pair = certs.self_signed("*.example.test")
    sid = "alpha/gw.cert"
    data = tls.CertificateData(sid, pair.cert_pem(), pair.key_pem())
    route = attached("r", [path("/", port=30080)], ["any", "shop", "wild"], "2026-01-01")
    g = gw([{"name": "any", "port": 443, "protocol": "HTTPS", "certificates": ["gw.cert"]},
            {"name": "shop", "port": 443, "protocol": "HTTPS", "hostname": "shop.example.test",
             "certificates": ["gw.missing", "gw.cert"]},
            {"name": "wild", "port": 443, "protocol": "HTTPS", "hostname": "*.example.test",
             "certificates": ["gw.cert"]}])  # fmt: skip
    now = dt.datetime.now(dt.UTC)  # the certificate is valid from now on
    out = gateway_model.build(
        {g.id: g}, {g.id: Placement("127.0.200.1", ())}, [route], {sid: data}, now
    )
    assert [c.name for c in out.listeners[0].chains] == ["any", "shop", "wild"]
    assert out.secrets == {sid: data} and out.unserved == {}
    renderer = Renderer(ENVOY_SETTINGS)
    files = renderer.update(Model().ir, _all(Model()))
    files.update(renderer.update_gateways(out))
    result = envoy_validate(static_bootstrap(files, {sid: data}))
    assert result.returncode == 0, _fails(result)


def test_an_https_listener_without_a_usable_certificate_is_not_served() -> None:
    g = gw([{"name": "a", "port": 443, "protocol": "HTTPS", "certificates": ["gw.broken"]},
            {"name": "b", "port": 8443, "protocol": "HTTPS", "certificates": []}])  # fmt: skip
    broken = tls.CertificateData("alpha/gw.broken", b"", b"", "tls.crt is not base64")
    route = attached("r", [path("/")], ["a", "b"], "2026-01-01")
    out = gateway_model.build(
        {g.id: g}, {g.id: Placement("127.0.200.1", ())}, [route], {broken.name: broken}, NOW
    )
    assert out.listeners == [] and out.secrets == {} and out.served == {}
    assert {n: p.reason for n, p in out.unserved[g.id].items()} == {
        "a": "InvalidCertificateRef", "b": "InvalidCertificateRef"
    }  # fmt: skip
    assert out.attached == {g.id: {"a": 1, "b": 1}}


@pytest.mark.parametrize(
    ("redirect", "port", "tls", "want"),
    [
        (gateway.Redirect(302), 80, False, {"response_code": "FOUND"}),
        (gateway.Redirect(302), 8080, False, {"response_code": "FOUND", "port_redirect": 8080}),
        (gateway.Redirect(301, hostname="a.test"), 443, True,
         {"response_code": "MOVED_PERMANENTLY", "host_redirect": "a.test"}),
        # A scheme without a port: that scheme's well-known port, left out of the Location.
        (gateway.Redirect(302, scheme="https"), 8080, False,
         {"response_code": "FOUND", "scheme_redirect": "https"}),
        (gateway.Redirect(302, scheme="http", port=80), 8443, True,
         {"response_code": "FOUND", "scheme_redirect": "http"}),
        (gateway.Redirect(307, port=8443), 80, False,
         {"response_code": "TEMPORARY_REDIRECT", "port_redirect": 8443}),
    ],
)  # fmt: skip
def test_a_redirects_port_is_derived_as_gateway_api_says(
    redirect: gateway.Redirect, port: int, tls: bool, want: dict[str, Any]
) -> None:
    assert envoy_gateway._redirect(redirect, port, tls, "/") == want


@pytest.mark.parametrize(
    ("matched", "change", "path", "want"),
    [
        # Gateway API's conformance cases (HTTPRouteRewritePath, HTTPRouteRedirectPath)
        ("/prefix/one", gateway.PathChange(False, "/one"), "/prefix/one/two", "/one/two"),
        ("/strip-prefix", gateway.PathChange(False, "/"), "/strip-prefix/three", "/three"),
        ("/strip-prefix", gateway.PathChange(False, "/"), "/strip-prefix", "/"),
        ("/full/one", gateway.PathChange(True, "/one"), "/full/one/two", "/one"),
        ("/original-prefix", gateway.PathChange(False, "/replacement-prefix"),
         "/original-prefix/lemon", "/replacement-prefix/lemon"),
        ("/path-and-host", gateway.PathChange(False, "/replacement-prefix"),
         "/path-and-host", "/replacement-prefix"),
        # a trailing slash on either side replaces whole segments all the same
        ("/a/", gateway.PathChange(False, "/b/"), "/a/c", "/b/c"),
        ("/", gateway.PathChange(False, "/api"), "/x", "/api/x"),
        ("/a.b", gateway.PathChange(False, "/c"), "/a.b/d", "/c/d"),  # the prefix, escaped
    ],
)  # fmt: skip
def test_a_path_is_rewritten_as_gateway_api_says(
    matched: str, change: gateway.PathChange, path: str, want: str
) -> None:
    """The regex Envoy is given, applied once (RE2 and Python's re agree on these)."""
    rewrite = envoy_gateway._path_rewrite(matched, change)
    got = re.sub(rewrite["pattern"]["regex"], rewrite["substitution"], path, count=1)
    assert got == want


@pytest.mark.parametrize(
    ("domain", "owner"),
    [
        ("bar.com", ""),
        (gateway.ANY_HOST, ""),
        ("bar.example.com", "*.example.com"),
        ("*.example.com", "*.example.com"),
        ("bar.foo.example.com", "*.foo.example.com"),
        ("*.foo.example.com", "*.foo.example.com"),
        ("*.x.foo.example.com", "*.foo.example.com"),
        ("abc.foo.example.com", "abc.foo.example.com"),
        ("example.com", ""),
    ],
)
def test_the_most_specific_listener_owns_a_host(domain: str, owner: str) -> None:
    listeners = {"", "*.example.com", "*.foo.example.com", "abc.foo.example.com"}
    assert gateway.owner(listeners, domain) == owner


def test_a_route_on_a_less_specific_listener_does_not_answer_for_a_more_specific_ones() -> None:
    """Listener isolation: a route on the listener without a hostname that names a host of
    the `*.example.test` listener is not served for it; that listener's hosts answer 404."""
    route = attached("r", [path("/")], ["any"], "2026-01-01")
    route.spec["rules"] = [
        {"host": h, "paths": route.spec["rules"][0]["paths"]}
        for h in ("bar.test", "a.example.test")
    ]
    wild = {"name": "wild", "port": 80, "protocol": "HTTP", "hostname": "*.example.test"}
    g = gw([{"name": "any", "port": 80, "protocol": "HTTP"}, wild])
    out = gateway_model.build({g.id: g}, {g.id: Placement("127.0.200.1", ())}, [route], {}, NOW)
    [chain] = out.listeners[0].chains
    assert {h.domain: len(h.rules) for h in chain.hosts} == {"*.example.test": 0, "bar.test": 1}


@needs_envoy
def test_tcp_and_udp_listeners_proxy_to_the_oldest_routes_weighted_backends() -> None:
    """A TCP and a UDP listener on one port: the oldest route attached to each is served
    (weighted: TCP by weighted clusters, UDP by one cluster of every backend, weighted, as
    Envoy's UDP proxy sends to one cluster); the newer one is attached, not served; Envoy
    takes the result."""

    def l4route(name: str, listener: str, created: str, *ports: int) -> Any:
        backends = [{"service": f"s{p}", "port": "53", "nodePort": p, "weight": i + 1}
                    for i, p in enumerate(ports)]  # fmt: skip
        return attached(name, [{"path": "/", "pathType": "Prefix", "backends": backends}],
                        [listener], created)  # fmt: skip

    older = l4route("old", "tcp", "2026-01-01", 30001, 30002)
    newer = l4route("new", "tcp", "2026-02-01", 30003)
    dns = l4route("dns", "udp", "2026-01-01", 30053, 30054)
    g = gw([{"name": "tcp", "port": 5432, "protocol": "TCP"},
            {"name": "udp", "port": 5432, "protocol": "UDP"}])  # fmt: skip
    tenants = {"alpha": TenantRecord("alpha", ("127.0.1.1", "127.0.1.2"))}
    out = gateway_model.build(
        {g.id: g}, {g.id: Placement("127.0.200.1", ())}, [newer, older, dns], {}, NOW, tenants
    )
    tcp, udp = sorted(out.l4_listeners, key=lambda x: x.protocol)
    assert [w for _, w in tcp.weights] == [1, 2] and "30001" in tcp.weights[0][0]
    assert len(udp.weights) == 1
    combined = next(c for c in out.l4_clusters if c.name == udp.cluster)
    assert combined.weighted == ((30053, 500), (30054, 1000))  # at most 1000 each
    assert out.attached == {g.id: {"tcp": 2, "udp": 1}}
    assert older.id in out.served and newer.id not in out.served
    renderer = Renderer(ENVOY_SETTINGS)
    files = renderer.update(Model().ir, _all(Model()))
    files.update(renderer.update_gateways(out))
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


def tlsroute(name: str, listeners: list[str], created: str, hosts: dict[str, list[int]]) -> Any:
    """A TLSRoute's record: a rule per hostname ("": none), each its backends' nodePorts."""
    route = attached(name, [], listeners, created)
    route.spec["rules"] = [
        {"host": h, "paths": [{"path": "/", "pathType": "Prefix", "backends": [
            {"service": f"s{p}", "port": "443", "nodePort": p} for p in ports]}]}
        for h, ports in hosts.items()
    ]  # fmt: skip
    return route


@needs_envoy
def test_tls_listeners_choose_a_route_by_sni_passed_through_or_terminated() -> None:
    """TLS listeners of one port, Passthrough and Terminate: a filter chain per SNI name a
    route serves, each name the most specific listener's and there the oldest route's; a
    name whose route has no backend refuses the connection; a Terminate listener without a
    usable certificate is not served; Envoy takes the result."""
    pair = certs.self_signed("tls.example.test")
    sid = "alpha/gw.cert"
    data = tls.CertificateData(sid, pair.cert_pem(), pair.key_pem())
    g = gw([{"name": "pass", "port": 8443, "protocol": "TLS", "tlsMode": "Passthrough",
             "hostname": "*.example.test"},
            {"name": "term", "port": 8443, "protocol": "TLS", "tlsMode": "Terminate",
             "hostname": "tls.example.test", "certificates": ["gw.cert"]},
            {"name": "any", "port": 9443, "protocol": "TLS", "tlsMode": "Passthrough"},
            {"name": "broken", "port": 9444, "protocol": "TLS", "tlsMode": "Terminate",
             "certificates": ["gw.missing"]}])  # fmt: skip
    older = tlsroute("old", ["pass", "term", "any", "broken"], "2026-01-01",
                     {"abc.example.test": [30001], "": [30002, 30003]})  # fmt: skip
    newer = tlsroute("new", ["pass"], "2026-02-01",
                     {"abc.example.test": [30004], "dead.example.test": []})  # fmt: skip
    tenants = {"alpha": TenantRecord("alpha", ("127.0.1.1",))}
    now = dt.datetime.now(dt.UTC)  # the certificate is valid from now on
    out = gateway_model.build(
        {g.id: g}, {g.id: Placement("127.0.200.1", ())}, [newer, older], {sid: data}, now,
        tenants,
    )  # fmt: skip
    by_port = {x.port: x for x in out.tls_listeners}
    assert sorted(by_port) == [8443, 9443]  # 9444: no certificate, not served
    chains = {c.server_name: c for c in by_port[8443].chains}
    # abc: the older route's, passed through; the listener's own wildcard: the older route's
    # rule without a hostname; tls.example.test: the Terminate listener's (more specific),
    # not the wildcard's; dead: the newer route's, which has no backend.
    assert sorted(chains) == [
        "*.example.test", "abc.example.test", "dead.example.test", "tls.example.test"
    ]  # fmt: skip
    [(cluster, weight)] = chains["abc.example.test"].weights
    assert cluster.startswith("gw/") and cluster.endswith("/tcp") and weight == 1
    assert next(c for c in out.l4_clusters if c.name == cluster).port == 30001
    assert chains["abc.example.test"].secret == "" and chains["*.example.test"].listener == "pass"
    assert chains["tls.example.test"].secret == sid
    assert chains["tls.example.test"].listener == "term"
    assert len(chains["tls.example.test"].weights) == 2
    assert chains["dead.example.test"].weights == ()
    assert [c.server_name for c in by_port[9443].chains] == [gateway.ANY_HOST, "abc.example.test"]
    assert out.unserved[g.id]["broken"].reason == "InvalidCertificateRef"
    assert out.served == {
        older.id: [f"{g.id}/any", f"{g.id}/pass", f"{g.id}/term"],
        newer.id: [f"{g.id}/pass"],
    }
    assert out.hosts[older.id] == {
        h: ["127.0.200.1"] for h in ("*.example.test", "abc.example.test", "tls.example.test")
    }
    renderer = Renderer(ENVOY_SETTINGS)
    files = renderer.update(Model().ir, _all(Model()))
    files.update(renderer.update_gateways(out))
    listener = next(x for x in files["lds.pb"] if x["name"].endswith("/8443/tls"))
    rendered = {c["name"].rsplit("/", 1)[1]: c for c in listener["filter_chains"]}
    assert "transport_socket" in rendered["tls.example.test"]
    assert "transport_socket" not in rendered["abc.example.test"]
    assert rendered["dead.example.test"]["filters"][0]["name"] == "envoy.filters.network.rbac"
    result = envoy_validate(static_bootstrap(files, {sid: data}))
    assert result.returncode == 0, _fails(result)


def test_a_route_naming_the_host_precedes_an_older_one_whose_wildcard_meets_it() -> None:
    """Gateway API's first precedence is the matching hostname: on a listener for
    a.example.test, a newer route naming a.example.test answers before an older route whose
    `*.example.test` meets the listener's name (same path)."""
    older = attached("old", [path("/", port=30001)], ["a"], "2026-01-01")
    older.spec["rules"][0]["host"] = "*.example.test"
    newer = attached("new", [path("/", port=30002)], ["a"], "2026-02-01")
    newer.spec["rules"][0]["host"] = "a.example.test"
    g = gw([{"name": "a", "port": 80, "protocol": "HTTP", "hostname": "a.example.test"}])
    out = gateway_model.build(
        {g.id: g}, {g.id: Placement("127.0.200.1", ())}, [older, newer], {}, NOW
    )
    [chain] = out.listeners[0].chains
    [host] = chain.hosts
    assert host.domain == "a.example.test"
    assert [r.target.route for r in host.rules] == [newer.id]


def test_a_certificate_no_filter_chain_names_is_not_served() -> None:
    """A Terminate TLS listener without routes has no filter chain: Envoy never asks for its
    certificate, so it is not among those Envoy is to hold (the data plane waits for Envoy to
    hold every one before it reports anything applied)."""
    pair = certs.self_signed("tls.example.test")
    sid = "alpha/gw.cert"
    data = tls.CertificateData(sid, pair.cert_pem(), pair.key_pem())
    g = gw([{"name": "term", "port": 8443, "protocol": "TLS", "tlsMode": "Terminate",
             "certificates": ["gw.cert"]}])  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    out = gateway_model.build({g.id: g}, {g.id: Placement("127.0.200.1", ())}, [], {sid: data}, now)
    assert out.tls_listeners == [] and out.secrets == {} and out.unserved == {}
    dead = tlsroute("dead", ["term"], "2026-01-01", {"": []})  # refused: no handshake either
    out = gateway_model.build(
        {g.id: g}, {g.id: Placement("127.0.200.1", ())}, [dead], {sid: data}, now
    )
    assert len(out.tls_listeners) == 1 and out.secrets == {}


def _many(name: str, n: int, listeners: list[str], port: int = 30080) -> Any:
    """A route with `n` paths: a table of `n` routes."""
    return attached(name, [path(f"/p{i}", port=port) for i in range(n)], listeners, "2026-01-01")


@needs_envoy
def test_the_largest_gateway_chains_route_tables_are_files_and_a_change_keeps_the_listener() -> (
    None
):
    """With room for one route table file and chains of at least 3 routes: the larger chain's
    routes are a file (named by kubelbd, after the chain), the other's inline; a change to
    the routes of the file's chain rewrites that file only, not the listener Envoy would
    rebuild; a chain that grows past it does not take its file (one chain joining rewrites
    no other's listener); Envoy takes each result."""
    settings = dataclasses.replace(ENVOY_SETTINGS, gateway_tables=1, gateway_table_routes=3)
    g = gw([{"name": "a", "port": 80, "protocol": "HTTP"},
            {"name": "b", "port": 8081, "protocol": "HTTP"}])  # fmt: skip
    where = {g.id: Placement("127.0.200.1", ())}
    renderer = Renderer(settings)
    files = renderer.update(Model().ir, _all(Model()))
    big, small = _many("big", 4, ["a"]), _many("small", 3, ["b"])
    files.update(
        renderer.update_gateways(gateway_model.build({g.id: g}, where, [big, small], {}, NOW))
    )
    table = gateway_table_name("gw/alpha/gw.web.gateway/80")
    assert [f for f in files if f.startswith("rds/gateway")] == [rds_file(table)]
    listeners = {x["name"]: x for x in files["lds.pb"]}
    [chain] = listeners["gw/alpha/gw.web.gateway/80"]["filter_chains"]
    manager = chain["filters"][0]["typed_config"]
    assert manager["rds"]["route_config_name"] == table and "route_config" not in manager
    assert manager["stat_prefix"] == table
    [other] = listeners["gw/alpha/gw.web.gateway/8081"]["filter_chains"]
    assert "route_config" in other["filters"][0]["typed_config"]
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)

    bigger = _many("big", 5, ["a"])
    changed = renderer.update_gateways(
        gateway_model.build({g.id: g}, where, [bigger, small], {}, NOW)
    )
    assert sorted(changed) == [rds_file(table)]
    files.update(changed)
    grown = _many("small", 9, ["b"])
    changed = renderer.update_gateways(
        gateway_model.build({g.id: g}, where, [bigger, grown], {}, NOW)
    )
    assert sorted(changed) == ["lds.pb"]  # the inline chain's listener, rewritten as before
    files.update(changed)
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


def test_a_route_table_file_never_passes_to_another_chain() -> None:
    """When the chain holding a file shrinks below the size and another grows past it in
    one update, the other gets a file of its own name: Envoy, which still has the first
    chain's listener until it applies the new listener file, would otherwise read the other
    chain's routes (another tenant's, perhaps) into it. A tenant takes at most
    `gateway_tables_per_tenant` files, so that one cannot hold them all."""
    settings = dataclasses.replace(
        ENVOY_SETTINGS, gateway_tables=2, gateway_tables_per_tenant=1, gateway_table_routes=3
    )
    g = gw([{"name": "a", "port": 80, "protocol": "HTTP"},
            {"name": "b", "port": 8081, "protocol": "HTTP"}])  # fmt: skip
    where = {g.id: Placement("127.0.200.1", ())}
    renderer = Renderer(settings)
    renderer.update(Model().ir, _all(Model()))
    first = renderer.update_gateways(
        gateway_model.build({g.id: g}, where, [_many("a", 4, ["a"]), _many("b", 3, ["b"])], {}, NOW)
    )
    second = renderer.update_gateways(
        gateway_model.build({g.id: g}, where, [_many("a", 1, ["a"]), _many("b", 9, ["b"])], {}, NOW)
    )
    was = {f for f in first if f.startswith("rds/gateway")}
    now = {f for f in second if f.startswith("rds/gateway")}
    assert len(was) == 1 and len(now) == 1 and not was & now  # one per tenant, never shared
    manager = next(x for x in second["lds.pb"] if x["name"].endswith("/8081"))["filter_chains"][0][
        "filters"
    ][0]["typed_config"]
    assert rds_file(manager["rds"]["route_config_name"]) in now


def test_a_route_record_replaced_is_compiled_again() -> None:
    """A route's rules are remembered for its record object: the record that replaces it
    (same id, new paths) is served as it now says, in the next build."""
    g = gw([{"name": "http", "port": 80, "protocol": "HTTP"}])
    where = {g.id: Placement("127.0.200.1", ())}
    before = attached("r", [path("/old", port=30001)], ["http"], "2026-01-01")
    after = attached("r", [path("/new", port=30002)], ["http"], "2026-01-01")
    assert before.id == after.id
    for route, want in ((before, "/old"), (after, "/new"), (before, "/old")):
        out = gateway_model.build({g.id: g}, where, [route], {}, NOW)
        [host] = out.listeners[0].chains[0].hosts
        assert [r.path for r in host.rules] == [want]


def test_a_tls_listener_not_served_keeps_its_names_from_a_wildcard_neighbour() -> None:
    """A Terminate listener for tls.example.test without a usable certificate is not
    served; the Passthrough `*.example.test` listener of the port does not take its name
    (listener isolation holds for a listener that is not served)."""
    g = gw([{"name": "pass", "port": 8443, "protocol": "TLS", "tlsMode": "Passthrough",
             "hostname": "*.example.test"},
            {"name": "term", "port": 8443, "protocol": "TLS", "tlsMode": "Terminate",
             "hostname": "tls.example.test", "certificates": ["gw.missing"]}])  # fmt: skip
    route = tlsroute("r", ["pass", "term"], "2026-01-01",
                     {"tls.example.test": [30001], "a.example.test": [30002]})  # fmt: skip
    out = gateway_model.build({g.id: g}, {g.id: Placement("127.0.200.1", ())}, [route], {}, NOW)
    [listener] = out.tls_listeners
    assert [c.server_name for c in listener.chains] == ["a.example.test"]
    assert out.unserved[g.id]["term"].reason == "InvalidCertificateRef"


def _tenant_gateway(tenant: str, listeners: list[dict[str, Any]]) -> LBRecord:
    spec = parse.lb_spec(
        {"source": {"kind": "Gateway", "namespace": "gw", "name": "web", "uid": f"u-{tenant}",
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
         "ports": [], "sessionAffinity": "None", "proxyProtocol": "", "listeners": listeners}
    )  # fmt: skip
    return LBRecord(tenant, "gw.web.gateway", spec, 1, "2026-01-01T00:00:00Z")


def _tenant_route(tenant: str, name: str, host: str, listeners: list[str], port: int) -> Any:
    parent = {"ref": {"name": "web"}, "gateway": "gw.web.gateway", "listeners": listeners,
              "accepted": True, "reason": "Accepted", "message": ""}  # fmt: skip
    rules = [{"host": host, "paths": [path("/", port=port)]}]
    return records.route(tenant, f"apps.{name}", rules, "2026-01-01", parents=[parent])


def test_a_build_by_tenant_is_one_build_and_keeps_the_tenants_that_did_not_change() -> None:
    """Tenants whose names sort differently with the `/` of a Gateway id (`a`, `a-b`), HTTP,
    TCP and UDP listeners: the tenants' models merged are what one build of them all gives, and a
    route change on one tenant's Gateway keeps the other tenants' listeners as they were."""
    listeners = [
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "tcp", "port": 9000, "protocol": "TCP", "kinds": ["TCPRoute"]},
        {"name": "udp", "port": 9001, "protocol": "UDP", "kinds": ["UDPRoute"]},
    ]
    gateways = {g.id: g for g in (_tenant_gateway(t, listeners) for t in ("a", "a-b", "b"))}
    placements = {gid: Placement(f"127.0.200.{i + 1}", ()) for i, gid in enumerate(gateways)}
    tenants = {t: TenantRecord(t, (f"127.0.{i + 1}.1",)) for i, t in enumerate(("a", "a-b", "b"))}
    routes = [
        _tenant_route(t, f"r{i}", f"r{i}.{t}.example.test", ["http"], 30080 + i)
        for t in ("a", "a-b", "b") for i in range(3)
    ] + [_tenant_route(t, "tcp", "", ["tcp"], 31000) for t in ("a", "b")]  # fmt: skip
    parts: dict[str, gateway_model.GatewayModel] = {}

    def both(rs: list[Any]) -> tuple[Any, Any]:
        one = gateway_model.build(gateways, placements, rs, {}, NOW, tenants)
        by = gateway_model.build_by_tenant(gateways, placements, rs, {}, 0, NOW, tenants, parts)
        return one, by

    one, by = both(routes)
    assert by == one and [x.name for x in by.listeners] == [x.name for x in one.listeners]
    kept = {x.tenant: x for x in by.listeners}
    routes[-3] = _tenant_route("b", "r2", "moved.b.example.test", ["http"], 30099)  # b's
    one, by = both(routes)
    assert by == one
    again = {x.tenant: x for x in by.listeners}
    assert again["a"] is kept["a"] and again["a-b"] is kept["a-b"] and again["b"] is not kept["b"]
    del gateways["b/gw.web.gateway"]  # a tenant's Gateway gone: its part goes
    one, by = both([r for r in routes if r.tenant != "b"])
    assert by == one and set(parts) == {"a", "a-b"}


def test_a_gateway_table_keeps_its_unchanged_hosts_and_no_other_version() -> None:
    """An unchanged host is the same object in the next table (its encoded bytes are reused);
    a host changed is rebuilt, and the old version is not kept: a tenant editing a route
    again and again grows nothing."""
    g = gw([{"name": "http", "port": 80, "protocol": "HTTP"}])
    placements = {g.id: Placement("127.0.200.1", ())}

    def table(port_b: int) -> dict[str, Any]:
        routes = [
            records.route("alpha", f"apps.{h}", [{"host": f"{h}.example.test", "paths": [
                path("/", port=port)]}], parents=[{
                    "ref": {"name": "web"}, "gateway": "gw.web.gateway", "listeners": ["http"],
                    "accepted": True, "reason": "Accepted", "message": ""}])
            for h, port in (("a", 30080), ("b", port_b))
        ]  # fmt: skip
        out = gateway_model.build({g.id: g}, placements, routes, {}, NOW)
        (gl,) = out.listeners
        files = Renderer(ENVOY_SETTINGS).update_gateways(out)
        assert "lds.pb" in files
        return envoy_gateway._table(gl, gl.chains[0], ENVOY_SETTINGS, "t")

    first, second = table(30081), table(30082)
    hosts = {vh["domains"][0]: vh for vh in first["virtual_hosts"]}
    again = {vh["domains"][0]: vh for vh in second["virtual_hosts"]}
    assert again["a.example.test"] is hosts["a.example.test"]
    assert again["b.example.test"] is not hosts["b.example.test"]
    kept = [held[4] for chain in envoy_gateway._HOSTS.values() for held in chain.values()]
    assert not any(vh is hosts["b.example.test"] for vh in kept)
    envoy_gateway.forget_hosts(set())
    assert envoy_gateway._HOSTS == {}


def test_the_renderer_keeps_no_past_version_of_a_gateway_chain() -> None:
    """A Gateway chain's route count is remembered while the chain is the same object, and
    its listener per name: a changed chain's old version is held by nothing (an lru_cache of
    4,096 kept past chains and listeners, each with every host of the chain)."""
    g = gw([{"name": "http", "port": 80, "protocol": "HTTP"}])
    renderer = Renderer(ENVOY_SETTINGS)
    renderer.update(Model().ir, _all(Model()))
    chains = []
    for port in (30001, 30002, 30003):  # the route's backend moved: a new chain each time
        route = attached("r", [path("/", port=port)], ["http"], "2026-01-01")
        out = gateway_model.build({g.id: g}, {g.id: Placement("127.0.200.1", ())}, [route], {}, NOW)
        renderer.update_gateways(out)
        chains.append(out.listeners[0].chains[0])
        del out, route
    current = chains.pop()
    gc.collect()
    # each old chain held by `chains`, the loop variable and the call: nothing else
    assert [sys.getrefcount(c) for c in chains] == [3] * len(chains)
    assert sys.getrefcount(current) > 2
