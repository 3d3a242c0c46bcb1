"""Status conditions: what counts as a change worth a write, the Accepted condition, and
lastTransitionTime, which moves only when a condition's status does."""

from __future__ import annotations

from kubelbd.records import conditions
from kubelbd.records.problems import Problem
from kubelbd.records.types import DesiredCondition


def test_same_ignores_timestamps_and_optionally_messages() -> None:
    a = conditions.stamp(
        [conditions.desired("Synced", True, "Synced", "3 routes in sync")],
        [],
        "2001-01-01T00:00:00Z",
    )
    b = conditions.stamp(
        [conditions.desired("Synced", True, "Synced", "4 routes in sync")],
        [],
        "2000-01-01T00:00:00Z",
    )
    assert not conditions.same(a, b)
    assert conditions.same(a, b, messages=False)
    c = [conditions.desired("Synced", False, "Synced", "4 routes in sync")]
    assert not conditions.same(a, c, messages=False)


def test_transition_time_moves_only_with_the_status() -> None:
    old = conditions.stamp(
        [conditions.desired("Synced", True, "Synced", "x")], [], "2000-01-01T00:00:00Z"
    )
    later = "2000-01-02T00:00:00Z"
    (kept,) = conditions.stamp([conditions.desired("Synced", True, "Synced", "y")], old, later)
    (moved,) = conditions.stamp([conditions.desired("Synced", False, "Failed", "y")], old, later)
    assert kept["lastTransitionTime"] == "2000-01-01T00:00:00Z"
    assert moved["lastTransitionTime"] == later
    (fresh,) = conditions.stamp([conditions.desired("Ready", True, "Ready", "")], old, "T")
    assert fresh["lastTransitionTime"] == "T"  # a condition the object did not have


def test_accepted_names_the_first_problem_and_lists_all() -> None:
    ok = conditions.accepted([], 3)
    assert (ok["status"], ok["reason"], ok.get("observedGeneration")) == ("True", "Accepted", 3)
    bad = conditions.accepted(
        [Problem("BackendNotFound", "a not found"), Problem("InvalidPath", "b")], 4
    )
    assert (bad["status"], bad["reason"]) == ("False", "BackendNotFound")
    assert bad["message"] == "a not found; b"


def test_stamping_against_the_kept_transitions_is_stamping_against_the_conditions() -> None:
    """The data plane keeps only each record's `transitions` (type, status, since) between
    writes: stamping against them must give what stamping against the conditions gives, and
    what a hostile or older writer left in a record's status is skipped, not kept."""
    carried = [
        {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "m" * 500,
         "lastTransitionTime": "2000-01-01T00:00:00Z", "observedGeneration": 3},
        {"type": "Accepted", "status": "False", "reason": "Bad", "message": "x",
         "lastTransitionTime": "2000-02-02T00:00:00Z"},
        {"type": "NoTime", "status": "True"},
        {"type": 7, "status": "True", "lastTransitionTime": "2000-03-03T00:00:00Z"},
        "not a condition",
    ]  # fmt: skip
    kept = conditions.transitions(carried)
    assert kept == (
        ("Programmed", "True", "2000-01-01T00:00:00Z"),
        ("Accepted", "False", "2000-02-02T00:00:00Z"),
    )
    assert conditions.transitions(None) == () == conditions.transitions({"type": "x"})
    wanted = [
        conditions.desired("Programmed", True, "Programmed", "ok", 4),
        conditions.desired("Accepted", True, "Accepted", "translated", 4),
        conditions.desired("NoTime", True, "R", "m", 4),
    ]
    now = "2026-11-30T00:00:00Z"
    stamped = conditions.stamp(wanted, kept, now)
    assert stamped == conditions.stamp(wanted, carried, now)
    assert [c["lastTransitionTime"] for c in stamped] == ["2000-01-01T00:00:00Z", now, now]


def test_a_carried_status_matches_the_status_it_was_written_from_in_any_key_order() -> None:
    programmed: DesiredCondition = {"type": "Programmed", "status": "True",
                                    "reason": "Programmed", "message": "serving",
                                    "observedGeneration": 2}  # fmt: skip
    wanted = {
        "observedGeneration": 2,
        "hosts": "shop.example.com",
        "conditions": [programmed],
    }
    stamped = conditions.stamp([programmed], None, "2026-11-30T12:00:00Z")
    # As the API gives it back: keys in its own order, times stamped.
    carried = {"hosts": "shop.example.com", "observedGeneration": 2,
               "conditions": [dict(reversed(list(c.items()))) for c in stamped]}  # fmt: skip
    assert conditions.carried_fingerprint(carried) == conditions.fingerprint(wanted)
    changed = {**carried, "observedGeneration": 3}
    assert conditions.carried_fingerprint(changed) != conditions.fingerprint(wanted)


def test_a_carried_status_no_one_could_have_written_matches_nothing() -> None:
    """A record's status is anyone's to write: one nested past what orjson encodes, or not an
    object at all, matches no status the data plane wants (it is written again)."""
    deep: dict[str, object] = {}
    node = deep
    for _ in range(300):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    assert conditions.carried_fingerprint({"conditions": [], "extra": deep}) == b""
    assert conditions.carried_fingerprint(["not", "an", "object"]) == b""


def test_records_with_equal_transitions_share_one_tuple() -> None:
    """The data plane keeps every record's transitions; records stamped in the same second in
    the same state carry equal ones, which are kept once, not once a record."""

    def carried(since: str) -> list[dict[str, str]]:
        return [
            {"type": "Accepted", "status": "True", "lastTransitionTime": since},
            {"type": "Programmed", "status": "True", "lastTransitionTime": since},
        ]

    # Parsed separately, as two records' statuses are: equal, and not the same objects.
    a, b = carried("2026-11-30T00:00:00Z"), carried("".join(["2026-11-30T", "00:00:00Z"]))
    assert a[0]["lastTransitionTime"] is not b[0]["lastTransitionTime"]
    assert conditions.transitions(a) is conditions.transitions(b)
    assert conditions.transitions(carried("2026-11-30T00:00:01Z")) != conditions.transitions(a)
