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


def same(a: list[Condition], b: list[Condition]) -> bool:
    """Equal apart from timestamps: whether a status write would change anything."""

    def strip(cs: list[Condition]) -> list[tuple[Any, ...]]:
        return sorted(
            (c.get("type"), c.get("status"), c.get("reason"), c.get("message"),
             c.get("observedGeneration"))
            for c in cs
        )  # fmt: skip

    return strip(a) == strip(b)
