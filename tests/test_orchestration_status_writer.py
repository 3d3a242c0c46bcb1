"""kubelbd.kube.status_writer.StatusWriter: the rules every status write follows (dedup,
latest wins, backoff without holding up other keys, stale retries losing to newer wants,
forgetting on 404, coalescing minor changes, settling bursts, yielding to others)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kubelbd.kube import ApiError
from kubelbd.kube.status_writer import StatusWriter, Write
from kubelbd.retry import Backoff

from .orchestration import running, until

BACKOFF = 0.05


class Target:
    """Records every write as (key, fingerprint, time); raises what it is told to, once each."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Hashable, float]] = []
        self.attempts: list[tuple[str, Hashable]] = []
        self.errors: dict[tuple[str, Hashable], list[Exception]] = {}
        #: a write of (key, fingerprint) waits for its gate: a write in flight, held there
        self.gates: dict[tuple[str, Hashable], anyio.Event] = {}

    def write(self, key: str, fingerprint: Hashable) -> Write:
        async def go() -> None:
            self.attempts.append((key, fingerprint))
            gate = self.gates.pop((key, fingerprint), None)
            if gate is not None:
                await gate.wait()
            pending = self.errors.get((key, fingerprint))
            if pending:
                raise pending.pop(0)
            self.writes.append((key, fingerprint, anyio.current_time()))

        return go

    def written(self, key: str) -> list[Hashable]:
        return [fp for k, fp, _ in self.writes if k == key]


def writer(coalesce: float = 0.0, settle: float = 0.0, **more: Any) -> StatusWriter:
    return StatusWriter(
        "test",
        backoff=Backoff(initial=BACKOFF, maximum=BACKOFF),
        coalesce=coalesce,
        settle=settle,
        **more,
    )


async def test_an_equal_status_is_written_once_and_the_latest_wins() -> None:
    w, t = writer(), Target()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await w.idle.wait()
        w.want("a", 1, t.write("a", 1))  # written already: nothing to do
        assert w.idle.is_set()
        # Two wants before the writer runs: only the later one is written.
        w.want("b", 1, t.write("b", 1))
        w.want("b", 2, t.write("b", 2))
        await w.idle.wait()
    assert t.written("a") == [1]
    assert t.written("b") == [2]
    assert w.written("b") == 2 and w.writes == 2


async def test_a_failed_write_is_retried_after_a_backoff_without_holding_up_others() -> None:
    w, t = writer(), Target()
    t.errors[("a", 1)] = [ApiError(500, "InternalError", "etcd is sad")]
    async with running(w.run):
        start = anyio.current_time()
        w.want("a", 1, t.write("a", 1))
        w.want("b", 1, t.write("b", 1))
        await until(lambda: t.written("b") == [1], "b written")
        # While a waits for its retry, a new key is written at once.
        w.want("c", 1, t.write("c", 1))
        await until(lambda: t.written("c") == [1], "c written")
        assert t.written("a") == []
        await until(lambda: t.written("a") == [1], "a retried")
    a_written = next(at for k, _, at in t.writes if k == "a")
    c_written = next(at for k, _, at in t.writes if k == "c")
    assert a_written - start >= BACKOFF
    assert c_written < a_written
    assert t.attempts.count(("a", 1)) == 2


@pytest.mark.parametrize("error", [ApiError(503, "Unavailable", "x"), ConnectionError("refused")])
async def test_a_stale_retry_never_overwrites_a_newer_status(error: Exception) -> None:
    w, t = writer(), Target()
    t.errors[("a", 1)] = [error]
    t.errors[("x", 1)] = [ApiError(500, "InternalError", "x too")]  # retried with a's retry
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        w.want("x", 1, t.write("x", 1))
        await until(lambda: len(t.attempts) == 2, "both tried")
        w.want("a", 2, t.write("a", 2))  # newer, while the failed one waits for its retry
        await until(lambda: t.written("a") == [2], "the newer status written")
        await until(lambda: t.written("x") == [1], "the retry done")
        await w.idle.wait()
    assert t.written("a") == [2]
    assert t.attempts.count(("a", 1)) == 1
    assert w.written("a") == 2


async def test_an_object_gone_is_forgotten_and_a_new_one_written_afresh() -> None:
    w, t = writer(), Target()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await w.idle.wait()
        assert w.written("a") == 1
        t.errors[("a", 2)] = [ApiError(404, "NotFound", "gone")]
        w.want("a", 2, t.write("a", 2))
        await w.idle.wait()
        assert w.written("a") is None  # forgotten, not retried
        # The same status as before is written again: a new object of the key has none.
        w.want("a", 1, t.write("a", 1))
        await w.idle.wait()
    assert t.attempts == [("a", 1), ("a", 2), ("a", 1)]
    assert t.written("a") == [1, 1]


