"""kubelbd.collector: what start-up froze and later dropped in a cycle is collected where it
ends. A leadership term's registry (app._while_leading) and a stopped tenant task
(test_orchestration_registry) are such cycles: their informers call back into them.

These tests freeze the test process's own objects, as kubelbd does after its first publish,
and always thaw them again."""

from __future__ import annotations

import gc
import logging
import os
import re
import weakref
from collections.abc import Callable, Iterator
from typing import cast

import anyio
import pytest

from kubelbd import collector, metrics
from kubelbd.app import Term, _while_leading
from kubelbd.kube.lease import Leadership
from kubelbd.tenant.registry import Registry

from .orchestration import until


class Cycle:
    """Refers to itself, as a tenant task does through its informers' callbacks."""

    def __init__(self) -> None:
        self.me = self
        self.payload = [object() for _ in range(100)]

    async def run(self) -> None:
        await anyio.sleep_forever()


@pytest.fixture
def frozen() -> Iterator[None]:
    """Whatever the test makes frozen is thawed after it, and the collector's settings
    (`settle` sets the thresholds; a release disables automatic passes until it is
    collected) are as they were."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        collector.collect_released()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        assert gc.isenabled()


def test_a_released_cycle_is_collected_and_the_rest_frozen_again(frozen: None) -> None:
    kept = Cycle()
    dropped = Cycle()
    ref = weakref.ref(dropped)
    gc.freeze()
    del dropped
    gc.collect()
    assert ref() is not None  # what the freeze costs: a frozen cycle outlives every pass
    collector.release_frozen("a test")
    assert not gc.isenabled()  # until the released are collected: no pass over them all
    collector.collect_released()
    assert ref() is None
    assert gc.isenabled() and gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen again


def test_what_goes_soon_after_its_release_is_collected_too(frozen: None) -> None:
    """A task group's cancelled tasks are still referenced for a moment after it ends: the
    collection waits, or what is frozen again then is lost for good."""
    holder = [Cycle()]
    ref = weakref.ref(holder[0])
    gc.freeze()
    collector.release_frozen("a test")
    holder.clear()
    collector.collect_released()
    assert ref() is None


async def test_waiting_for_the_released_ends_with_their_collection(frozen: None) -> None:
    await collector.collected()  # nothing released: at once
    gc.freeze()
    collector.release_frozen("a test")
    done = anyio.Event()

    async def wait() -> None:
        await collector.collected()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        collector.collect_released()
        await until(done.is_set, "the waiter woken by the collection")


async def test_a_full_collection_is_timed_and_a_long_one_logged(
    frozen: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector, "LONG_PAUSE", 0.0)
    count = "kubelbd_gc_pause_seconds_count"
    before = metrics.REGISTRY.get_sample_value(count) or 0.0
    published = anyio.Event()
    published.set()
    caplog.set_level(logging.INFO, logger="kubelbd.collector")
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.settle, published, 0.05)
        await until(lambda: gc.get_freeze_count() > 0, "start-up frozen")
        gc.collect()
        await until(
            lambda: (metrics.REGISTRY.get_sample_value(count) or 0.0) >= before + 2,
            "the first publish's collection and ours in the metric",
        )
        tg.cancel_scope.cancel()
    assert sum("a full garbage collection stopped the loop" in r.getMessage()
               for r in caplog.records) >= 2  # fmt: skip
    assert collector._timed not in gc.callbacks  # settle's hook goes with it


async def test_a_long_collection_of_a_young_generation_is_logged_with_when_it_began(
    frozen: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in the metric (the oldest generation's), but at debug level: a young generation's
    pass over what survived since the last one can stop the loop long enough to matter."""
    monkeypatch.setattr(collector, "NOTED_PAUSE", 0.0)
    published = anyio.Event()
    published.set()
    caplog.set_level(logging.DEBUG, logger="kubelbd.collector")
    noted = "a collection of generation 1 stopped the loop"
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.settle, published, 0.05)
        await until(lambda: gc.get_freeze_count() > 0, "start-up frozen")
        gc.collect(1)
        await until(
            lambda: any(noted in r.getMessage() for r in caplog.records), "the collection logged"
        )
        tg.cancel_scope.cancel()
    line = next(r.getMessage() for r in caplog.records if noted in r.getMessage())
    assert re.search(r" at \d\d:\d\d:\d\d\.\d{3}$", line), line


