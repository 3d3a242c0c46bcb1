"""/metrics: every series kubelbd defines, scraped from the health server and parsed by
prometheus_client's own parser, moving when what it measures happens (the data plane over a
FakeKube, API writes against an HTTP server, Envoy's admin interface as a fake on loopback).

Counters and histograms live for the process, so every test compares with what it scraped
before, never with zero: tests do not depend on one another's leftovers.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from kubefleet import certs
from prometheus_client.parser import text_string_to_metric_families

from kubelbd import metrics
from kubelbd.dataplane.rejections import copy_rejections
from kubelbd.envoy.admin import EnvoyAdmin
from kubelbd.health import serve_health
from kubelbd.kube import ApiError, Kube
from kubelbd.kube.lease import Leadership
from kubelbd.objects import NAMESPACES, SECRETS, Obj
from kubelbd.records.names import ROUTES, TENANTS, copy_name, labels
from kubelbd.records.objects import record_object, tenant_object

from .live_envoy import free_port
from .orchestration import namespace, running, until
from .test_orchestration_dataplane import b64, dataplane, management, route_spec, tls_secret

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scraper:
    """Prometheus' view: GET /metrics, parsed."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    async def scrape(self) -> Samples:
        async with aiohttp.ClientSession() as s, s.get(self.url) as r:
            assert r.status == 200
            text = await r.text()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def value(self, name: str, **labels: str) -> float | None:
        return (await self.scrape()).get((name, frozenset(labels.items())))

    def reaches(self, want: float, name: str, **labels: str) -> Callable[[], Any]:
        """A condition for `until`: the series has value `want`."""

        async def check() -> bool:
            return await self.value(name, **labels) == want

        return check

    def reaches_nothing(self, name: str, **labels: str) -> Callable[[], Any]:
        """A condition for `until`: the series is not exposed."""

        async def check() -> bool:
            return await self.value(name, **labels) is None

        return check

    def above(self, floor: float, name: str, **labels: str) -> Callable[[], Any]:
        async def check() -> bool:
            return ((await self.value(name, **labels)) or 0) > floor

        return check


@asynccontextmanager
async def health_server() -> AsyncIterator[Scraper]:
    """kubelbd's health server on a loopback port, for the length of the block."""
    port = free_port()
    scraper = Scraper(port)

    async def answers() -> bool:
        try:
            await scraper.scrape()
        except (aiohttp.ClientError, OSError):
            return False
        return True

    async with running(lambda: serve_health("127.0.0.1", port, anyio.Event())):
        await until(answers, "the health server answering")
        yield scraper


