"""Containment: hostile tenant objects through every stage, and nothing breaks.

Generated Ingresses, Services, Nodes and IngressClasses (tests/hostile.py: wrong JSON types,
names past their limits, control characters, odd hosts and paths, ports out of range) go the
way a tenant's objects go, with the golden tests' wiring:

- the tenant side: `is_ours`, `references` and `translate` of every source, the NodePort
  twins of the backends, the status patch, the node addresses;
- the records, read back as the data plane reads them (records/parse, strict), beside the
  records of a well-behaved tenant;
- the IR, TLS plan, Layer 4 placements and every status (tests/test_golden_ir.run_case);
- Envoy's files (tests/test_golden_envoy.render), encoded as the publisher encodes them.

Properties: no exception anywhere (a record that does not parse would be one: the tenant side
hands its translation to the data plane unparsed); every spec fits its CRD and survives the
data plane's parsing unchanged; the well-behaved tenant's host is still served; the files
hold nothing Envoy is known to reject (checked on every example); and for a sample, Envoy
itself accepts them (`envoy --mode validate`).

Examples: KUBELBD_HOSTILE_EXAMPLES (default 10,000) split over the stages: most through the
tenant side alone, which is where tenant data enters, a share through the whole pipeline.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from kubelbd.envoy import publisher
from kubelbd.envoy.scopes import host_scope_name, scope_file
from kubelbd.envoy.settings import shard_of
from kubelbd.objects import INGRESS_CLASSES, INGRESSES, NODES, SERVICES, Obj, Resource, key
from kubelbd.records import parse
from kubelbd.records.policy import Policy
from kubelbd.records.status import Event, SourceStatus
from kubelbd.sources import SOURCES, twins
from kubelbd.sources.base import Source
from kubelbd.sources.nodes import node_addresses

from . import hostile
from .test_golden_envoy import render
from .test_golden_ir import run_case
from .test_golden_sources import translate
from .test_properties import envoy_validate, needs_envoy, static_bootstrap

EXAMPLES = int(os.environ.get("KUBELBD_HOSTILE_EXAMPLES", "10000"))
#: share of the examples that go through the whole pipeline, not the tenant side alone
PIPELINE_SHARE = 0.2
ENVOY_EXAMPLES = 20

HOSTILE, GOOD = "hostile", "good"
GOOD_HOST = "good.kubelb.test"
GOOD_ROUTE = {
    "source": {"kind": "Ingress", "namespace": "default", "name": "site", "uid": "uid-site",
               "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
    "rules": [{"host": GOOD_HOST, "paths": [{"path": "/", "pathType": "Prefix", "backends": [
        {"service": "web", "port": "80", "nodePort": 30080}]}]}],
}  # fmt: skip
GOOD_LB = {
    "source": {"kind": "Service", "namespace": "default", "name": "db", "uid": "uid-db",
               "creationTimestamp": "2026-01-01T00:00:00Z"},
    "ports": [{"port": 5432, "protocol": "TCP", "nodePort": 30432}],
    "sessionAffinity": "None",
    "proxyProtocol": "",
}  # fmt: skip
L4_MODES = (
    {"mode": "pool", "pool": "10.200.0.0/24"},
    {"mode": "range", "range": {"address": "127.0.0.1", "first": 20000, "last": 20015}},
)


def hostile_settings(examples: int) -> settings:
    """No deadline (generated tenants are large, the machine is shared), and no explain phase:
    on objects this large it takes minutes to say what the shrunk failure shows already."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    )  # fmt: skip


# ---- the tenant ------------------------------------------------------------------------------


@dataclass
class Tenant:
    """A hostile tenant's objects, as its caches hold them (one object per namespace/name)."""

    ingresses: list[Obj]
    services: list[Obj]
    nodes: list[Obj]
    classes: list[Obj]
    twins: dict[tuple[str, str], Obj] = field(default_factory=dict)  # (ns, original) -> twin
    #: the fleet's defaults: every domain, no special or management node address
    policy: Policy = field(default_factory=Policy)
    memo: dict[str, Any] = field(default_factory=dict)

    def objects(self, resource: Resource) -> list[Obj]:
        # Gateway API kinds: none generated yet (tests/test_sources_gateway.py has cases)
        return {INGRESSES: self.ingresses, SERVICES: self.services, NODES: self.nodes,
                INGRESS_CLASSES: self.classes}.get(resource, [])  # fmt: skip

    # TenantView
    def get(self, resource: Resource, namespace: str, name: str) -> Obj | None:
        want = f"{namespace}/{name}" if resource.namespaced else name
        return next((o for o in self.all(resource) if key(o) == want), None)

    def all(self, resource: Resource) -> Iterable[Obj]:
        if resource == SERVICES:
            return [*self.services, *self.twins.values()]
        return self.objects(resource)

    def twin(self, namespace: str, name: str) -> Obj | None:
        return self.twins.get((namespace, name))


