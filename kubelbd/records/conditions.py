"""Kubernetes-style status conditions, computed as data and stamped when written.

The stages that decide a condition produce it without a timestamp (`desired`), so the same
inputs always give the same conditions and a test can compare them. Whoever writes them
`stamp`s them against what the object carries: lastTransitionTime moves only when a
condition's status does, as the API conventions ask.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, Literal, cast

import orjson

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


#: what `stamp` reads of the conditions an object carries, each (type, status,
#: lastTransitionTime): what is kept of them between writes, instead of the conditions
Transitions = tuple[tuple[str, str, str], ...]


def transitions(carried: Any) -> Transitions:
    """The part of `carried` (the conditions as an object carries them, checked here: a
    record's status is anyone's to write) that `stamp` needs. The data plane keeps this of
    every record, twice (as last seen, as last written): the conditions themselves were 2.3
    KB a record each time, 46 MB at 10,000 routes. Type and status are interned: a handful
    of values, repeated on every record. So is the whole: records written in the same second
    in the same state carry equal transitions (146 different ones among 10,000 records, 6 MiB
    as one tuple each)."""
    out = []
    for c in carried if isinstance(carried, list) else ():
        if not isinstance(c, dict):
            continue
        kind, status, since = c.get("type"), c.get("status"), c.get("lastTransitionTime")
        if isinstance(kind, str) and isinstance(status, str) and isinstance(since, str):
            out.append((sys.intern(kind), sys.intern(status), since))
    return _shared(tuple(out))


@lru_cache(maxsize=4096)
def _shared(t: Transitions) -> Transitions:
    """The first of the transitions equal to `t` still remembered."""
    return t


def stamp(
    conditions: Sequence[Desired], previous: Sequence[Any] | None, at: str
) -> list[Condition]:
    """Conditions to write at time `at`: each keeps the lastTransitionTime it had (in
    `previous`, what the object carries, or its `transitions`) while its status holds."""
    before = dict(_since(previous or ()))
    out = []
    for c in conditions:
        old = before.get(c["type"])
        since = old[1] if old and old[0] == c["status"] and old[1] else at
        out.append(cast(Condition, {**c, "lastTransitionTime": since}))
    return out


def _since(previous: Sequence[Any]) -> Iterator[tuple[Any, tuple[Any, Any]]]:
    """type → (status, lastTransitionTime), from conditions or their transitions."""
    for c in previous:
        if isinstance(c, dict):
            yield c.get("type"), (c.get("status"), c.get("lastTransitionTime"))
        elif isinstance(c, tuple) and len(c) == 3:
            yield c[0], (c[1], c[2])


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


def fingerprint(status: object) -> bytes:
    """What is kept of a record's status to know it unchanged (a dict is no key): a 16-byte
    digest, not the status itself (~700 bytes a record, kept for every record). Keys sorted:
    the same status read back from the API, in whatever order, gives the same digest."""
    body = orjson.dumps(status, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(body, digest_size=16).digest()


def carried_fingerprint(status: object) -> bytes:
    """The `fingerprint` of the status a record carries, as it was before `stamp`: its
    conditions without their lastTransitionTime. Equal to the fingerprint of the status the
    data plane wants when writing that would change nothing. A record's status is anyone's
    to write: one orjson cannot encode (nested past 254 levels) matches nothing."""
    if not isinstance(status, dict):
        return b""
    carried = status.get("conditions")
    if isinstance(carried, list):
        unstamped = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} if isinstance(c, dict) else c
            for c in carried
        ]
        status = {**status, "conditions": unstamped}
    try:
        return fingerprint(status)
    except orjson.JSONEncodeError:
        return b""
