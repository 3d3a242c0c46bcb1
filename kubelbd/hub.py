"""Where the tenant side and the data plane meet in-process; neither imports the other.

Records go one way, statuses the other, each through something defined here:

    tenant side ──RecordSink──▶ data plane ──StatusBoard──▶ tenant side

- `RecordSink`: records the moment a tenant task has them (before the management API server
  has them back through the data plane's watch, which is all there is after a restart);
- `StatusBoard`: the status every tenant object should show, as the data plane decided it;
  each tenant task writes its own tenant's, with its own client;
- `Settling`: after a restart the data plane waits (briefly) for every registered tenant to
  resync before its first publish, so Envoy is never handed a partial picture;
- `Dialled`: the Services Envoy's clusters still send to, as the data plane published them;
  a tenant task deletes a NodePort twin no object uses only once Envoy no longer does (make
  before break: a route switched away from it may be held, and a cluster no route uses
  lingers for requests under way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import anyio

from .objects import Obj
from .records.names import RecordKind
from .records.status import SourceStatus
from .records.types import RouteRecord

#: a Service of a tenant: (namespace, name)
Service = tuple[str, str]


class Dialled:
    """Which Services of each tenant Envoy's clusters dial (data plane -> tenant side)."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, set[Service]] = {}
        self._wake: dict[str, Callable[[], None]] = {}

    def set(self, services: dict[str, set[Service]]) -> None:
        """What the clusters Envoy was just handed dial, by tenant; a tenant some Service of
        which is no longer dialled is woken, to delete what waited for it."""
        before, self._by_tenant = self._by_tenant, services
        for tenant, was in before.items():
            if was - services.get(tenant, set()) and tenant in self._wake:
                self._wake[tenant]()

    def dials(self, tenant: str, service: Service) -> bool:
        return service in self._by_tenant.get(tenant, ())

    def on_change(self, tenant: str, wake: Callable[[], None]) -> None:
        """Call `wake` when a Service of the tenant is no longer dialled (one per tenant)."""
        self._wake[tenant] = wake

    def forget(self, tenant: str) -> None:
        """The tenant is gone: nothing of its to wake (its task is not kept by a callback)."""
        self._wake.pop(tenant, None)


class RecordSink(Protocol):
    """The data plane's intake, as the tenant side sees it."""

    #: what Envoy's clusters dial, as the data plane last published them
    dialled: Dialled

    def provisional(self, record: RouteRecord) -> None:
        """A Route translated right now, whose record is being written: render it already."""
        ...

    def written(self, kind: RecordKind, obj: Obj) -> None:
        """A record as the API server stored it."""
        ...

    def deleted(self, kind: RecordKind, tenant: str, name: str) -> None: ...

    async def listed(self) -> None:
        """Until the data plane holds the records the API had when it started (its first
        list), so that `stored` has them."""
        ...

    def stored(self, kind: RecordKind, tenant: str, name: str) -> Any:
        """The spec of a record as the data plane holds it from the API (None: none), which
        the tenant side keeps instead of an equal copy of its own."""
        ...

    def revert(self, kind: RecordKind, tenant: str, name: str) -> None:
        """A provisional record will not be written after all: serve what the API holds."""
        ...

    def withdrawn(self, kind: RecordKind, tenant: str) -> set[str]:
        """Names of the tenant's records of `kind` withdrawn on the tenant side's word
        (`deleted`) that the API may still hold: neither deleted there since, as far as the
        data plane has seen, nor stored again. A tenant task stopped before its background
        delete ran leaves them so: not served, whatever their spec."""
        ...