def _unique(
    objects: st.SearchStrategy[Obj], max_size: int, min_size: int = 0
) -> st.SearchStrategy[list[Obj]]:
    return st.lists(objects, min_size=min_size, max_size=max_size, unique_by=key)


tenants = st.builds(
    Tenant,
    ingresses=_unique(hostile.ingresses, 3, min_size=1),
    services=_unique(hostile.services, 4, min_size=1),
    nodes=_unique(hostile.nodes, 3),
    classes=_unique(hostile.ingress_classes, 2),
)


@dataclass
class Records:
    """What the tenant side writes for one tenant: record name -> spec, per kind."""

    routes: dict[str, Any] = field(default_factory=dict)
    lbs: dict[str, Any] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)


ADDRESSES = (("ip", "10.0.0.1"), ("hostname", "lb.a"))
STATUSES = (
    SourceStatus("Ingress", "default", "x", "uid"),
    SourceStatus("Ingress", "default", "x", "uid", ADDRESSES, (Event("Warning", "R", "\x00"),)),
)


def tenant_side(tenant: Tenant, data: st.DataObject) -> Records:
    """Every source over every object of its kind, as tenant/sync does: `references` on
    each object seen, twins for the backends, `translate` and the status for those of ours."""
    out = Records()
    for source in SOURCES:
        for obj in tenant.objects(source.resource):
            refs = source.references(obj, tenant)
            for ns, name in sorted(refs.backends):
                svc = tenant.get(SERVICES, ns, name)
                if svc is not None and twins.needs_twin(svc):  # tenant/twins.Twins.ensure
                    twin = twins.twin(svc)
                    for p in twin["spec"]["ports"]:
                        p["nodePort"] = data.draw(hostile.twin_node_ports, label="twin nodePort")
                    tenant.twins[(ns, name)] = twin
        for obj in tenant.objects(source.resource):
            _translated(source, obj, tenant, out)
    for svc in tenant.services:  # as tenant/sync and tenant/twins see every Service
        if twins.original_of(svc) is None and twins.needs_twin(svc):
            twins.same_twin(svc, twins.twin(svc))
    twins.free_node_ports(tenant.services, 2, random.Random(0))
    out.addresses = node_addresses(tenant.nodes, "InternalIP", tenant.policy).addresses
    assert all(isinstance(a, str) for a in out.addresses)
    parse.tenant_record(tenant_object(out.addresses))  # what the data plane reads back
    return out


def _translated(source: Source, obj: Obj, tenant: Tenant, out: Records) -> None:
    # The golden tests' check: is_ours, then the spec fits its CRD and survives parsing.
    got = translate(source, obj, tenant)  # type: ignore[arg-type]
    if got == "not ours":
        return
    meta = obj["metadata"]
    name = source.record_name(meta["namespace"], meta["name"])
    records = out.routes if source.record.kind == "Route" else out.lbs
    records[name] = got["spec"]
    for p in got["spec"].get("problems", []):
        event(f"problem: {p['reason']}")
    for status in STATUSES:
        source.status_patch(obj, status)


def tenant_object(addresses: list[str]) -> Obj:
    return {"metadata": {"name": HOSTILE, "namespace": f"tenant-{HOSTILE}"},
            "status": {"nodeAddressType": "InternalIP", "nodeAddresses": addresses}}  # fmt: skip


# ---- the data plane --------------------------------------------------------------------------


def ir_case(records: Records, l4_mode: dict[str, Any]) -> dict[str, Any]:
    """The records of both tenants as a golden ir/ case (tests/test_golden_ir.py)."""
    routes = {f"{HOSTILE}/{n}": {"spec": s} for n, s in records.routes.items()}
    lbs = {f"{HOSTILE}/{n}": {"spec": s} for n, s in records.lbs.items()}
    return {
        "tenants": {HOSTILE: records.addresses, GOOD: ["10.0.9.1"]},
        "routes": {**routes, f"{GOOD}/default.site": {"spec": GOOD_ROUTE}},
        "loadBalancers": {**l4_mode, "records": {**lbs, f"{GOOD}/default.db": {"spec": GOOD_LB}}},
    }


