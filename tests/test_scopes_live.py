"""The plain HTTP listener's host scopes (kubelbd.envoy.scopes), through a real Envoy.

An exact host's request is routed in the front listener's own connection manager: it never
passes through a shard's internal listener (the shards' connection managers count no request
for it), whatever the case of its Host header, its port or a final dot. Everything a scope
does not hold reaches what it reached through the front table: wildcard hosts, the catch-all.
ACME HTTP-01 challenges are answered for a scoped host ahead of its own routes. A client
cannot choose the scope by sending its header.
"""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from kubelbd.envoy import protos
from kubelbd.envoy.ads import RETRY_REJECTED
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.scopes import CHALLENGE_HOST, host_scope
from kubelbd.envoy.type_urls import SCOPED_ROUTE
from kubelbd.ir import tls
from kubelbd.ir.http import Model
from kubelbd.records.types import TenantRecord

from . import records
from .live_envoy import (
    Envoy,
    Stream,
    echo_backend,
    eventually,
    live_settings,
    request,
    running_envoy,
)
from .test_properties import needs_envoy

pytestmark = needs_envoy

TOKEN = "tok-1"
ANSWER = "tok-1.thumbprint"
OTHER_TOKEN = "tok-2"
SOLVER_PATH = "/.well-known/acme-challenge/tenants-own"


@dataclass
class Front:
    envoy: Envoy
    port: int

    def get(self, host: str, path: str = "/", **kw: Any) -> tuple[int, str, dict[str, str]]:
        """(status, backend that answered or Envoy's body, the headers the backend saw)."""
        r = request(self.port, host, path=path, **kw)
        if r.status == 200 and r.body.startswith(b"{"):
            data = r.json()
            return r.status, data["backend"], {k.lower(): v for k, v in data["headers"].items()}
        return r.status, r.body.decode(), {}

    def through_shards(self) -> int:
        """Requests the shards' internal listeners have taken, all together."""
        url = f"http://{self.envoy.admin}/stats?format=json&filter=downstream_rq_total$"

        with urllib.request.urlopen(url, timeout=5) as r:
            stats = orjson.loads(r.read())["stats"]
        names = {"http.default.downstream_rq_total"} | {
            f"http.{k}.downstream_rq_total" for k in range(2)
        }
        return sum(int(s["value"]) for s in stats if s.get("name") in names)

    def routed(self, host: str, path: str = "/", **kw: Any) -> tuple[int, str, bool]:
        """(status, who answered, whether the request went through a shard)."""
        before = self.through_shards()
        status, who, _ = self.get(host, path, **kw)
        return status, who, self.through_shards() > before


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    config_dir: Path = tmp_path_factory.mktemp("scopes")
    with (
        echo_backend("exact") as exact_port,
        echo_backend("wild") as wild_port,
        echo_backend("catch-all") as catch_all_port,
    ):
        settings = live_settings(config_dir, shards=2)

        def solver(host: str) -> dict[str, Any]:
            """A tenant's own HTTP-01 solver (cert-manager's Ingress): an exact path."""
            backend = {"service": "solver", "port": "80", "nodePort": exact_port}
            paths = [{"path": SOLVER_PATH, "pathType": "Exact", "backends": [backend]}]
            return {"host": host, "paths": paths}

        def rule(host: str, path: str, port: int) -> dict[str, Any]:
            backend = {"service": f"s{port}", "port": "80", "nodePort": port}
            return {
                "host": host,
                "paths": [{"path": path, "pathType": "Prefix", "backends": [backend]}],
            }

        routes = [
            records.route(
                "alpha",
                "default.exact",
                [rule("exact.example.com", "/api", exact_port), solver("exact.example.com")],
            ),
            records.route("alpha", "default.wild", [rule("*.wild.example.com", "/", wild_port)]),
            records.route("alpha", "default.any", [rule("", "/", catch_all_port)]),
        ]
        model, renderer = Model(), Renderer(settings)
        files = renderer.update(
            model.ir, model.apply(routes, (), [TenantRecord("alpha", ("127.0.0.1",))])
        )
        plan = tls.plan(model.ir, routes, {}, dt.datetime.now(dt.UTC))
        challenges = {TOKEN: ANSWER, CHALLENGE_HOST + TOKEN: "exact.example.com"}
        challenges |= {OTHER_TOKEN: "other-answer", CHALLENGE_HOST + OTHER_TOKEN: "b.example.com"}
        files.update(renderer.update_tls(plan, challenges, catch_all=True))
        with running_envoy(config_dir, files) as envoy:
            out = Front(envoy, settings.http_port)
            assert eventually(lambda: out.get("exact.example.com", "/api")[:2]) == (200, "exact"), (
                envoy.log()
            )
            assert eventually(lambda: out.get("x.wild.example.com")[:2]) == (200, "wild")
            yield out


