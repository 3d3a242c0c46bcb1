"""The Lease elector's timing rules (kube/lease.py), on the in-memory API of the orchestration
tests: a leader stops leading by its renew deadline even when a request hangs, so it never
overlaps a follower that takes an expired Lease; a released Lease passes at once."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from kubelbd.kube.lease import Leadership, LeaseElector, LeaseSettings, run_in_own_thread
from kubelbd.objects import LEASES, NAMESPACES

from .fakekube import FakeKube
from .orchestration import namespace, until

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 2, 1.0, 0.1


class Hanging(FakeKube):
    """An API whose reads hang (a dead connection) while `hang` is set."""

    hang = False

    async def get_or_none(self, *args: Any, **kwargs: Any) -> Any:
        while self.hang:  # noqa: ASYNC110 — the hang itself, not a wait for something
            await anyio.sleep(0.05)
        return await super().get_or_none(*args, **kwargs)


async def api() -> Hanging:
    mgmt = Hanging("mgmt")
    await mgmt.create(NAMESPACES, namespace("kubelb", {}))
    return mgmt


def elector(
    mgmt: FakeKube, identity: str, may_lead: Callable[[], Awaitable[None]] | None = None
) -> tuple[LeaseElector, Leadership]:
    lead = Leadership()
    return LeaseElector(
        mgmt,
        LeaseSettings(
            "kubelb",
            identity,
            lease_duration=LEASE_DURATION,
            renew_deadline=RENEW_DEADLINE,
            retry_period=RETRY_PERIOD,
        ),
        lead,
        may_lead,
    ), lead


async def test_a_leader_whose_requests_hang_stops_by_its_renew_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mgmt = await api()
    a, lead = elector(mgmt, "a")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await lead.until(True)
            hung = anyio.current_time()
            mgmt.hang = True
            await lead.until(False)
            stepped_down = anyio.current_time() - hung
            tg.cancel_scope.cancel()
    # It last renewed at most a retry period before the hang; a follower waits a whole lease
    # duration from when it last saw a change: no overlap.
    assert stepped_down <= RENEW_DEADLINE + 0.05
    assert stepped_down < LEASE_DURATION
    # The log says why it stopped (the Lease still names it: "follows (leader: a)" alone
    # reads as if nothing had happened).
    assert any(
        "not renewed for" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records
    )


async def test_a_follower_takes_a_dead_leaders_lease_only_after_the_lease_duration() -> None:
    mgmt = await api()
    # A leader that died without releasing: its Lease (renewed "in the future", by a clock
    # far ahead: kubelbd never trusts the holder's timestamps) just stops changing.
    await mgmt.create(
        LEASES,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "kubelbd", "namespace": "kubelb"},
            "spec": {
                "holderIdentity": "a",
                "leaseDurationSeconds": LEASE_DURATION,
                "renewTime": "2099-01-01T00:00:00.000000Z",
                "leaseTransitions": 3,
            },
        },
    )
    b, lead_b = elector(mgmt, "b")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            first_seen = anyio.current_time()
            tg.start_soon(b.run)
            await lead_b.decided.wait()
            assert not lead_b.leading
            await lead_b.until(True)
            waited = anyio.current_time() - first_seen
            lease = await mgmt.get_or_none(LEASES, "kubelbd", "kubelb")
            assert lease is not None and lease["spec"]["holderIdentity"] == "b"
            assert lease["spec"]["leaseTransitions"] == 4
            tg.cancel_scope.cancel()
    assert LEASE_DURATION <= waited <= LEASE_DURATION + 0.5


async def test_a_released_lease_passes_within_a_retry_period() -> None:
    mgmt = await api()
    a, lead_a = elector(mgmt, "a")
    b, lead_b = elector(mgmt, "b")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def leader() -> None:
                with scope:
                    await a.run()

            tg.start_soon(leader)
            await lead_a.until(True)
            tg.start_soon(b.run)
            await lead_b.decided.wait()
            scope.cancel()  # a stops: it releases the Lease
            released = anyio.current_time()
            await lead_b.until(True)
            assert anyio.current_time() - released <= RETRY_PERIOD + 0.1
            lease = await mgmt.get_or_none(LEASES, "kubelbd", "kubelb")
            assert lease is not None and lease["spec"]["holderIdentity"] == "b"
            assert lease["spec"]["leaseTransitions"] == 1
            tg.cancel_scope.cancel()


async def test_a_replica_tries_to_lead_only_once_it_may_and_asks_no_more_while_it_leads() -> None:
    """`may_lead` is the collection of the term a replica just lost (app.py): its stall
    must fall while the replica follows, not in its next term's renewals."""
    mgmt = await api()
    gate, asked = anyio.Event(), [0]

    async def may_lead() -> None:
        asked[0] += 1
        await gate.wait()

    a, lead = elector(mgmt, "a", may_lead)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await until(lambda: asked[0] == 1, "the elector asking whether it may lead")
            await anyio.wait_all_tasks_blocked()
            assert await mgmt.get_or_none(LEASES, "kubelbd", "kubelb") is None
            assert not lead.leading
            gate.set()
            await lead.until(True)
            first = await mgmt.get_or_none(LEASES, "kubelbd", "kubelb")
            assert first is not None

            async def renewed() -> bool:
                lease = await mgmt.get_or_none(LEASES, "kubelbd", "kubelb")
                return (
                    lease is not None and lease["spec"]["renewTime"] != first["spec"]["renewTime"]
                )

            await until(renewed, "a renewal")
            assert asked[0] == 1
            tg.cancel_scope.cancel()


