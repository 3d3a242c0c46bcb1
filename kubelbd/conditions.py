"""Kubernetes-style status conditions: type, status, reason, message, observedGeneration."""

from __future__ import annotations

import datetime as dt
from typing import Any

Condition = dict[str, Any]


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str,
    ok: bool | None,
    reason: str,
    message: str,
    generation: int | None = None,
    previous: list[Condition] | None = None,
) -> Condition:
    """A condition whose lastTransitionTime only moves when its status does."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now()
    out: Condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": since,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def accepted(problems: list[tuple[str, str]], generation: int) -> Condition:
    """Accepted: whether the whole source object could be translated; else each problem's
    message, under the first problem's reason."""
    if problems:
        return condition(
            "Accepted", False, problems[0][0], "; ".join(m for _, m in problems), generation
        )
    return condition("Accepted", True, "Accepted", "translated", generation)


def same(a: list[Condition], b: list[Condition], messages: bool = True) -> bool:
    """Equal apart from timestamps (and messages, unless `messages`): whether a status write
    would change anything (anything a client acts on)."""

    def strip(cs: list[Condition]) -> list[tuple[Any, ...]]:
        return sorted(
            (c.get("type"), c.get("status"), c.get("reason"),
             c.get("message") if messages else None, c.get("observedGeneration"))
            for c in cs
        )  # fmt: skip

    return strip(a) == strip(b)
