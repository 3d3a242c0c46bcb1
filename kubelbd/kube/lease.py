"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Every replica renders Envoy's configuration from the records; only the holder of the Lease
writes (tenant twins, records, allocations, statuses, certificates). The rules are client-go's,
so kubelbd behaves as every controller an operator already runs:

- a Lease whose holder has not renewed it for `lease_duration`, measured on this replica's
  own clock from when it last saw the Lease change (never the holder's timestamps: clocks
  differ), may be taken; a Lease with no holder (released) at once;
- the leader renews every `retry_period`, and gives up leading when it could not renew for
  `renew_deadline`, which is shorter than `lease_duration`: it stops writing before anyone
  else may start;
- every write is an update with the Lease's resourceVersion, so two replicas racing for an
  expired Lease cannot both win;
- on shutdown the leader releases the Lease (no holder), so a rolling restart hands over at
  once instead of after a lease duration.

Two things client-go gets from goroutines, for a Python process whose one event loop runs
everything else: the elector runs on an event loop of its own, in a thread, with an API
client of its own (`run_in_own_thread`), as client-go's runs beside the controllers' work
queues: a renewal never waits behind a backlog of watch events and translations on the main
loop, nor for a pooled connection behind record and status writes (under overload the
main loop's tasks waited over 10 s for their turn, and the leader lost the Lease to no one,
every few minutes). And a replica that is not leading first waits for `may_lead` (the
collection of the term it just lost: collector.py), which stops every thread for seconds
and would otherwise fall in its next term's renewals.

Not kubernetes-asyncio's `leaderelection`: it needs the generated API client (kubelbd talks
to the API through its own, kube/client.py), runs its callbacks as bare asyncio tasks that an
anyio cancel scope cannot reach, and calls sys.exit on a bad configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from .. import metrics
from ..objects import LEASES, Obj
from .client import ApiError, Kube, precise_timestamp

log = logging.getLogger(__name__)


class Leadership:
    """Whether this replica is the one that writes; what the leader-only tasks wait on."""

    def __init__(self, mirror: Callable[[bool], None] | None = None) -> None:
        self.leading = False
        #: set once the first attempt to take the Lease has an answer either way
        self.decided = anyio.Event()
        self._changed = anyio.Event()
        #: told every answer too (the elector's own copy, on its thread, tells the process's)
        self._mirror = mirror

    def set(self, leading: bool) -> None:
        self.decided.set()
        if self._mirror is not None:
            self._mirror(leading)
        else:
            metrics.set_leader(leading)
        if leading != self.leading:
            self.leading = leading
            self._changed.set()
            self._changed = anyio.Event()

    async def until(self, leading: bool) -> None:
        while self.leading != leading:
            await self._changed.wait()


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    identity: str
    name: str = "kubelbd"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # The Lease says whole seconds: that is what followers wait.
        if not 0 < self.retry_period < self.renew_deadline < int(self.lease_duration):
            raise ValueError("need 0 < retry period < renew deadline < lease duration (s)")