async def test_minor_changes_wait_for_the_interval_and_a_major_one_does_not() -> None:
    interval = 0.2
    w, t = writer(coalesce=interval), Target()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await until(lambda: t.written("a") == [1], "first write")
        first = t.writes[0][2]
        w.want("a", 2, t.write("a", 2), minor=True)
        w.want("a", 3, t.write("a", 3), minor=True)
        w.want("b", 1, t.write("b", 1), minor=True)  # never written: not coalesced
        await until(lambda: t.written("a") == [1, 3], "coalesced write")
        assert t.writes[-1][2] - first >= interval
        assert t.written("b") == [1]
        assert next(at for k, _, at in t.writes if k == "b") - first < interval
        # Something more important comes during the wait: written at once.
        w.want("a", 4, t.write("a", 4), minor=True)
        w.want("a", 5, t.write("a", 5))
        await until(lambda: t.written("a") == [1, 3, 5], "major write")
        assert t.writes[-1][2] - t.writes[-2][2] < interval
        await w.idle.wait()
    assert t.attempts.count(("a", 2)) == t.attempts.count(("a", 4)) == 0


async def test_a_burst_of_changes_settles_into_one_write_per_key() -> None:
    settle = 0.2
    w, t = writer(settle=settle), Target()
    async with running(w.run):
        start = anyio.current_time()
        w.want("a", 1, t.write("a", 1))
        w.want("b", 1, t.write("b", 1))
        await anyio.wait_all_tasks_blocked()
        assert t.writes == []  # nothing before the settling time
        w.want("a", 2, t.write("a", 2))  # replaces 1; the wait does not start again
        await until(lambda: len(t.writes) == 2, "settled writes")
        assert t.written("a") == [2] and t.written("b") == [1]
        assert all(settle <= at - start < 2 * settle for _, _, at in t.writes)
        # The next change after a write settles again.
        w.want("a", 3, t.write("a", 3))
        await w.idle.wait()
        assert t.written("a") == [2, 3]
        assert t.writes[-1][2] - t.writes[0][2] >= settle
    assert ("a", 1) not in t.attempts


async def test_a_status_due_while_others_go_first_waits_for_them_up_to_a_limit() -> None:
    """yield_to: the records' statuses wait while tenants' statuses are still to be written
    (a burst), and are written once they are, or once they waited `yield_max` longer."""
    busy = True
    w, t = writer(yield_to=lambda: busy, yield_max=5.0), Target()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await until(lambda: w.yielding, "the writer yields")
        assert t.writes == []
        busy = False
        await until(lambda: t.written("a") == [1], "written once the others are done")
    limit = 0.3
    busy = True
    w, t = writer(yield_to=lambda: busy, yield_max=limit), Target()
    async with running(w.run):
        start = anyio.current_time()
        w.want("b", 1, t.write("b", 1))
        await until(lambda: t.written("b") == [1], "written after waiting its limit")
        assert t.writes[0][2] - start >= limit


async def test_a_retry_from_before_a_forget_never_overwrites_a_newer_status() -> None:
    w, t = writer(), Target()
    t.errors[("a", "old")] = [ApiError(500, "InternalError", "etcd is sad")]
    t.errors[("x", 1)] = [ApiError(500, "InternalError", "x too")]  # retried with a's retry
    async with running(w.run):
        w.want("a", "old", t.write("a", "old"))
        w.want("x", 1, t.write("x", 1))
        await until(lambda: len(t.attempts) == 2, "both tried")
        # The object goes, and one of the same name comes, before the retry.
        w.forget("a")
        w.want("a", "new", t.write("a", "new"))
        await until(lambda: t.written("a") == ["new"], "the new object's status")
        await until(lambda: t.written("x") == [1], "the retry done")
        await w.idle.wait()
    assert t.written("a") == ["new"]
    assert w.written("a") == "new"


async def test_a_want_withdrawn_before_the_writer_runs_leaves_it_running() -> None:
    """A key wanted, then wanted back to what is written (or forgotten) before the woken
    writer looked: nothing is left to write, and the writer must go on (it once crashed on
    an empty min(), taking its tenant's task down with it)."""
    w, t = writer(), Target()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await w.idle.wait()
        w.want("a", 2, t.write("a", 2))  # wakes the writer...
        w.want("a", 1, t.write("a", 1))  # ...and is taken back before it runs
        w.want("b", 1, t.write("b", 1))
        w.forget("b")
        await anyio.lowlevel.checkpoint()  # the writer's turn, with nothing to do
        w.want("c", 1, t.write("c", 1))  # still working
        await until(lambda: t.written("c") == [1], "c written")
    assert t.written("a") == [1] and t.written("b") == []


