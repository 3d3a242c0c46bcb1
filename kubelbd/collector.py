"""The cyclic garbage collector, kept off the latency path without leaking what it is kept off.

kubelbd's caches are large and long-lived: a full collection walking them stalls the event
loop for tens of milliseconds at 1,000 routes and one to two seconds at 10,000. So young
objects are collected less often, and what start-up built is frozen once the first publish
is done (`settle`): later passes skip it. And the C heap's free memory is handed back to the
kernel now and then (`malloc_trim`), which glibc does not do by itself.

Frozen objects are never collected as cycles, though: anything start-up built that is later
dropped while part of a reference cycle stays for the process's life. The tenant side is
such a thing: a tenant task's informers call back into it, so its caches (every Ingress,
Service and record of the tenant) form a cycle with it. A lost Lease drops the whole term's
registry, a stopped or restarted tenant task its own; the first term's were never freed
(two tenants' caches at 10,000 routes: about 60 MiB for each lost Lease).

So where such a structure ends, `release_frozen` thaws everything, and `RELEASE_DELAY`
later one full collection frees what is garbage by then and freezes the rest again. Not at
once: for a moment after a task group ends, its cancelled tasks are still referenced
(`hack/bench heap` found a term's tenant tasks alive when it ended, frozen again and lost),
and whatever is frozen then is lost for good. Automatic collections wait meanwhile: with a
million objects thawed, one would be a second full pass.

That collection stops the event loop for seconds (1.9-14.5 s at 10,000 routes on an overloaded
machine), so the Lease elector waits for it (`collected`) before it tries to lead again: the
stall falls while this replica follows, not in its next term's renewals. Every collection of
the oldest generation is timed (a `gc.callbacks` hook), reported as a metric, and logged when it
stalled the loop for `LONG_PAUSE` or more.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any, cast

import anyio
import anyio.to_thread

from . import metrics

log = logging.getLogger(__name__)

#: seconds between two returns of the C heap's free memory to the kernel (`malloc_trim`)
TRIM_INTERVAL = 30.0
#: bytes the RSS moves by before the next trim is worth its walk of the heap
TRIM_STEP = 8 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
#: seconds from a release to its collection (`release_frozen`)
RELEASE_DELAY = 5.0
#: seconds a collection of the oldest generation takes before it is logged
LONG_PAUSE = 0.5
#: seconds a collection of any generation takes before it is logged at debug level, with
#: when it started: a young generation's pass over what survived since the last one (up to
#: 20 x 50,000 objects, `settle`) can stop the loop long enough to show in a change's time
NOTED_PAUSE = 0.01

#: why things were released since the last collection, and when the first was
_released: list[str] = []
_released_at = 0.0
#: those waiting (`collected`) for the released to be collected
_waiting: list[anyio.Event] = []
#: collections of the oldest generation since `settle` last looked: (seconds, objects
#: collected, whether `collect_released` ran it)
_pauses: list[tuple[float, int, bool]] = []
#: younger generations' collections of NOTED_PAUSE or more: (generation, start, seconds)
_young_pauses: list[tuple[int, float, float]] = []
_pause_started = 0.0
_collecting_released = False  # `collect_released` logs its own, with why


async def settle(
    first_publish: anyio.Event,
    trim_every: float = TRIM_INTERVAL,
    release_delay: float = RELEASE_DELAY,
) -> None:
    """Collect young objects less often, and freeze what start-up built once it has served;
    from then on, collect what `release_frozen` thawed once `release_delay` has passed, and
    hand what the C heap has free back to the kernel every `trim_every` (when the RSS has
    moved since the last time)."""
    gc.set_threshold(50_000, 20, 20)
    gc.callbacks.append(_timed)
    try:
        await _settle(first_publish, trim_every, release_delay)
    finally:
        gc.callbacks.remove(_timed)


async def _settle(first_publish: anyio.Event, trim_every: float, release_delay: float) -> None:
    await first_publish.wait()
    gc.collect()
    gc.freeze()
    trim = malloc_trim()
    tick = min(trim_every, release_delay) / 5
    trimmed, rss = time.monotonic(), 0
    try:
        while True:
            await anyio.sleep(tick)
            _report_pauses()
            if _released and time.monotonic() - _released_at >= release_delay:
                collect_released()
            if trim is not None and time.monotonic() - trimmed >= trim_every:
                trimmed = time.monotonic()
                rss = await anyio.to_thread.run_sync(trim_if_moved, trim, rss)
    finally:
        collect_released()  # stopped between a release and its collection: gc enabled again


def _timed(phase: str, info: dict[str, Any]) -> None:
    """`gc.callbacks` hook: times each collection. It only appends to a list: a metric's
    lock or a log handler's could be held by the code the collection interrupted."""
    global _pause_started
    if phase == "start":
        _pause_started = time.perf_counter()
        return
    seconds = time.perf_counter() - _pause_started
    if info["generation"] == 2:
        _pauses.append((seconds, info["collected"], _collecting_released))
    elif seconds >= NOTED_PAUSE:
        _young_pauses.append((info["generation"], time.time() - seconds, seconds))