class LeaseElector:
    def __init__(
        self,
        mgmt: Kube,
        settings: LeaseSettings,
        leadership: Leadership,
        may_lead: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self.leadership = leadership
        self.may_lead = may_lead
        #: the Lease's spec as last read, and when (this replica's clock) it last changed
        self._observed: Obj | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0  # when this replica last renewed, as leader

    async def run(self) -> None:
        s = self.settings
        try:
            while True:
                leading = self.leadership.leading
                if not leading and self.may_lead is not None:
                    await self.may_lead()
                started = anyio.current_time()
                # A leader's attempt may not outlast its renew deadline: a request that hangs
                # (a dead connection) must not keep it leading while a follower takes over.
                budget = self._renewed_at + s.renew_deadline - started if leading else None
                held = False
                with anyio.move_on_after(s.renew_deadline if budget is None else max(budget, 0)):
                    try:
                        held = await self._try_acquire_or_renew()
                    except (ApiError, OSError) as e:
                        log.warning("lease %s/%s: %s", s.namespace, s.name, e)
                if held:
                    self._renewed_at = started  # renewed no later than when it was asked
                now = anyio.current_time()
                if held != leading:
                    if held or self._taken() or now - self._renewed_at >= s.renew_deadline:
                        if leading and not self._taken():
                            # Why, when no one else holds it: requests too slow, or the
                            # event loop not running this task in time (a stall, overload).
                            log.warning("lease %s/%s: not renewed for %.1f s (renew deadline "
                                        "%.0f s): %s stops leading", s.namespace, s.name,
                                        now - self._renewed_at, s.renew_deadline,
                                        s.identity)  # fmt: skip
                        self._announce(held)
                    # else: a leader that missed a renewal keeps leading until its deadline
                elif not self.leadership.decided.is_set():
                    self._announce(held)
                wait = s.retry_period
                if self.leadership.leading:  # wake in time to step down at the deadline
                    wait = max(0.0, min(wait, self._renewed_at + s.renew_deadline - now))
                await anyio.sleep(wait)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()

    def _taken(self) -> bool:
        """Another replica holds the Lease: whatever this one believed, it no longer leads."""
        holder = (self._observed or {}).get("holderIdentity")
        return bool(holder) and holder != self.settings.identity

    def _announce(self, leading: bool) -> None:
        s = self.settings
        holder = (self._observed or {}).get("holderIdentity") or "nobody"
        if leading:
            log.info("lease %s/%s: %s is the leader", s.namespace, s.name, s.identity)
        else:
            log.info("lease %s/%s: %s follows (leader: %s)", s.namespace, s.name, s.identity,
                     holder)  # fmt: skip
        self.leadership.set(leading)

    async def _try_acquire_or_renew(self) -> bool:
        s = self.settings
        lease = await self.mgmt.get_or_none(LEASES, s.name, s.namespace)
        now = anyio.current_time()  # when this replica saw it (after the answer, as client-go)
        if lease is None:
            await self.mgmt.create(LEASES, self._lease(None, transitions=0))
            return True
        spec: Obj = lease.get("spec") or {}
        if spec != self._observed:
            self._observed, self._observed_at = spec, now
        holder = spec.get("holderIdentity") or ""
        duration = spec.get("leaseDurationSeconds")
        duration = s.lease_duration if not isinstance(duration, int) else duration
        if holder and holder != s.identity and now - self._observed_at < duration:
            return False  # someone else's, and alive
        transitions = spec.get("leaseTransitions")
        transitions = transitions if isinstance(transitions, int) else 0
        if holder != s.identity:
            transitions += 1
        want = self._lease(lease, transitions)
        if holder == s.identity:
            want["spec"]["acquireTime"] = spec.get("acquireTime") or want["spec"]["acquireTime"]
        try:
            written = await self.mgmt.replace(LEASES, want)
        except ApiError as e:
            if e.conflict:
                return False  # another replica wrote first: read again next round
            raise
        self._observed, self._observed_at = written.get("spec") or {}, now
        return True

    def _lease(self, current: Obj | None, transitions: int) -> Obj:
        s = self.settings
        now = precise_timestamp()
        meta: dict[str, Any] = {"name": s.name, "namespace": s.namespace}
        if current is not None:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": int(s.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def _release(self) -> None:
        """Leave the Lease to the next replica at once (client-go's ReleaseOnCancel)."""
        if not self.leadership.leading:
            return
        self.leadership.set(False)
        s = self.settings
        try:
            with anyio.fail_after(2):
                lease = await self.mgmt.get_or_none(LEASES, s.name, s.namespace)
                if lease is None or (lease.get("spec") or {}).get("holderIdentity") != s.identity:
                    return
                lease["spec"] = {
                    **lease["spec"],
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "renewTime": precise_timestamp(),
                }
                await self.mgmt.replace(LEASES, lease)
                log.info("lease %s/%s: released by %s", s.namespace, s.name, s.identity)
        except (ApiError, OSError, TimeoutError) as e:
            log.warning("lease %s/%s: not released: %s", s.namespace, s.name, e)


async def run_in_own_thread(
    client: Callable[[], Awaitable[Kube]],
    settings: LeaseSettings,
    leadership: Leadership,
    may_lead: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """A LeaseElector on an event loop of its own, in a worker thread, with the client
    `client()` makes there (a client belongs to the loop it was made on). It sets
    `leadership` (on this loop, as soon as this loop runs) and waits for `may_lead` (run on
    this loop) from there. Cancelling this cancels the elector, which releases the Lease."""
    main = asyncio.get_running_loop()
    own: dict[str, Any] = {}
    started, stop = threading.Event(), threading.Event()

    def tell(leading: bool) -> None:
        main.call_soon_threadsafe(leadership.set, leading)

    async def ask() -> None:
        assert may_lead is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(may_lead(), main))

    async def elect() -> None:
        own["loop"], own["task"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        if stop.is_set():
            return
        kube = await client()
        try:
            mirror = Leadership(mirror=tell)
            await LeaseElector(kube, settings, mirror, ask if may_lead else None).run()
        finally:
            await kube.aclose()

    def thread() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # how a stop ends it
            asyncio.run(elect())

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, thread)  # not abandoned: waited for below
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()
            if started.is_set():
                # A loop that has ended already (its elector failed) takes no more calls.
                with contextlib.suppress(RuntimeError):
                    own["loop"].call_soon_threadsafe(own["task"].cancel)