@asynccontextmanager
async def http_server(app: web.Application) -> AsyncIterator[str]:
    """`app` on an ephemeral loopback port; yields host:port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def admin_of(address: str) -> AsyncIterator[EnvoyAdmin]:
    admin = EnvoyAdmin(address)
    try:
        yield admin
    finally:
        await admin.aclose()


# ---- state, read from the data plane ----------------------------------------------------------


async def test_the_data_plane_state_per_tenant(tmp_path: Path) -> None:
    mgmt = await management()
    await mgmt.create(NAMESPACES, namespace("tenant-b", labels("b")))
    await mgmt.create(TENANTS, tenant_object("b") | {"status": {"nodeAddresses": ["10.0.0.2"]}})
    host = "shop.example.com"
    tls_entry = {"hosts": [host], "secretName": "shop-tls", "source": "tenant"}
    await mgmt.create(
        ROUTES, record_object("Route", "a", "default.shop", route_spec() | {"tls": [tls_entry]})
    )
    pair = certs.issue(certs.new_ca("ca"), host, dns=(host,), server=True)
    data = {"tls.crt": b64(pair.cert_pem()), "tls.key": b64(pair.key_pem())}
    await mgmt.create(SECRETS, tls_secret(copy_name("default", "shop-tls"), data))
    not_after = x509.load_pem_x509_certificate(pair.cert_pem()).not_valid_after_utc
    dp = dataplane(mgmt, tmp_path, https_port=8443)
    async with health_server() as s, running(dp.run):
        await until(s.reaches(1, "kubelbd_routes", tenant="a"), "alpha's route")
        await until(s.reaches(1, "kubelbd_certificates", tenant="a"), "its certificate")
        expiry = await s.value(
            "kubelbd_certificate_expiry_timestamp_seconds",
            tenant="a",
            certificate="default.shop-tls",
            host=host,
        )
        assert expiry == not_after.timestamp()
        assert await s.value("kubelbd_routes", tenant="b") == 0  # a tenant without any
        assert await s.value("kubelbd_conflicts", tenant="b") == 0

        # Tenant b asks for a's host (later: a keeps it), with a problem of its own.
        spec = route_spec() | {"problems": [{"reason": "HostNotAllowed", "message": "x"}]}
        await mgmt.create(ROUTES, record_object("Route", "b", "default.copy", spec))
        await until(s.reaches(1, "kubelbd_conflicts", tenant="b"), "b's conflict")
        await until(
            s.reaches(1, "kubelbd_refusals", tenant="b", reason="HostNotAllowed"), "b's problem"
        )
        assert await s.value("kubelbd_conflicts", tenant="a") == 0

        # A record that does not parse is refused, and counted while it is.
        bad = route_spec()
        bad["rules"][0]["paths"][0]["pathType"] = "Regex"
        await mgmt.create(ROUTES, record_object("Route", "a", "default.bad", bad))
        await until(s.reaches(1, "kubelbd_refusals", tenant="a", reason="InvalidRecord"), "refused")
        await mgmt.delete(ROUTES, "default.bad", "tenant-a")
        await until(s.reaches_nothing("kubelbd_refusals", tenant="a", reason="InvalidRecord"))
        await mgmt.delete(ROUTES, "default.shop", "tenant-a")
        await until(s.reaches(0, "kubelbd_routes", tenant="a"), "alpha's route gone")
        await until(s.reaches(0, "kubelbd_certificates", tenant="a"), "its certificate unused")
    # No data plane running: no state to report.
    async with health_server() as s:
        assert await s.value("kubelbd_routes", tenant="b") is None


# ---- events, recorded where they happen -------------------------------------------------------


async def test_a_change_is_timed_from_arrival_to_envoy_applying_it(tmp_path: Path) -> None:
    mgmt = await management()
    dp = dataplane(mgmt, tmp_path)
    async with health_server() as s, running(dp.run):
        await dp.first_publish.wait()
        applied = await s.value("kubelbd_watch_to_applied_seconds_count", kind="Route") or 0
        published = await s.value("kubelbd_publish_duration_seconds_count") or 0
        await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", route_spec()))
        await until(
            s.above(applied, "kubelbd_watch_to_applied_seconds_count", kind="Route"), "timed"
        )
        assert await s.value("kubelbd_publish_duration_seconds_count") == published + 1
        # It took its time, not none.
        total = await s.value("kubelbd_watch_to_applied_seconds_sum", kind="Route")
        assert total is not None and total > 0


async def test_failed_api_writes_by_cluster_verb_resource_and_code() -> None:
    async def refuse(request: web.Request) -> web.Response:
        body = {"kind": "Status", "reason": "Conflict", "message": "no", "code": 409}
        return web.json_response(body, status=409)

    async def gone(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "reason": "NotFound"}, status=404)

    app = web.Application()
    app.router.add_patch("/apis/kubelb.io/v1alpha1/namespaces/t/routes/r/status", refuse)
    app.router.add_delete("/apis/kubelb.io/v1alpha1/namespaces/t/routes/r", gone)
    labels = {"cluster": "alpha", "verb": "apply", "resource": "routes/status", "code": "409"}
    series = "kubelbd_api_write_failures_total"
    async with health_server() as s, http_server(app) as address:
        before = await s.value(series, **labels) or 0
        kube = await Kube.from_kubeconfig(kubeconfig(f"http://{address}"), "alpha")
        async with kube:
            obj: Obj = {"metadata": {"name": "r", "namespace": "t"}, "status": {}}
            with pytest.raises(ApiError):
                await kube.apply(ROUTES, obj, subresource="status")
            assert await s.value(series, **labels) == before + 1
            # Deleting what is gone already is what the caller asked for: no failure.
            deleted = {**labels, "verb": "delete", "resource": "routes", "code": "404"}
            await kube.delete(ROUTES, "r", "t")
            assert await s.value(series, **deleted) is None
        # No answer at all.
        closed = await Kube.from_kubeconfig(kubeconfig(f"http://127.0.0.1:{free_port()}"), "beta")
        async with closed:
            unanswered = {**labels, "cluster": "beta", "code": "connection"}
            before = await s.value(series, **unanswered) or 0
            with pytest.raises(ConnectionError):
                await closed.apply(ROUTES, obj, subresource="status")
            assert await s.value(series, **unanswered) == before + 1


def kubeconfig(server: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }


async def test_envoys_rejections_are_copied_while_files_change() -> None:
    rejected = {"lds": 0, "rds": 0, "srds": 0}
    asked: list[str] = []

    async def stats(request: web.Request) -> web.Response:
        asked.append(request.query_string)
        out = [
            {"name": "listener_manager.lds.update_rejected", "value": rejected["lds"]},
            {"name": "http.shard_0.rds.shard.0.update_rejected", "value": rejected["rds"]},
            {"name": "http.shard_1.rds.shard.1.update_rejected", "value": rejected["rds"]},
            {"name": "http.http.scoped_rds.hosts.update_rejected", "value": rejected["srds"]},
            {"name": "cluster_manager.cds.update_attempt", "value": 7},
        ]
        return web.json_response({"stats": out})

    app = web.Application()
    app.router.add_get("/stats", stats)
    published = {"lds.pb": "v1"}
    async with (
        health_server() as s,
        http_server(app) as address,
        admin_of(address) as admin,
        running(lambda: copy_rejections(admin, published, interval=0.01)),
    ):
        series = "kubelbd_envoy_update_rejected_total"
        await until(s.reaches(0, series, type="lds"), "read once at the start")
        assert await s.value(series, type="cds") == 0  # every type, rejected or not
        assert "type=Counters" in asked[0] and "update_rejected" in asked[0]
        # Nothing published since: Envoy is left alone after the read that catches a late one.
        await until(lambda: len(asked) >= 2, "the second read")
        rejected.update(lds=1, rds=2, srds=3)
        published["lds.pb"] = "v2"
        await until(s.reaches(1, series, type="lds"), "an LDS rejection")
        assert await s.value(series, type="rds") == 4  # summed over route tables
        assert await s.value(series, type="srds") == 3  # the host scopes: not route tables
        settled = len(asked)
        with anyio.move_on_after(0.2):
            await until(lambda: len(asked) > settled + 2, "more reads than needed", timeout=1)
        assert len(asked) <= settled + 2


async def test_leadership_is_what_the_election_last_said() -> None:
    leadership = Leadership()  # what the LeaseElector sets on every answer about the Lease
    async with health_server() as s:
        leadership.set(True)
        assert await s.value("kubelbd_leader") == 1
        leadership.set(False)
        assert await s.value("kubelbd_leader") == 0


# ---- what is shipped for Prometheus and Grafana -----------------------------------------------

#: a metric name in PromQL: an identifier followed by `{`, `[`, `)`, whitespace or the end,
#: that is neither a function, an aggregation keyword nor a label inside braces
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "increase", "histogram_quantile", "max", "min", "count",
    "avg", "time", "topk", "bottomk", "le", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "clamp_min", "changes", "irate", "delta", "label_replace",
    "sort_desc", "absent", "vector", "offset", "bool",
}  # fmt: skip


def metric_names_in(expr: str) -> set[str]:
    """The metric names an expression queries: identifiers outside braces, quotes, ranges
    and label lists that PromQL does not reserve, and not grafana variables ($tenant)."""
    outside = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", " ", expr)
    # label lists: sum by (tenant, reason), on (pod), ...
    outside = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", outside)
    words = set(re.findall(r"(?<![$\w])[a-zA-Z_:][a-zA-Z0-9_:]*", outside))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("__")}


def exposed_names() -> set[str]:
    """Every series name the registry exposes: histograms' and counters' suffixes too."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def dashboard() -> dict[str, Any]:
    out: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return out