def test_nothing_frozen_nothing_is_frozen_by_a_release() -> None:
    assert gc.get_freeze_count() == 0
    collector.release_frozen("a test")
    collector.collect_released()
    assert gc.get_freeze_count() == 0 and gc.isenabled()


async def test_a_leadership_terms_registry_frozen_at_start_up_is_collected_when_it_ends(
    frozen: None,
) -> None:
    leadership = Leadership()
    terms: list[weakref.ref[Cycle]] = []

    def registry() -> Cycle:
        term = Cycle()
        terms.append(weakref.ref(term))
        return term

    published = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_while_leading, leadership, cast(Callable[[], Registry], registry), Term())
        leadership.set(True)
        await until(lambda: terms, "the first term's registry")
        # The first term began before the first publish: frozen with start-up.
        tg.start_soon(collector.settle, published, 60.0, 0.05)
        published.set()
        await until(lambda: gc.get_freeze_count() > 0, "start-up frozen")
        leadership.set(False)
        await until(lambda: terms[0]() is None, "the ended term's registry collected")
        leadership.set(True)
        await until(lambda: len(terms) == 2, "a second term")
        assert terms[1]() is not None
        tg.cancel_scope.cancel()


class Stubborn(Cycle):
    """A term's tenant side whose cancellation takes until `let_go` (under overload, once,
    6.6 s after the Lease was lost)."""

    def __init__(self, let_go: anyio.Event) -> None:
        super().__init__()
        self.let_go = let_go

    async def run(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.let_go.wait()


async def test_a_lost_term_has_ended_once_its_tenant_side_stopped_and_is_collected(
    frozen: None,
) -> None:
    """What the Lease elector waits for before it tries to lead again (`Term.ended`): the
    collection's stall must fall while the replica follows."""
    leadership, term, let_go = Leadership(), Term(), anyio.Event()
    terms: list[weakref.ref[Cycle]] = []

    def registry() -> Cycle:
        made = Stubborn(let_go)
        terms.append(weakref.ref(made))
        return made

    published, ended = anyio.Event(), anyio.Event()

    async def wait_for_the_end() -> None:
        await term.ended()
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(_while_leading, leadership, cast(Callable[[], Registry], registry), term)
        tg.start_soon(collector.settle, published, 60.0, 0.05)
        published.set()
        await until(lambda: gc.get_freeze_count() > 0, "start-up frozen")
        leadership.set(True)
        await until(lambda: terms, "the term's registry")
        leadership.set(False)
        tg.start_soon(wait_for_the_end)
        await anyio.wait_all_tasks_blocked()
        assert not ended.is_set()  # its tenant side still stopping
        let_go.set()
        await ended.wait()
        assert terms[0]() is None  # collected by then
        tg.cancel_scope.cancel()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fragment() -> list[bytearray]:
    """Frees 100 MiB in the middle of the C heap: objects of 4 KiB (each from malloc, not
    Python's own allocator), every 25th kept, and the last one, so none of it is at the
    heap's top, which glibc returns by itself."""
    made = [bytearray(4096) for _ in range(25_600)]
    kept = made[::25] + made[-1:]
    del made
    return kept


async def test_after_the_first_publish_the_c_heaps_free_memory_goes_back_to_the_kernel(
    frozen: None,
) -> None:
    assert collector.malloc_trim() is not None  # glibc, as in the image
    published = anyio.Event()
    kept = fragment()
    before = rss_mib()
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.settle, published, 0.05)
        published.set()
        await until(lambda: rss_mib() < before - 50, "RSS down by the freed memory")
        tg.cancel_scope.cancel()
    assert len(kept) == 1025


def test_a_trim_is_skipped_while_the_rss_stays_where_the_last_left_it() -> None:
    """Each trim walks the whole C heap with its lock held: not every 30 s for nothing."""
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(pad)
        return 0

    now = round(rss_mib() * 2**20)
    assert collector.trim_if_moved(trim, now) == now and trims == []
    moved = now - 2 * collector.TRIM_STEP
    assert collector.trim_if_moved(trim, moved) > 0 and trims == [0]
