"""kubelbd.hub.StatusBoard.busy: whether some tenant task still has object statuses to
write, which the management cluster's own writes let go first."""

from __future__ import annotations

from kubelbd.hub import StatusBoard
from kubelbd.records.status import SourceStatus


def status(name: str) -> SourceStatus:
    return SourceStatus("Ingress", "default", name, f"uid-{name}")


def test_busy_while_a_running_tenant_task_has_statuses_to_take_or_write() -> None:
    board = StatusBoard()
    done = {"a": True}
    board.subscribe("a", lambda: done["a"])
    assert not board.busy()
    board.want("a", status("shop"))
    assert board.busy()  # not taken yet
    assert [s.name for s in board.take("a")] == ["shop"]
    done["a"] = False
    assert board.busy()  # taken, being written
    done["a"] = True
    assert not board.busy()


def test_a_tenant_without_a_running_task_makes_no_one_wait() -> None:
    """Statuses wanted for a tenant whose task is not running (its API server unreachable)
    wait for it, and hold up no other writes meanwhile."""
    board = StatusBoard()
    board.want("gone", status("shop"))
    assert not board.busy()
    board.subscribe("gone", lambda: False)
    assert board.busy()
    board.unsubscribe("gone")
    assert not board.busy()
