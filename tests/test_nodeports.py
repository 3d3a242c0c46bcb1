"""NodePort twins: names, and the nodePorts kubelbd chooses for a new twin."""

from __future__ import annotations

import random

from kubelbd.sources import twins


def svc(*node_ports: int) -> dict[str, object]:
    return {"spec": {"ports": [{"port": 80, "nodePort": p} for p in node_ports]}}


def test_chosen_ports_are_free_distinct_and_in_the_default_range() -> None:
    low, high = twins.NODE_PORT_RANGE
    taken = list(range(low, high - 3))  # all but the last three
    ports = twins.free_node_ports([svc(*taken), {"spec": {}}], 3, random.Random(1))
    assert sorted(ports) == [high - 3, high - 2, high - 1]


def test_no_choice_when_there_are_not_enough_free_ports() -> None:
    low, high = twins.NODE_PORT_RANGE
    assert twins.free_node_ports([svc(*range(low, high - 1))], 2, random.Random(1)) == []
    assert twins.free_node_ports([], 0, random.Random(1)) == []


def test_twin_names_stay_within_the_dns_label_limit() -> None:
    assert twins.twin_name("web") == "kubelb-web"
    long = twins.twin_name("x" * 63)
    assert len(long) <= 63 and long != twins.twin_name("x" * 62 + "y")


TWIN = {"metadata": {"name": "kubelb-db", "namespace": "d", "uid": "u1",
                     "labels": {twins.TWIN_OF: "db"}}}  # fmt: skip


def test_a_hand_written_slice_is_mirrored_for_the_twin_and_nothing_else() -> None:
    hand = {
        "metadata": {"name": "db-1", "namespace": "d", "labels": {twins.SERVICE_NAME: "db"},
                     "annotations": {"a": "b"}, "ownerReferences": [{"uid": "theirs"}]},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "extra": 1}],
        "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": False},
                       "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "p"}}],
    }  # fmt: skip
    m = twins.mirror(hand, TWIN)
    assert m is not None
    assert m["metadata"]["name"] == "kubelb-db-1"
    assert m["metadata"]["labels"][twins.SERVICE_NAME] == "kubelb-db"
    assert m["metadata"]["labels"][twins.SLICE_MANAGER] == twins.MIRRORED_BY
    assert m["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Service", "name": "kubelb-db", "uid": "u1"}
    ]
    assert m["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    assert m["endpoints"] == [
        {"addresses": ["10.0.0.9"], "conditions": {"ready": False}, "nodeName": "n1"}
    ]
    assert twins.same_mirror(m, m) and not twins.same_mirror({**m, "endpoints": []}, m)


def test_a_slice_of_the_wrong_shape_is_not_mirrored() -> None:
    base = {"metadata": {"name": "x", "namespace": "d"}, "addressType": "IPv4"}
    for bad in (
        {**base, "endpoints": [{"addresses": "10.0.0.1"}]},
        {**base, "ports": [{"port": 70000}]},
        {**base, "addressType": 4},
        {"metadata": {"name": "x", "namespace": "d"}},
    ):
        assert twins.mirror(bad, TWIN) is None, bad
