"""Which node addresses Envoy dials (kubelbd.sources.nodes)."""

from __future__ import annotations

from kubelbd.objects import Obj
from kubelbd.records.policy import Policy, parse_networks
from kubelbd.sources.nodes import node_addresses

OPEN = Policy()


def node(name: str, address: str, ready: bool) -> Obj:
    return {
        "metadata": {"name": name},
        "status": {
            "addresses": [{"type": "Hostname", "address": name},
                          {"type": "InternalIP", "address": address}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }  # fmt: skip


def test_only_ready_nodes_while_some_are() -> None:
    nodes = [node("a", "10.0.0.2", True), node("b", "10.0.0.1", False)]
    assert node_addresses(nodes, "InternalIP", OPEN).addresses == ["10.0.0.2"]


def test_every_node_when_none_is_ready() -> None:
    # A tenant's control plane back from an outage marks every node NotReady at once:
    # dropping them all would answer 503 for every route until the kubelets are heard again.
    nodes = [node("a", "10.0.0.2", False), node("b", "10.0.0.1", False)]
    assert node_addresses(nodes, "InternalIP", OPEN).addresses == ["10.0.0.1", "10.0.0.2"]


def test_no_nodes_no_addresses() -> None:
    assert node_addresses([], "InternalIP", OPEN).addresses == []


def test_addresses_the_policy_refuses_are_not_used() -> None:
    nodes = [
        node("loop", "127.0.0.1", False),  # Envoy's admin API is there; NotReady or not
        node("link", "169.254.169.254", True),  # a cloud's metadata service
        node("name", "not-an-ip", True),  # Envoy would reject the cluster
        node("mgmt", "10.1.0.7", True),
        node("ok", "10.0.0.1", True),
    ]
    policy = Policy(forbidden=parse_networks(["10.1.0.0/16"]))
    got = node_addresses(nodes, "InternalIP", policy)
    assert got.addresses == ["10.0.0.1"]
    assert [n for n, _ in got.refused] == ["link", "loop", "mgmt", "name"]
    assert "management cluster" in dict(got.refused)["mgmt"]


def test_only_inside_the_node_cidrs_and_there_even_loopback() -> None:
    nodes = [node("a", "127.0.1.1", True), node("b", "127.0.2.1", True)]
    policy = Policy(node_cidrs=parse_networks(["127.0.1.0/24"]))
    got = node_addresses(nodes, "InternalIP", policy)
    assert got.addresses == ["127.0.1.1"]
    assert got.refused == [("b", "127.0.2.1 is outside the tenant's nodeCIDRs (127.0.1.0/24)")]


def test_a_lying_api_server_cannot_crash_it() -> None:
    odd: list[Obj] = [
        {"metadata": None, "status": []},
        {"status": {"addresses": "x", "conditions": [None, 3]}},
        {"status": {"addresses": [None, {"type": "InternalIP", "address": 7}]}},
    ]
    got = node_addresses(odd, "InternalIP", OPEN)
    assert got.addresses == []
    assert got.refused == [("", "'7' is not an IP address")]


def test_a_node_not_ready_keeps_its_claim_and_addresses_have_one_spelling() -> None:
    nodes = [node("a", "2001:DB8::5", True), node("b", "10.0.0.9", False)]
    got = node_addresses(nodes, "InternalIP", OPEN)
    assert got.addresses == ["2001:db8::5"]  # what Envoy dials: Ready ones
    assert got.claimed == ["10.0.0.9", "2001:db8::5"]  # what the tenant holds: all