async def test_a_404_does_not_drop_a_newer_status_waiting() -> None:
    """A provisional route's status finds no record yet (404) while the written record's
    status already waits: that one is still written."""
    w, t = writer(), Target()
    gate = t.gates[("a", 1)] = anyio.Event()
    t.errors[("a", 1)] = [ApiError(404, "NotFound", "not written yet")]
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await until(lambda: t.attempts == [("a", 1)], "the first write in flight")
        w.want("a", 2, t.write("a", 2))
        gate.set()
        await until(lambda: t.written("a") == [2], "the newer status written")


async def test_a_write_in_flight_when_its_object_goes_is_not_remembered() -> None:
    """The object is deleted and made anew while its status is being written: the new one
    gets its status even when it is the same as the old one's."""
    w, t = writer(), Target()
    gate = t.gates[("a", 1)] = anyio.Event()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await until(lambda: t.attempts == [("a", 1)], "the write in flight")
        w.forget("a")
        w.want("a", 1, t.write("a", 1))  # the new object's, the same status
        gate.set()
        await until(lambda: t.written("a") == [1, 1], "written for the new object too")


async def test_the_written_status_wanted_back_while_another_is_written_wins() -> None:
    """1 is written, 2 is being written, 1 is wanted again: the object ends with 1."""
    w, t = writer(), Target()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await until(lambda: t.written("a") == [1], "1 written")
        gate = t.gates[("a", 2)] = anyio.Event()
        w.want("a", 2, t.write("a", 2))
        await until(lambda: ("a", 2) in t.attempts, "2 in flight")
        w.want("a", 1, t.write("a", 1))
        gate.set()
        await until(lambda: t.written("a") == [1, 2, 1], "1 again, last")
    assert w.written("a") == 1


async def test_a_major_change_is_not_held_back_by_a_minor_one_after_it() -> None:
    """A real change wanted, then a message-only one on top before the writer ran: the
    write still goes at once, not after the coalescing interval."""
    interval = 0.5
    w, t = writer(coalesce=interval), Target()
    async with running(w.run):
        w.want("a", 1, t.write("a", 1))
        await until(lambda: t.written("a") == [1], "first write")
        first = t.writes[0][2]
        w.want("a", 2, t.write("a", 2))  # major
        w.want("a", 3, t.write("a", 3), minor=True)  # only a message moved since 2
        await until(lambda: t.written("a") == [1, 3], "written")
        assert t.writes[-1][2] - first < interval


async def test_a_slow_write_holds_up_neither_the_writes_due_after_it_nor_its_own_key() -> None:
    """Writes do not go in batches: while one hangs, statuses wanted after it are written;
    a newer status for the hanging key waits for that write (one write per key at once) and
    is written right after it."""
    w, t = writer(), Target()
    gate = t.gates[("slow", 1)] = anyio.Event()
    async with running(w.run):
        w.want("slow", 1, t.write("slow", 1))
        await until(lambda: t.attempts == [("slow", 1)], "the slow write in flight")
        w.want("slow", 2, t.write("slow", 2))
        for k in ("b", "c"):
            w.want(k, 1, t.write(k, 1))
        await until(lambda: t.written("b") == [1] and t.written("c") == [1], "others written")
        assert ("slow", 2) not in t.attempts  # never two writes of one key at once
        assert not w.idle.is_set()
        gate.set()
        await until(lambda: t.written("slow") == [1, 2], "the newer one right after")
        await until(w.idle.is_set, "idle once nothing is left")


async def test_a_status_the_object_carries_is_not_written_unless_the_writer_wrote_its_own() -> None:
    """`observed`: what a new term's writer reads back on its objects. A status wanted while
    settling and then wanted back to what the object carries writes nothing; once the
    writer has written its own, a stale read-back cannot make it skip a write."""
    w, t = writer(settle=0.1), Target()
    async with running(w.run):
        w.observed("a", 1)
        w.want("a", 1, t.write("a", 1))  # carried already
        w.want("b", 2, t.write("b", 2))  # a transient state, settling...
        w.observed("b", 1)
        w.want("b", 1, t.write("b", 1))  # ...then back to what the object carries
        await w.idle.wait()
        assert t.writes == []
        w.want("a", 3, t.write("a", 3))  # a real change is written
        await w.idle.wait()
        w.observed("a", 1)  # the object as read before that write: stale
        w.want("a", 1, t.write("a", 1))
        await w.idle.wait()
    assert t.written("a") == [3, 1] and t.written("b") == []
