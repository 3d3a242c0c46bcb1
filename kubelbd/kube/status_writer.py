"""The status writer: every status kubelbd reports goes through one of these.

Status is computed as data elsewhere (kubelbd.ir.status, the tenant's health); a writer
only gets it onto objects, with the rules every status write needs:

- latest wins: a key's newer wanted status replaces one not written yet;
- dedup: a status equal to the one last written for that key is not written again;
- backoff: a failed write is retried after a growing delay (its key's own), without holding
  up other keys;
- pipelining: each write starts as soon as one of `concurrency` slots is free; a slow write
  holds only its own slot, never the writes due after it;
- forgetting: an object that is gone (404) is dropped, and a new one of the same key is
  written afresh;
- coalescing: a minor change (say, only a message moved) waits until `coalesce` seconds
  after the key's last write, unless something more important comes meanwhile;
- settling: with `settle`, every status waits that long after it is first wanted, and what
  is wanted meanwhile replaces it: a burst of changes to one key is one write. For statuses
  people read but nothing waits on (the management cluster's records), so that in a burst
  their writes neither double up nor compete with the statuses tenants wait for;
- yielding: with `yield_to`, a status due while it says other writes go first waits, up to
  `yield_max` more, until it says otherwise (checked every YIELD_POLL): the records' statuses
  wait while tenant objects' statuses are still to be written.

One writer per stream of statuses (the data plane's records; each tenant's objects; each
tenant's Tenant record); `run()` is its task.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import anyio
import anyio.abc

from ..retry import Backoff
from .client import ApiError

log = logging.getLogger(__name__)


Write = Callable[[], Awaitable[None]]

#: how often a writer that yields looks again whether it still has to
YIELD_POLL = 0.1


@dataclass
class _Wanted:
    fingerprint: Hashable
    write: Write
    seq: int
    not_before: float = 0.0


class StatusWriter:
    def __init__(
        self,
        name: str,
        concurrency: int = 16,
        timeout: float = 15.0,
        backoff: Backoff | None = None,
        coalesce: float = 0.0,
        settle: float = 0.0,
        yield_to: Callable[[], bool] = lambda: False,
        yield_max: float = 0.0,
    ) -> None:
        self.name = name
        self._limit = anyio.Semaphore(concurrency)
        self._timeout = timeout
        #: what each failing key's own backoff starts from (one that keeps failing waits
        #: longer, alone)
        self._backoff_shape = backoff or Backoff(initial=1, maximum=30)
        self._backoff: dict[str, Backoff] = {}
        self._coalesce = coalesce
        self._settle = settle
        self._yield_to = yield_to
        self._yield_max = yield_max
        self._wanted: dict[str, _Wanted] = {}
        self._written: dict[str, Hashable] = {}
        self._written_at: dict[str, float] = {}
        #: key -> the number of its latest want(); numbers never repeat, also across forget()
        self._seq: dict[str, int] = {}
        self._wants = itertools.count(1)
        #: keys being written right now, and those of them forgotten meanwhile
        self._writing: set[str] = set()
        self._cut: set[str] = set()
        self._wake = anyio.Event()
        #: set whenever the writer has nothing left to do (tests and shutdown wait on it)
        self.idle = anyio.Event()
        self.writes = 0  # successful writes, for tests and metrics
        #: statuses are due and held back for others (yield_to)
        self.yielding = False

    # ---- what callers say ------------------------------------------------------------------

    def want(self, key: str, fingerprint: Hashable, write: Write, minor: bool = False) -> None:
        """Write `fingerprint`'s status for `key` with `write()`, unless it is written already.
        `minor`: only a detail changed; it may wait for the coalescing interval (never longer
        than a status wanted before it and not written yet would have)."""
        seq = self._seq[key] = next(self._wants)
        if key not in self._writing and self._written.get(key) == fingerprint:
            self._wanted.pop(key, None)
            return
        not_before = anyio.current_time() + self._settle
        if minor and self._coalesce and key in self._written_at:
            not_before = max(not_before, self._written_at[key] + self._coalesce)
        pending = self._wanted.get(key)
        if pending is not None:
            not_before = min(not_before, pending.not_before)
        self._wanted[key] = _Wanted(fingerprint, write, seq, not_before)
        self.idle = anyio.Event()
        self._wake.set()

    def observed(self, key: str, fingerprint: Hashable) -> None:
        """The object carries `fingerprint`'s status already, as read back: a `want` of the
        same writes nothing (and drops one wanted before it, not written yet). Heeded only
        while this writer has written nothing for the key and is not writing it: what it
        wrote itself may not have come back yet, so it knows better."""
        if key not in self._written and key not in self._writing:
            self._written[key] = fingerprint

    def forget(self, key: str) -> None:
        """The object is gone: nothing more to write, and a new one starts afresh."""
        self._wanted.pop(key, None)
        self._written.pop(key, None)
        self._written_at.pop(key, None)
        self._seq.pop(key, None)
        self._backoff.pop(key, None)
        if key in self._writing:
            self._cut.add(key)  # what that write leaves is not the new object's

    def written(self, key: str) -> Hashable | None:
        """The status last written for `key` (None: none, or forgotten)."""
        return self._written.get(key)

    # ---- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                # A key being written waits for that write to end: one write per key at once,
                # so the last one wanted is the last one written.
                ready = {k: w for k, w in self._wanted.items() if k not in self._writing}
                if not ready:
                    if not self._writing:
                        self.idle.set()
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    # What woke us may be gone again (an equal status wanted, a forget).
                    continue
                self._wake = anyio.Event()
                now = anyio.current_time()
                due = {k: w for k, w in ready.items() if w.not_before <= now}
                self.yielding = False
                if due and self._yield_max and self._yield_to():
                    due = {k: w for k, w in due.items() if w.not_before + self._yield_max <= now}
                    if not due:
                        self.yielding = True
                        with anyio.move_on_after(YIELD_POLL):
                            await self._wake.wait()
                        continue
                if not due:
                    later = min(w.not_before for w in ready.values())
                    with anyio.move_on_after(later - now):
                        await self._wake.wait()
                    continue
                for k, w in sorted(due.items()):
                    del self._wanted[k]
                    # Wanted while the same status was being written: it is there now.
                    if self._written.get(k) != w.fingerprint:
                        self._writing.add(k)
                        tg.start_soon(self._write_one, k, w, tg)

    async def _write_one(self, key: str, wanted: _Wanted, tg: anyio.abc.TaskGroup) -> None:
        """One status write, as soon as a slot is free: writes do not wait for each other
        (a slow one holds its slot only), and a failed one is retried on its own backoff."""
        try:
            if await self._written_ok(key, wanted):
                self._backoff.pop(key, None)
            else:
                shape = self._backoff_shape
                backoff = self._backoff.setdefault(key, Backoff(shape.initial, shape.maximum))
                tg.start_soon(self._retry_later, key, wanted, backoff.next())
        finally:
            self._writing.discard(key)
            self._cut.discard(key)
            self._wake.set()

    async def _written_ok(self, key: str, wanted: _Wanted) -> bool:
        """Write one status: whether it is done with (written, or its object gone)."""
        async with self._limit:
            try:
                with anyio.fail_after(self._timeout):
                    await wanted.write()
            except ApiError as e:
                if e.not_found:
                    log.debug("%s: status of %s: %s; gone meanwhile", self.name, key, e)
                    if self._seq.get(key) == wanted.seq:
                        self.forget(key)  # unless a newer status (for a new object) waits
                    return True
                log.warning("%s: status of %s: %s", self.name, key, e)
                return False
            except (ConnectionError, TimeoutError) as e:
                # A timeout's text is empty: say what it was.
                log.warning("%s: status of %s: %s", self.name, key, str(e) or type(e).__name__)
                return False
            except Exception:
                # A bug, or an object like no other: it must not end the process (every
                # other status would stop with it). Logged in full, retried with backoff.
                log.exception("%s: status of %s failed", self.name, key)
                return False
        if key in self._cut:
            return True  # forgotten while being written: nothing to remember of it
        self._written[key] = wanted.fingerprint
        self._written_at[key] = anyio.current_time()
        self.writes += 1
        return True

    async def _retry_later(self, key: str, wanted: _Wanted, delay: float) -> None:
        await anyio.sleep(delay)
        # Unless a newer status was wanted for the key meanwhile (it wins), or the object
        # went away.
        if self._seq.get(key) == wanted.seq:
            self._wanted[key] = _Wanted(wanted.fingerprint, wanted.write, wanted.seq)
            self.idle = anyio.Event()
            self._wake.set()
