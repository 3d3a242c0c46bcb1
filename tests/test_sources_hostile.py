"""What tests/test_hostile.py found, one case each: tenant objects of the wrong shape or with
values Envoy or the API server would refuse become problems (conditions and Events), never
exceptions, and never records that do not fit their CRD."""

from __future__ import annotations

import random
from typing import Any

from kubelbd.objects import INGRESS_CLASSES, SERVICES, Obj, annotations_of, labels_of
from kubelbd.records import parse
from kubelbd.records.policy import Policy
from kubelbd.records.status import SourceStatus
from kubelbd.sources import common, ingress, loadbalancer, twins
from kubelbd.sources.nodes import node_addresses

from .test_golden_sources import View


def _ingress(spec: Any, **meta: Any) -> Obj:
    return {"metadata": {"name": "web", "namespace": "default", **meta}, "spec": spec}


def _view(*services: Obj, classes: tuple[Obj, ...] = ()) -> View:
    view = View({})
    for svc in services:
        view.objects[SERVICES][f"default/{svc['metadata']['name']}"] = svc
    for c in classes:
        view.objects[INGRESS_CLASSES][c["metadata"]["name"]] = c
    return view


def _route(spec: Any, view: View | None = None) -> dict[str, Any]:
    result = ingress.translate(_ingress(spec), view or _view())
    assert parse.route_spec(result.spec) == result.spec  # what the data plane reads back
    return dict(result.spec)


def _reasons(spec: dict[str, Any]) -> list[str]:
    return [p["reason"] for p in spec.get("problems", [])]


def test_an_ingress_of_the_wrong_shape_is_refused_naming_the_field() -> None:
    spec = {"ingressClassName": "kubelb", "rules": [{"host": 5}]}
    route = _route(spec)
    assert route["rules"] == [] and _reasons(route) == ["InvalidObject"]
    assert route["problems"][0]["message"].startswith("spec.rules.0.host")
    assert ingress.IngressSource().references(_ingress([{}]), _view()).backends == frozenset()
    assert _reasons(_route([{}])) == ["InvalidObject"]


def test_a_malformed_ingress_class_is_nobodys() -> None:
    view = _view(classes=({"metadata": {"name": "x"}, "spec": True},))
    assert ingress.IngressSource().is_ours(_ingress({"ingressClassName": "kubelb"}), view)
    assert not ingress.IngressSource().is_ours(_ingress({"ingressClassName": ["kubelb"]}), view)


def test_hosts_past_the_dns_length_limits_are_refused() -> None:
    for host in ("a" * 64 + ".example.com", ".".join(["a" * 63] * 4)):
        route = _route({"rules": [{"host": host, "http": {"paths": [{"path": "/"}]}}]})
        assert _reasons(route) == ["InvalidHost"]
    at_limit = ".".join(["a" * 63] * 3) + "." + "b" * 61  # 63-character labels, 253 in all
    assert common.HOST.fullmatch(at_limit)


def test_a_backend_whose_node_port_envoy_cannot_dial_is_refused() -> None:
    svc = {"metadata": {"name": "web", "namespace": "default"},
           "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 2**64}]}}  # fmt: skip
    path = {"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}  # fmt: skip
    route = _route({"rules": [{"host": "a.example.com", "http": {"paths": [path]}}]}, _view(svc))
    (backend,) = route["rules"][0]["paths"][0]["backends"]
    assert "nodePort" not in backend and _reasons(route) == ["InvalidBackend"]


def _lb(ports: Any, **spec: Any) -> dict[str, Any]:
    svc = {"metadata": {"name": "db", "namespace": "default"},
           "spec": {"type": "LoadBalancer", "ports": ports, **spec}}  # fmt: skip
    result = loadbalancer.translate(svc, Policy())
    assert parse.lb_spec(result.spec) == result.spec
    return dict(result.spec)


def test_load_balancer_ports_listed_twice_or_out_of_range_are_refused() -> None:
    port = {"port": 53, "protocol": "UDP", "nodePort": 30053}
    twice = _lb([port, port])
    assert twice["ports"] == [port] and _reasons(twice) == ["DuplicatePort"]
    too_big = _lb([{**port, "port": 65536}])
    assert too_big["ports"] == [] and _reasons(too_big) == ["InvalidObject"]


def test_an_unknown_session_affinity_is_refused_as_none() -> None:
    lb = _lb([], sessionAffinity="Sticky")
    assert lb["sessionAffinity"] == "None" and _reasons(lb) == ["InvalidField"]


def test_node_addresses_are_ips_envoy_can_dial() -> None:
    def node(*addresses: Any) -> Obj:
        return {"status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]}}

    nodes = [node("node-1"), node("fe80::1%eth0"), node(5), node("10.0.0.1"), {"status": []}]
    found = node_addresses(nodes, "InternalIP", Policy())
    assert found.addresses == ["10.0.0.1"]
    assert len(found.refused) == 3  # each said why, the malformed node left out


def test_labels_and_annotations_keep_only_strings() -> None:
    obj = {"metadata": {"labels": [1], "annotations": {"a": 1, "b": "x"}}}
    assert labels_of(obj) == {} and annotations_of(obj) == {"b": "x"}
    assert loadbalancer.translate(
        {"metadata": {"name": "db", "namespace": "default",
                      "annotations": {loadbalancer.PROXY_PROTOCOL_ANNOTATION: 2}},
         "spec": {"type": "LoadBalancer"}},
        Policy(),
    ).problems == []  # fmt: skip


def test_twins_of_malformed_services() -> None:
    svc = {"metadata": {"name": "web", "namespace": "default"},
           "spec": {"ports": [{"port": 80}]}}  # fmt: skip
    twin = twins.twin(svc)  # no uid: the tenant's API server left it out
    broken = {"metadata": twin["metadata"], "spec": {"ports": [{"port": "80"}]}}
    assert not twins.same_twin(broken, twin)
    assert twins.assigned_node_ports(broken) == {}
    assert not twins.needs_twin({"spec": {"ports": {"port": 80}}})
    assert len(twins.free_node_ports([broken, {"spec": []}], 2, random.Random(0))) == 2


def test_a_malformed_status_is_replaced() -> None:
    status = SourceStatus("Ingress", "default", "web", "uid", (("ip", "10.0.0.1"),))
    patch = ingress.IngressSource().status_patch({"status": [1]}, status)
    assert patch is not None
    assert patch.body == {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}


def test_a_port_whose_name_is_null_is_compared_as_unnamed() -> None:
    ports = [{"port": 80}, {"port": 80, "name": None}]
    svc = {"metadata": {"name": "web", "namespace": "default", "uid": "u"},
           "spec": {"type": "ClusterIP", "ports": ports}}  # fmt: skip
    assert twins.same_twin(twins.twin(svc), twins.twin(svc))
