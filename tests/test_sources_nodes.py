"""Which node addresses Envoy dials (kubelbd.sources.nodes)."""

from __future__ import annotations

from kubelbd.objects import Obj
from kubelbd.sources.nodes import node_addresses


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
    assert node_addresses(nodes, "InternalIP") == ["10.0.0.2"]


def test_every_node_when_none_is_ready() -> None:
    # A tenant's control plane back from an outage marks every node NotReady at once:
    # dropping them all would answer 503 for every route until the kubelets are heard again.
    nodes = [node("a", "10.0.0.2", False), node("b", "10.0.0.1", False)]
    assert node_addresses(nodes, "InternalIP") == ["10.0.0.1", "10.0.0.2"]


def test_no_nodes_no_addresses() -> None:
    assert node_addresses([], "InternalIP") == []
