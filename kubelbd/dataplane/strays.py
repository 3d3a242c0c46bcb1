"""Objects the data plane's watches bring that are no tenant's: ignored, each logged once.

The watches select records and certificate Secrets by label across the whole management
cluster, and a label is anyone's to set: an object counts only in the namespace kubelbd made
for the tenant it names (records.names.tenant_of). Anything else is ignored here, before any
handler sees it, with one warning per object and reason: a stray object's every watch event
would otherwise repeat the line.
"""

from __future__ import annotations

import logging

from ..kube.informer import EventHandler
from ..objects import Obj
from ..records.names import misplaced

log = logging.getLogger(__name__)


class Strays:
    def __init__(self) -> None:
        self._why: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> as logged

    def guard(self, kind: str, handler: EventHandler) -> EventHandler:
        """`handler`, for the events of objects that are a tenant's."""

        def on_event(event: str, obj: Obj) -> None:
            why = misplaced(obj)
            if why is None:
                handler(event, obj)
            else:
                self._ignore(kind, event, obj, why)

        return on_event

    def _ignore(self, kind: str, event: str, obj: Obj, why: str) -> None:
        meta = obj.get("metadata") or {}
        ident = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event == "DELETED":
            self._why.pop(ident, None)
        elif self._why.get(ident) != why:
            self._why[ident] = why
            log.warning("%s %s/%s ignored: %s", kind, ident[1], ident[2], why)
