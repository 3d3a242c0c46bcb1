"""Kubernetes-style status conditions, computed as data and stamped when written.

The stages that decide a condition produce it without a timestamp (`desired`), so the same
inputs always give the same conditions and a test can compare them. Whoever writes them
`stamp`s them against what the object carries: lastTransitionTime moves only when a
condition's status does, as the API conventions ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

from .problems import Problem
from .types import Condition, DesiredCondition

MAX_MESSAGE = 32768


#: a condition as a stage decides it: everything but lastTransitionTime
Desired = DesiredCondition


def desired(
    type_: str, ok: bool | None, reason: str, message: str, generation: int | None = None
) -> Desired:
    status: Literal["True", "False", "Unknown"] = (
        "Unknown" if ok is None else ("True" if ok else "False")
    )
    out: Desired = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def accepted(problems: Sequence[Problem], generation: int) -> Desired:
    """Accepted: whether the whole source object could be translated; else each problem's
    message, under the first problem's reason."""
    if problems:
        return desired(
            "Accepted", False, problems[0].reason, "; ".join(p.message for p in problems),
            generation,
        )  # fmt: skip
    return desired("Accepted", True, "Accepted", "translated", generation)


def stamp(
    conditions: Sequence[Desired], previous: Sequence[Any] | None, at: str
) -> list[Condition]:
    """Conditions to write at time `at`: each keeps the lastTransitionTime it had (in
    `previous`, what the object carries) while its status holds."""
    before = {c.get("type"): c for c in previous or [] if isinstance(c, dict)}
    out = []
    for c in conditions:
        old = before.get(c["type"])
        since = (
            old["lastTransitionTime"]
            if old and old.get("status") == c["status"] and old.get("lastTransitionTime")
            else at
        )
        out.append(cast(Condition, {**c, "lastTransitionTime": since}))
    return out


def same(a: Sequence[Any], b: Sequence[Any], messages: bool = True) -> bool:
    """Equal apart from timestamps (and messages, unless `messages`): whether a status write
    would change anything (anything a client acts on)."""

    def strip(cs: Sequence[Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (c.get("type"), c.get("status"), c.get("reason"),
             c.get("message") if messages else None, c.get("observedGeneration"))
            for c in cs
        )  # fmt: skip

    return strip(a) == strip(b)
