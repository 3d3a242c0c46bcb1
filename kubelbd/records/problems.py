"""Problems: why part of a tenant object cannot be served.

Every stage reports them the same way (a source object that does not translate, an address
that cannot be allocated, a certificate that cannot be used): they end up as a condition on
the record and an Event on the tenant object, never as an exception.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .types import ProblemSpec

SpecT = TypeVar("SpecT")


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str

    def spec(self) -> ProblemSpec:
        return {"reason": self.reason, "message": self.message}


#: problems one object may list in its record before the rest are summed up in one
MAX_PROBLEMS = 32


def capped(problems: list[Problem], limit: int = MAX_PROBLEMS) -> list[Problem]:
    """At most `limit` problems: past it, the last says how many more there are (a record,
    its condition and the Events on the object stay bounded, whatever the object holds)."""
    if len(problems) <= limit:
        return problems
    more = len(problems) - limit + 1
    return [
        *problems[: limit - 1],
        Problem(problems[limit - 1].reason, f"and {more} more problems"),
    ]


def problems_of(specs: Iterable[ProblemSpec]) -> list[Problem]:
    return [Problem(p["reason"], p["message"]) for p in specs]


@dataclass
class Translation(Generic[SpecT]):
    """A record spec made from a tenant object, and what could not be made of it."""

    spec: SpecT
    problems: list[Problem] = field(default_factory=list)
