"""Records read back that do not parse: refused, and logged once per record and reason.

A record that does not fit its kind is refused on every watch event that carries it (our own
status writes included); logging each time would bury the one line that names it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TypeVar

from ..records.parse import RecordError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Refusals:
    def __init__(self) -> None:
        self._why: dict[str, str] = {}  # record id -> why it was refused, as logged

    def parse(self, kind: str, rid: str, parser: Callable[[], T]) -> T | None:
        """parser(), or None with a log line (the first time) if the record does not parse."""
        try:
            out = parser()
        except RecordError as e:
            if self._why.get(rid) != str(e):
                self._why[rid] = str(e)
                log.error("record %s %s refused: %s", kind, rid, e)
            return None
        self._why.pop(rid, None)
        return out

    def ids(self) -> Collection[str]:
        """The records refused right now (counted by kubelbd_refusals)."""
        return self._why.keys()

    def forget(self, rid: str) -> None:
        self._why.pop(rid, None)
