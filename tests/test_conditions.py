"""Status conditions: what counts as a change worth a write, and the Accepted condition."""

from __future__ import annotations

from kubelbd import conditions


def test_same_ignores_timestamps_and_optionally_messages() -> None:
    a = [conditions.condition("Synced", True, "Synced", "3 routes in sync")]
    b = [conditions.condition("Synced", True, "Synced", "4 routes in sync")]
    b[0]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    assert not conditions.same(a, b)
    assert conditions.same(a, b, messages=False)
    c = [conditions.condition("Synced", False, "Synced", "4 routes in sync")]
    assert not conditions.same(a, c, messages=False)


def test_transition_time_moves_only_with_the_status() -> None:
    old = [conditions.condition("Synced", True, "Synced", "x")]
    old[0]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    kept = conditions.condition("Synced", True, "Synced", "y", previous=old)
    moved = conditions.condition("Synced", False, "Failed", "y", previous=old)
    assert kept["lastTransitionTime"] == "2000-01-01T00:00:00Z"
    assert moved["lastTransitionTime"] != "2000-01-01T00:00:00Z"


def test_accepted_names_the_first_problem_and_lists_all() -> None:
    ok = conditions.accepted([], 3)
    assert (ok["status"], ok["reason"], ok["observedGeneration"]) == ("True", "Accepted", 3)
    bad = conditions.accepted([("BackendNotFound", "a not found"), ("InvalidPath", "b")], 4)
    assert (bad["status"], bad["reason"]) == ("False", "BackendNotFound")
    assert bad["message"] == "a not found; b"
