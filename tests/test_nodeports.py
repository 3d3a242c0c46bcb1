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
