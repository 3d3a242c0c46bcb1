"""The Tenant record's status as data: conditions from what the tenant task saw, which
changes are minor (coalesced), and the reason each failure is reported under."""

from __future__ import annotations

import pytest

from kubelbd.kube import ApiError, KubeconfigError, KubeconfigRefused
from kubelbd.tenant.health import RetryLater, classify, nodes_state, tenant_status


def test_connected_and_synced_conditions() -> None:
    status = tenant_status((True, "Connected", "watching"), (False, "APIError", "500"), "500")
    connected, synced, nodes, policy = status.conditions
    assert (connected["type"], connected["status"], connected["reason"]) == (
        "Connected", "True", "Connected",
    )  # fmt: skip
    assert (synced["type"], synced["status"], synced["reason"]) == ("Synced", "False", "APIError")
    assert status.last_error == "500"
    assert "lastTransitionTime" not in connected  # stamped by the writer, not decided here
    assert (nodes["type"], nodes["status"]) == ("NodesAccepted", "True")
    assert (policy["type"], policy["status"]) == ("PolicyAccepted", "True")


def test_refused_node_addresses_are_a_false_condition_naming_them() -> None:
    refused = [(f"n{i}", "127.0.0.1 is a loopback address") for i in range(12)]
    ok, reason, message = nodes_state(refused)
    assert (ok, reason) == (False, "AddressRefused")
    assert message.startswith("not used: node n0: 127.0.0.1 is a loopback address; node n1")
    assert message.endswith("(and 2 more)")
    assert nodes_state([])[0] is True


def test_only_a_message_moving_is_a_minor_change() -> None:
    ok = (True, "Connected", "watching")
    three = tenant_status(ok, (True, "Synced", "3 routes in sync"), "")
    four = tenant_status(ok, (True, "Synced", "4 routes in sync"), "")
    failing = tenant_status(ok, (False, "Unreachable", "4 routes in sync"), "")
    assert four.minor_change_from(three)
    assert not failing.minor_change_from(three)  # a status or reason moved: written at once
    assert not four.minor_change_from(None)  # nothing written yet
    other_error = tenant_status(ok, (True, "Synced", "3 routes in sync"), "boom")
    assert not other_error.minor_change_from(three)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (KubeconfigError("bad"), "InvalidKubeconfig"),
        (KubeconfigRefused("exec"), "KubeconfigRefused"),
        (RetryLater("2 objects failed"), "ObjectErrors"),
        (ApiError(401, "Unauthorized", "no"), "Unauthorized"),
        (ApiError(403, "Forbidden", "no"), "Unauthorized"),
        (ApiError(500, "InternalError", "oops"), "APIError"),
        (ConnectionError("refused"), "Unreachable"),
        (TimeoutError(), "Unreachable"),
        (ValueError("bug"), "Error"),
    ],
)
def test_failures_are_classified(error: BaseException, reason: str) -> None:
    assert classify(error)[0] == reason