def _report_pauses() -> None:
    """The collections `_timed` saw, as the `kubelbd_gc_pause_seconds` metric, and a log
    line for each that stalled the loop for `LONG_PAUSE` or more (`collect_released` logs
    its own); a younger generation's of `NOTED_PAUSE` or more at debug level."""
    pauses = _pauses[:]
    del _pauses[: len(pauses)]
    young = _young_pauses[:]
    del _young_pauses[: len(young)]
    for generation, started, seconds in young:
        log.debug("a collection of generation %d stopped the loop for %.1f ms at %s",
                  generation, seconds * 1000, _clock(started))  # fmt: skip
    for seconds, collected, released in pauses:
        metrics.gc_paused(seconds)
        if seconds >= LONG_PAUSE and not released:
            log.info("a full garbage collection stopped the loop for %.0f ms (%d collected, "
                     "%d frozen)", seconds * 1000, collected, gc.get_freeze_count())  # fmt: skip


def _clock(at: float) -> str:
    """`at` (time.time()) as the log lines' own clock shows it."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


async def collected() -> None:
    """Return once what `release_frozen` thawed has been collected (at once if nothing is
    waiting for its collection)."""
    if not _released:
        return
    done = anyio.Event()
    _waiting.append(done)
    await done.wait()


def release_frozen(why: str) -> None:
    """Something start-up built has ended (`why`): thaw what is frozen, so that what is
    garbage among it is collected by `settle`'s loop. Nothing is frozen before `settle` has
    frozen it (nor in tests): then it does nothing."""
    global _released_at
    if gc.get_freeze_count() == 0 and not _released:
        return
    if not _released:
        _released_at = time.monotonic()
        gc.disable()
    _released.append(why)
    gc.unfreeze()


def collect_released() -> None:
    """One full collection of what `release_frozen` thawed, then the rest frozen again."""
    global _collecting_released
    if not _released:
        return
    whys = sorted(set(_released))
    _released.clear()
    start = time.monotonic()
    _collecting_released = True
    try:
        freed = gc.collect()
    finally:
        _collecting_released = False
        gc.freeze()
        gc.enable()
        for done in _waiting:
            done.set()
        _waiting.clear()
    log.info("%s: collected %d objects, in %.0f ms; %d frozen again", "; ".join(whys),
             freed, (time.monotonic() - start) * 1000, gc.get_freeze_count())  # fmt: skip


def trim_if_moved(trim: Callable[[int], int], rss: int) -> int:
    """`trim` if the RSS moved by `TRIM_STEP` since it was `rss` (the last trim's): a trim
    walks the whole C heap with its lock held (14 ms for a 350 MiB heap with nothing to
    return), which the event loop's own allocations would wait for every time. The RSS after."""
    now = _rss()
    if abs(now - rss) < TRIM_STEP:
        return rss
    trim(0)
    return _rss()


def _rss() -> int:
    """This process's resident size in bytes (0 where /proc has no statm)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None on a C library without it.

    Python's larger objects (a dict of more than a few dozen keys, a file's bytes, a
    response being parsed) come from the C heap, and glibc gives back to the kernel only
    what is free at the heap's top: memory freed in its middle (a relist's response, a
    change's files) stays in the process, counted in its RSS, until `malloc_trim` returns
    the free pages. At 10,000 routes that was 21 MiB of 65 MiB (`hack/bench heap`). It runs
    in a worker thread, but holds the heap's lock while it walks it (`trim_if_moved`)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return cast(Callable[[int], int], trim)