def data_plane(records: Records, l4_mode: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Records → IR, TLS, Layer 4, statuses (test_golden_ir) → Envoy's files (test_golden_envoy)."""
    out = run_case(ir_case(records, l4_mode))
    # How far hostile data got, for --hypothesis-show-statistics.
    served = [h for h, vh in out["ir"]["vhosts"].items() if vh["tenant"] == HOSTILE]
    listeners = [x for x in out["l4"]["listeners"] if HOSTILE in x["name"]]
    clusters = [c for c in out["ir"]["clusters"].values() if c["tenant"] == HOSTILE]
    event(f"hostile hosts served: {min(len(served), 3)}")
    event(f"hostile L4 listeners: {min(len(listeners), 3)}")
    event(f"hostile clusters: {min(len(clusters), 3)}")
    good = out["ir"]["vhosts"].get(GOOD_HOST)
    assert good is not None and good["tenant"] == GOOD, "the well-behaved tenant lost its host"
    files = render({"settings": {"shards": 4}, "ir": out["ir"], "l4": out["l4"]})
    # Its own scope (envoy/scopes.py), or its shard's table when it has none.
    scope = files.get(scope_file(host_scope_name(GOOD_HOST)))
    table = (
        scope[0]["route_configuration"] if scope else files[f"rds/{shard_of(GOOD_HOST, 4)}.pb"][0]
    )
    assert any(vh["domains"] == [GOOD_HOST] for vh in table["virtual_hosts"])
    encoder = publisher.Encoder()
    for path, resources in files.items():
        encoder.encode(path, resources)  # raises on what Envoy's API cannot hold
    check_envoy_limits(files)
    return files


# ---- what Envoy is known to reject, checked on every example --------------------------------


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def check_envoy_limits(files: dict[str, list[dict[str, Any]]]) -> None:
    """Socket addresses are IPs with ports Envoy takes; names of listeners and clusters are
    unique; no two listeners bind one address, port and protocol."""
    for resources in files.values():
        for d in _walk(resources):
            if "socket_address" in d:
                sa = d["socket_address"]
                ipaddress.ip_address(sa["address"])
                assert type(sa["port_value"]) is int and 0 <= sa["port_value"] <= 65535, sa
    for path in ("lds.pb", "cds.pb"):
        names = [r["name"] for r in files[path]]
        assert len(names) == len(set(names)), f"{path}: a name twice"
    binds = [
        (sa["address"], sa["port_value"], sa.get("protocol", "TCP"))
        for r in files["lds.pb"]
        if "address" in r
        for sa in [r["address"]["socket_address"]]
    ]
    assert len(binds) == len(set(binds)), "two listeners on one address and port"


# ---- the properties --------------------------------------------------------------------------

OBJECT_EXAMPLES = max(1, round(EXAMPLES * (1 - PIPELINE_SHARE)))
PIPELINE_EXAMPLES = max(1, round(EXAMPLES * PIPELINE_SHARE))
#: one object of each kind beside it, well-formed, so that references resolve now and then
NEIGHBOURS = Tenant(
    ingresses=[],
    services=[{"metadata": {"name": "web", "namespace": "default", "uid": "uid-web"},
               "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}],
    nodes=[{"metadata": {"name": "n"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.1"}]}}],
    classes=[],
)  # fmt: skip
one_object = st.one_of(
    hostile.ingresses.map(lambda o: (INGRESSES, o)),
    hostile.services.map(lambda o: (SERVICES, o)),
    hostile.nodes.map(lambda o: (NODES, o)),
    hostile.ingress_classes.map(lambda o: (INGRESS_CLASSES, o)),
)


@hostile_settings(OBJECT_EXAMPLES)
@given(obj=one_object, data=st.data())
def test_each_hostile_object_translates_into_a_record_the_data_plane_reads(
    obj: tuple[Resource, Obj], data: st.DataObject
) -> None:
    """Many examples, one object each: where tenant data enters, cheaply."""
    tenant = copy.deepcopy(NEIGHBOURS)
    tenant.objects(obj[0]).append(obj[1])
    tenant_side(tenant, data)


@hostile_settings(PIPELINE_EXAMPLES)
@given(tenant=tenants, data=st.data(), l4_mode=st.sampled_from(L4_MODES))
def test_hostile_objects_reach_envoy_files_without_breaking_anything(
    tenant: Tenant, data: st.DataObject, l4_mode: dict[str, Any]
) -> None:
    records = tenant_side(tenant, data)
    data_plane(records, l4_mode)


@needs_envoy
@hostile_settings(ENVOY_EXAMPLES)
@given(tenant=tenants, data=st.data(), l4_mode=st.sampled_from(L4_MODES))
def test_envoy_accepts_what_hostile_objects_become(
    tenant: Tenant, data: st.DataObject, l4_mode: dict[str, Any]
) -> None:
    files = data_plane(tenant_side(tenant, data), l4_mode)
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