def test_an_exact_host_is_routed_without_the_hop_through_a_shard(front: Front) -> None:
    assert front.routed("exact.example.com", "/api/items") == (200, "exact", False)
    assert front.routed("exact.example.com:8080", "/api") == (200, "exact", False)


def test_a_host_name_as_the_front_table_would_match_it_finds_its_scope(front: Front) -> None:
    for host in ("EXACT.example.com", "exact.example.com.", "Exact.Example.com.:8080"):
        assert front.routed(host, "/api") == (200, "exact", False), host


def test_what_no_scope_holds_goes_through_the_front_table(front: Front) -> None:
    assert front.routed("x.wild.example.com") == (200, "wild", True)
    assert front.routed("X.Wild.example.com") == (200, "wild", True)
    assert front.routed("unknown.example.com") == (200, "catch-all", True)
    assert front.routed("[::1]:80") == (200, "catch-all", True)


def test_a_path_the_hosts_routes_do_not_take_is_answered_as_by_the_front_table(
    front: Front,
) -> None:
    # The host's own fallback (here the catch-all), in its scope as in its shard's table.
    assert front.routed("exact.example.com", "/other") == (200, "catch-all", False)


def test_acme_challenges_are_answered_for_a_scoped_host(front: Front) -> None:
    path = f"/.well-known/acme-challenge/{TOKEN}"
    assert front.routed("exact.example.com", path) == (200, ANSWER, False)
    # Any token, for any host the front table serves (a wildcard's, the catch-all's).
    assert front.get("unknown.example.com", path)[:2] == (200, ANSWER)
    other = f"/.well-known/acme-challenge/{OTHER_TOKEN}"
    assert front.get("unknown.example.com", other)[:2] == (200, "other-answer")
    # The tenant's own solver on a host kubelbd answers challenges for, too.
    assert front.routed("exact.example.com", SOLVER_PATH) == (200, "exact", False)


def test_a_client_cannot_choose_the_scope(front: Front) -> None:
    forged = {"x-kubelbd-scope": "~fallback"}
    assert front.routed("exact.example.com", "/api", headers=forged) == (200, "exact", False)
    forged = {"x-kubelbd-scope": "exact.example.com"}
    assert front.routed("unknown.example.com", "/api", headers=forged) == (200, "catch-all", True)


def test_the_backend_never_sees_the_scope_header(front: Front) -> None:
    for host in ("exact.example.com", "x.wild.example.com"):
        status, _, headers = front.get(host, "/api", headers={"x-kubelbd-scope": "forged"})
        assert status == 200
        assert "x-kubelbd-scope" not in headers
        assert headers["x-forwarded-for"] == "127.0.0.1"


def test_a_host_whose_route_goes_is_taken_out_of_envoy(tmp_path: Path) -> None:
    """A scope kubelbd stops serving is removed from Envoy (a delta response names it by
    the scope's own name, which is how Envoy knows its scopes)."""
    settings = live_settings(tmp_path, shards=1)
    with echo_backend("gone") as port:
        backend = {"service": "s", "port": "80", "nodePort": port}
        rule = {"host": "gone.example.com", "paths": [{"path": "/", "pathType": "Prefix",
                                                     "backends": [backend]}]}  # fmt: skip
        route = records.route("alpha", "default.gone", [rule])
        model, renderer = Model(), Renderer(settings)
        tenants = [TenantRecord("alpha", ("127.0.0.1",))]
        files = renderer.update(model.ir, model.apply([route], (), tenants))
        with running_envoy(tmp_path, files) as envoy:
            host = "gone.example.com"
            assert eventually(lambda: request(settings.http_port, host).status) == 200
            envoy.publish(renderer.update(model.ir, model.apply((), [route.id])))

            def gone() -> int:
                status = request(settings.http_port, host).status
                assert status == 404
                return status

            assert eventually(gone, 10) == 404, envoy.log()