class StatusBoard:
    """The latest wanted status of every tenant object, by tenant; the tenant task of each
    tenant takes its own (again from the start when it restarts)."""

    def __init__(self) -> None:
        self._wanted: dict[str, dict[str, SourceStatus]] = {}
        self._changed: dict[str, set[str]] = {}
        self._wake: dict[str, anyio.Event] = {}
        #: per tenant task, whether it has written everything it took
        self._written: dict[str, Callable[[], bool]] = {}

    def want(self, tenant: str, status: SourceStatus) -> None:
        wanted = self._wanted.setdefault(tenant, {})
        if wanted.get(status.key) == status:
            return
        wanted[status.key] = status
        self._changed.setdefault(tenant, set()).add(status.key)
        self._notify(tenant)

    def done(self, tenant: str, status: SourceStatus) -> None:
        """A final status was written: forget the object, unless a newer status came."""
        wanted = self._wanted.get(tenant, {})
        if wanted.get(status.key) == status:
            del wanted[status.key]
            self._changed.get(tenant, set()).discard(status.key)

    def forget_tenant(self, tenant: str) -> None:
        self._wanted.pop(tenant, None)
        self._changed.pop(tenant, None)
        self._wake.pop(tenant, None)
        self._written.pop(tenant, None)

    def keep_final_only(self) -> None:
        """Leadership lost: forget every wanted status but the final ones (taking back an
        address), which the next term could not know to write."""
        for tenant, wanted in self._wanted.items():
            self._wanted[tenant] = {k: v for k, v in wanted.items() if v.final}
            self._changed[tenant] = self._changed.get(tenant, set()) & set(self._wanted[tenant])

    def subscribe(self, tenant: str, written: Callable[[], bool]) -> None:
        """A tenant task (re)starts: everything wanted for it counts as changed. `written`:
        whether it has written everything it took (`busy`)."""
        self._changed[tenant] = set(self._wanted.get(tenant, {}))
        self._written[tenant] = written
        self._notify(tenant)

    def unsubscribe(self, tenant: str) -> None:
        """The tenant task stopped (its API server unreachable, say): what waits for it makes
        no one else wait (`busy`)."""
        self._written.pop(tenant, None)

    def busy(self) -> bool:
        """Some tenant task has an object's status still to write: what the tenants' users
        wait for, which the management cluster's own writes let go first (for a bounded time:
        a tenant that keeps its task busy delays no one's records for long)."""
        return any(self._changed.get(t) or not written() for t, written in self._written.items())

    def take(self, tenant: str) -> list[SourceStatus]:
        """What changed for `tenant` since the last take."""
        keys = self._changed.pop(tenant, set())
        wanted = self._wanted.get(tenant, {})
        return [wanted[k] for k in sorted(keys) if k in wanted]

    async def wait(self, tenant: str) -> None:
        """Until something changed for `tenant`."""
        while not self._changed.get(tenant):
            event = self._wake.setdefault(tenant, anyio.Event())
            await event.wait()
            self._wake.pop(tenant, None)

    def _notify(self, tenant: str) -> None:
        event = self._wake.get(tenant)
        if event is not None:
            event.set()


class Settling:
    """Which registered tenants have synced since this process started."""

    def __init__(self) -> None:
        self._expected: set[str] = set()
        self._done: set[str] = set()
        self._changed = anyio.Event()
        self.registrations_known = False

    def expect(self, tenant: str) -> None:
        self._expected.add(tenant)
        self._changed.set()

    def done(self, tenant: str) -> None:
        """Synced once, or known unreachable: nothing better to wait for."""
        self._done.add(tenant)
        self._changed.set()

    def forget(self, tenant: str) -> None:
        self._expected.discard(tenant)
        self._done.discard(tenant)
        self._changed.set()

    def known(self) -> None:
        """Every registration has been read."""
        self.registrations_known = True
        self._changed.set()

    @property
    def settled(self) -> bool:
        return self.registrations_known and self._expected <= self._done

    async def wait(self, timeout: float = 10.0) -> None:
        """Until every registered tenant settled, or `timeout` (a tenant that hangs must not
        keep Envoy from the rest)."""
        with anyio.move_on_after(timeout):
            while not self.settled:
                self._changed = anyio.Event()
                await self._changed.wait()
