"""Layer 4, pure parts: which Services are ours, their translation, and allocation."""

from __future__ import annotations

from typing import Any

from kubelbd.envoy.l4 import l4_cluster, l4_listener
from kubelbd.envoy.settings import Settings
from kubelbd.ir import allocation as allocator
from kubelbd.ir import l4 as l4ir
from kubelbd.ir.allocation import AddressRequest, PortRequest
from kubelbd.records.policy import Policy
from kubelbd.records.types import L4Port, LBRecord, LoadBalancerSpec, TenantRecord
from kubelbd.sources import loadbalancer as l4


def lb_spec(name: str, ports: list[L4Port], **extra: Any) -> LoadBalancerSpec:
    spec: LoadBalancerSpec = {
        "source": {
            "kind": "Service",
            "namespace": "default",
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "ports": ports,
        "sessionAffinity": extra.get("sessionAffinity", "None"),
        "proxyProtocol": extra.get("proxyProtocol", ""),
    }
    return spec


def svc(name: str = "web", **spec: object) -> dict:  # type: ignore[type-arg]
    base = {
        "type": "LoadBalancer",
        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "nodePort": 31443}],
    }
    return {
        "metadata": {"name": name, "namespace": "default", "uid": "u1",
                     "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {}},
        "spec": {**base, **spec},
    }  # fmt: skip


def test_only_our_load_balancer_class_is_served() -> None:
    assert l4.is_ours(svc())
    assert l4.is_ours(svc(loadBalancerClass="kubelb.io/lb"))
    assert not l4.is_ours(svc(loadBalancerClass="service.k8s.aws/nlb"))
    assert not l4.is_ours(svc(type="NodePort"))


def test_translation_keeps_ports_and_reports_what_cannot_be_served() -> None:
    s = svc(
        ports=[
            {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
            {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 31443},
            {"name": "sig", "port": 3868, "protocol": "SCTP", "nodePort": 31868},
            {"name": "nonode", "port": 80, "protocol": "TCP"},
        ],
        sessionAffinity="ClientIP",
        loadBalancerIP="127.0.200.9",
    )
    s["metadata"]["annotations"]["kubelb.io/proxy-protocol"] = "v2"
    t = l4.translate(s, Policy())
    assert t.spec["ports"] == [
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
        {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 31443},
    ]
    assert t.spec["sessionAffinity"] == "ClientIP"
    assert t.spec["proxyProtocol"] == "v2"
    assert t.spec["requestedAddress"] == "127.0.200.9"
    assert [p.reason for p in t.problems] == ["UnsupportedProtocol", "NoNodePort"]


def req(
    key: str, age: str, requested: str | None = None, current: str | None = None
) -> AddressRequest:
    return AddressRequest(key, (age, key), requested, current)


def test_pool_allocation_is_stable_and_honours_requests() -> None:
    pool = "127.0.200.0/29"  # 6 usable addresses
    r = allocator.allocate_addresses([req("a", "1"), req("b", "2")], pool)
    assert r.assigned == {"a": "127.0.200.1", "b": "127.0.200.2"}
    # Existing allocations never move, whatever arrives and in whatever order.
    r = allocator.allocate_addresses(
        [req("c", "0"), req("b", "2", current="127.0.200.2"), req("a", "1", current="127.0.200.1")],
        pool,
    )
    assert r.assigned == {"a": "127.0.200.1", "b": "127.0.200.2", "c": "127.0.200.3"}
    # A requested address is honoured when free, refused when taken or outside the pool.
    r = allocator.allocate_addresses(
        [req("a", "1", current="127.0.200.1"), req("d", "3", requested="127.0.200.5"),
         req("e", "4", requested="127.0.200.1"), req("f", "5", requested="10.0.0.1")],
        pool,
    )  # fmt: skip
    assert r.assigned["d"] == "127.0.200.5"
    assert r.failed["e"].reason == "AddressInUse"
    assert r.failed["f"].reason == "AddressNotInPool"


def test_pool_exhaustion_is_reported_for_the_youngest() -> None:
    reqs = [req(f"lb{i}", f"{i:02d}") for i in range(8)]
    r = allocator.allocate_addresses(reqs, "127.0.200.0/29")
    assert len(r.assigned) == 6
    assert set(r.failed) == {"lb6", "lb7"}
    assert {e.reason for e in r.failed.values()} == {"PoolExhausted"}


def test_listener_ports_are_unique_per_protocol_and_stable() -> None:
    a = PortRequest("a", ("1", "a"), ((443, "TCP"), (53, "UDP")))
    b = PortRequest("b", ("2", "b"), ((443, "TCP"), (53, "UDP")))
    r = allocator.allocate_ports([b, a], 20000, 20010)
    assert r.assigned["a"] == {(443, "TCP"): 20000, (53, "UDP"): 20000}
    assert r.assigned["b"] == {(443, "TCP"): 20001, (53, "UDP"): 20001}
    b_now = PortRequest("b", ("2", "b"), ((443, "TCP"),), ((443, "TCP", 20001),))
    r = allocator.allocate_ports([b_now], 20000, 20010)
    assert r.assigned["b"] == {(443, "TCP"): 20001}
    r = allocator.allocate_ports([a, b], 20000, 20000)
    assert r.failed["b"].reason == "PortsExhausted" and "b" not in r.assigned


def test_l4_resources_use_envoy_field_names() -> None:
    rec = LBRecord(
        "alpha",
        "default.web",
        lb_spec("web", [{"port": 443, "protocol": "TCP", "nodePort": 31443},
                        {"port": 53, "protocol": "UDP", "nodePort": 30053}],
                sessionAffinity="ClientIP", proxyProtocol="v2"),
    )  # fmt: skip
    placements = {rec.id: l4ir.Placement("127.0.200.1", ((443, "TCP", 443), (53, "UDP", 53)))}
    listeners, clusters = l4ir.build(
        [rec], {"alpha": TenantRecord("alpha", ("127.0.1.1",))}, placements
    )
    by_proto = {x.protocol: x for x in listeners}
    tcp = l4_listener(by_proto["TCP"])
    assert tcp["address"]["socket_address"] == {"address": "127.0.200.1", "port_value": 443}
    proxy = tcp["filter_chains"][0]["filters"][0]["typed_config"]
    assert proxy["hash_policy"] == [{"source_ip": {}}]
    udp = l4_listener(by_proto["UDP"])
    assert udp["address"]["socket_address"]["protocol"] == "UDP"
    assert udp["listener_filters"][0]["typed_config"]["hash_policies"] == [{"source_ip": True}]
    settings = Settings(config_dir="/c")
    rendered = {c.protocol: l4_cluster(c, settings) for c in clusters}
    assert rendered["TCP"]["lb_policy"] == "RING_HASH"
    assert "health_checks" in rendered["TCP"] and "health_checks" not in rendered["UDP"]
    assert rendered["TCP"]["transport_socket"]["typed_config"]["config"] == {"version": "V2"}
    assert "transport_socket" not in rendered["UDP"]  # PROXY protocol is TCP only


def test_unplaced_records_get_no_listener() -> None:
    rec = LBRecord("alpha", "x", lb_spec("x", [{"port": 1, "protocol": "TCP", "nodePort": 30001}]))
    listeners, clusters = l4ir.build([rec], {}, {})
    assert listeners == [] and clusters == []


def test_envoy_accepts_layer4_listeners_and_clusters() -> None:
    from kubelbd.envoy.renderer import Renderer
    from kubelbd.ir import http as ir

    from .test_properties import _fails, envoy_validate, static_bootstrap

    recs = []
    placements = {}
    for i, (affinity, pp) in enumerate([("None", ""), ("ClientIP", "v2"), ("ClientIP", "")]):
        spec = lb_spec(
            f"s{i}",
            [{"port": 443, "protocol": "TCP", "nodePort": 31000 + i},
             {"port": 53, "protocol": "UDP", "nodePort": 32000 + i}],
            sessionAffinity=affinity, proxyProtocol=pp,
        )  # fmt: skip
        rec = LBRecord("alpha", f"default.s{i}", spec)
        recs.append(rec)
        address = f"127.0.200.{i + 1}"
        placements[rec.id] = l4ir.Placement(address, ((443, "TCP", 443), (53, "UDP", 53)))
    tenants = {"alpha": TenantRecord("alpha", ("127.0.1.1", "127.0.1.2"))}
    renderer = Renderer(Settings(config_dir="/config", shards=2))
    files = renderer.update(ir.IR(), ir.Delta())
    files.update(renderer.update_l4(*l4ir.build(recs, tenants, placements)))
    assert sum(1 for x in files["lds.pb"] if x["name"].startswith("l4/")) == 6
    result = envoy_validate(static_bootstrap(files))
    assert result.returncode == 0, _fails(result)


def test_a_refused_move_keeps_the_address_served() -> None:
    pool = "127.0.200.0/29"
    r = allocator.allocate_addresses(
        [req("x", "1", requested="127.0.200.2", current="127.0.200.1"),
         req("y", "2", current="127.0.200.2"), req("z", "3")],
        pool,
    )  # fmt: skip
    assert r.failed["x"].reason == "AddressInUse"
    assert r.assigned["x"] == "127.0.200.1"  # still served there, and not handed to z
    assert r.assigned["z"] == "127.0.200.3"
    # A move to a free address releases the old one.
    r = allocator.allocate_addresses(
        [req("x", "1", requested="127.0.200.4", current="127.0.200.1"), req("z", "3")], pool
    )
    assert r.assigned == {"x": "127.0.200.4", "z": "127.0.200.1"} and not r.failed


def test_pool_addresses_are_compared_canonically_and_large_pools_are_cheap() -> None:
    r = allocator.allocate_addresses(
        [req("a", "1", requested="fd00::0005"), req("b", "2", requested="fd00::"),
         req("c", "3")],
        "fd00::/64",
    )  # fmt: skip
    assert r.assigned["a"] == "fd00::5" and r.assigned["c"] == "fd00::1"
    assert r.failed["b"].reason == "AddressNotInPool"  # the subnet-router anycast address
    r = allocator.allocate_addresses([req("a", "1", requested="10.255.255.255")], "10.0.0.0/8")
    assert r.failed["a"].reason == "AddressNotInPool"  # broadcast
    r = allocator.allocate_addresses([req("a", "1", requested="not-an-ip")], "10.0.0.0/8")
    assert r.failed["a"].reason == "AddressNotInPool"


def test_a_failed_port_request_neither_starves_others_nor_loses_its_ports() -> None:
    x = PortRequest("x", ("1", "x"), ((80, "TCP"), (443, "TCP"), (8443, "TCP")))
    y = PortRequest("y", ("2", "y"), ((80, "TCP"),))
    r = allocator.allocate_ports([x, y], 30000, 30001)
    assert r.failed["x"].reason == "PortsExhausted" and "x" not in r.assigned
    assert r.assigned["y"] == {(80, "TCP"): 30000}
    # One more port on a Service that already has its listeners, in a full range.
    grown = PortRequest("x", ("1", "x"), ((80, "TCP"), (443, "TCP")), ((80, "TCP", 30000),))
    r = allocator.allocate_ports([grown], 30000, 30000)
    assert r.failed["x"].reason == "PortsExhausted"
    assert r.assigned["x"] == {(80, "TCP"): 30000}