def test_the_dashboard_queries_only_metrics_kubelbd_defines() -> None:
    board = dashboard()
    assert board["title"] and board["uid"]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "tenant"]
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queried = set().union(*(metric_names_in(e) for e in exprs))
    assert queried <= exposed_names(), queried - exposed_names()
    # Every family kubelbd defines has a panel.
    kubelbd = {f.name for f in metrics.REGISTRY.collect() if f.name.startswith("kubelbd_")}
    shown = {n for n in kubelbd if any(q.startswith(n) for q in queried)}
    assert shown == kubelbd, kubelbd - shown


def test_the_metric_name_parser_sees_names_not_functions_or_labels() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(kubelbd_watch_to_applied_seconds_bucket"
        '{kind="Route"}[5m]))) > bool kubelbd_leader'
    )
    assert metric_names_in(expr) == {"kubelbd_watch_to_applied_seconds_bucket", "kubelbd_leader"}
    assert metric_names_in('kubelbd_routes{tenant=~"$tenant"}') == {"kubelbd_routes"}
    assert metric_names_in("sum by (tenant, reason) (kubelbd_refusals)") == {"kubelbd_refusals"}


def test_the_service_monitor_scrapes_the_health_port() -> None:
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["kubelb"]}
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] == "health" and endpoint["path"] == "/metrics"
    service = yaml.safe_load((MONITORING / "service.yaml").read_text())
    assert service["metadata"]["name"] == "kubelbd-metrics"
    assert service["metadata"]["namespace"] == "kubelb"
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "health" in [p["name"] for p in service["spec"]["ports"]]
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["service.yaml", "servicemonitor.yaml"]