async def lease_spec(mgmt: FakeKube) -> dict[str, Any]:
    lease = await mgmt.get_or_none(LEASES, "kubelbd", "kubelb")
    return dict(lease["spec"]) if lease is not None else {}


async def test_a_leader_on_its_own_thread_keeps_the_lease_while_the_main_loop_is_stalled() -> None:
    """Under overload the main loop's tasks waited over 10 s for their turn: an elector
    among them lost the Lease to no one. On its own thread and loop it renews regardless,
    and tells the main loop when that runs again; cancelled, it releases the Lease."""
    mgmt = await api()
    settings = LeaseSettings(
        "kubelb", "a", lease_duration=LEASE_DURATION, renew_deadline=RENEW_DEADLINE,
        retry_period=RETRY_PERIOD,
    )  # fmt: skip
    lead = Leadership()

    async def client() -> FakeKube:
        return mgmt.client("lease")  # made on the elector's own loop, as kubelbd's is

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_in_own_thread, client, settings, lead)
            await lead.until(True)
            before = (await lease_spec(mgmt))["renewTime"]
            # The main loop stalls (the thing under test, not a wait for anything): three
            # renew deadlines without running a single task.
            time.sleep(3 * RENEW_DEADLINE)  # noqa: ASYNC251 — the stall under test
            await anyio.wait_all_tasks_blocked()
            assert lead.leading
            spec = await lease_spec(mgmt)
            assert spec["holderIdentity"] == "a" and spec["renewTime"] != before
            tg.cancel_scope.cancel()
    assert not (await lease_spec(mgmt)).get("holderIdentity")  # released on the way out


async def test_an_elector_on_its_own_thread_waits_on_the_main_loop_before_it_leads() -> None:
    mgmt = await api()
    settings = LeaseSettings("kubelb", "a", lease_duration=LEASE_DURATION,
                             renew_deadline=RENEW_DEADLINE, retry_period=RETRY_PERIOD)  # fmt: skip
    lead, gate, asked = Leadership(), anyio.Event(), [0]

    async def may_lead() -> None:  # runs on the main loop
        asked[0] += 1
        await gate.wait()

    async def client() -> FakeKube:
        return mgmt.client("lease")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_in_own_thread, client, settings, lead, may_lead)
            await until(lambda: asked[0] == 1, "the elector asking on the main loop")
            assert await mgmt.get_or_none(LEASES, "kubelbd", "kubelb") is None
            gate.set()
            await lead.until(True)
            tg.cancel_scope.cancel()


async def test_an_elector_thread_that_cannot_make_its_client_fails_instead_of_hanging() -> None:
    settings = LeaseSettings("kubelb", "a")

    async def client() -> FakeKube:
        raise OSError("no kubeconfig")

    with anyio.fail_after(10), pytest.raises(BaseExceptionGroup) as failed:
        await run_in_own_thread(client, settings, Leadership())
    assert failed.group_contains(OSError, match="no kubeconfig")
