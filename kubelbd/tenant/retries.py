"""A tenant's objects whose reconcile failed, tried again on their own schedule.

An object the tenant API server refuses (or whose record the management API server refuses)
is reconciled again after a backoff shared by the tenant's failed objects, while every other
change goes on at once: a reconcile loop that slept out the backoff itself held all of a
tenant's changes behind one refused object, for up to 30 s. The backoff starts over once a
pass goes through with nothing failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from ..retry import Backoff
from .caches import ObjectId
from .health import classify

log = logging.getLogger(__name__)


class Retries:
    def __init__(self, tenant: str, again: Callable[[set[ObjectId]], None]) -> None:
        self.tenant = tenant
        self._again = again  # reconcile these objects again
        #: why each object's last reconcile failed
        self.failed: dict[ObjectId, str] = {}
        self._wake = anyio.Event()  # set: retry what failed, after the backoff
        self._backoff = Backoff(maximum=30)
        self._sleep = anyio.CancelScope()

    def fail(self, oid: ObjectId, error: Exception, now: bool = False) -> None:
        """The object's reconcile (or its record's background write or delete) failed: it
        is logged, and retried after the backoff (`now`: the backoff starts now; else with
        the pass's end, `soon`)."""
        message = classify(error)[1]
        log.warning("tenant %s: %s %s: %s", self.tenant, oid[0].lower(), oid[1], message)
        self.failed[oid] = message
        if now:
            self._wake.set()

    def succeeded(self, oid: ObjectId) -> None:
        self.failed.pop(oid, None)

    def soon(self) -> None:
        """A pass went through with failures: they are retried after the backoff."""
        self._wake.set()

    def all_succeeded(self) -> None:
        """A pass went through with none: a new failure starts over at the shortest
        backoff, rather than waiting out an old, long one."""
        self._backoff.reset()
        self._sleep.cancel()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            with anyio.CancelScope() as self._sleep:
                await anyio.sleep(self._backoff.next())
            if self.failed:
                self._again(set(self.failed))