def test_a_path_an_exact_host_does_not_take_never_reaches_another_tenants_wildcard(
    tmp_path: Path,
) -> None:
    """As through its shard's table: the exact host's table answers 404 for a path none of
    its routes takes; the fallback scope (where a wildcard of another tenant is) is not
    tried for it."""
    settings = live_settings(tmp_path, shards=2)

    def rule(host: str, path: str, port: int) -> dict[str, Any]:
        backend = {"service": f"s{port}", "port": "80", "nodePort": port}
        paths = [{"path": path, "pathType": "Prefix", "backends": [backend]}]
        return {"host": host, "paths": paths}

    with echo_backend("alpha") as alpha, echo_backend("beta") as beta:
        routes = [
            records.route("alpha", "default.a", [rule("a.wild.example.com", "/api", alpha)]),
            records.route("beta", "default.w", [rule("*.wild.example.com", "/", beta)]),
        ]
        tenants = [TenantRecord(t, ("127.0.0.1",)) for t in ("alpha", "beta")]
        model, renderer = Model(), Renderer(settings)
        files = renderer.update(model.ir, model.apply(routes, (), tenants))
        with running_envoy(tmp_path, files) as envoy:
            out = Front(envoy, settings.http_port)
            assert eventually(lambda: out.get("a.wild.example.com", "/api")[:2]) == (200, "alpha")
            assert out.get("b.wild.example.com", "/other")[:2] == (200, "beta")
            status, body, _ = out.get("a.wild.example.com", "/other")
            assert status == 404, body


def test_a_scope_envoy_rejected_is_sent_again_and_counts_only_once_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A scope naming a cluster Envoy has not read yet is rejected (here: its table asks
    Envoy to check its clusters); kubelbd does not count it applied, and sends it again
    after a while, so once the cluster is there Envoy takes it."""
    settings = live_settings(tmp_path, shards=1)
    with echo_backend("late") as port:
        backend = {"service": "s", "port": "80", "nodePort": port}
        paths = [{"path": "/", "pathType": "Prefix", "backends": [backend]}]
        route = records.route(
            "alpha", "default.base", [{"host": "base.example.com", "paths": paths}]
        )
        model, renderer = Model(), Renderer(settings)
        files = renderer.update(
            model.ir, model.apply([route], (), [TenantRecord("alpha", ("127.0.0.1",))])
        )
        with running_envoy(tmp_path, files) as envoy:
            assert eventually(lambda: request(settings.http_port, "base.example.com").status) == 200
            sink = envoy.publisher.stream
            assert isinstance(sink, Stream)
            late_route = {"match": {"prefix": "/"}, "route": {"cluster": "late"}}
            vhost = {"name": "alpha/late", "domains": ["late.example.com"], "routes": [late_route]}
            scope = host_scope("late.example.com", vhost)
            scope["route_configuration"]["validate_clusters"] = True
            generation = sink.serve(
                SCOPED_ROUTE, {"host/late.example.com": ("v1", protos.resource(scope))}
            )

            def rejected() -> bool:
                assert "ads: envoy rejected host/late.example.com" in caplog.text
                return bool(sink.portal.call(sink.server.applied, generation))

            assert eventually(rejected, 10) is False
            [cluster] = [c for c in files["cds.pb"] if str(port) in c["name"]]
            late = {**cluster, "name": "late"}
            late["load_assignment"] = {**cluster["load_assignment"], "cluster_name": "late"}
            envoy.publish({**files, "cds.pb": [*files["cds.pb"], late]})

            def accepted() -> None:
                assert request(settings.http_port, "late.example.com").status == 200
                assert sink.portal.call(sink.server.applied, generation)

            eventually(accepted, 3 * RETRY_REJECTED)
