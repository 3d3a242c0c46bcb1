"""The Tenant record: where the tenant's nodes are (spec), and whether kubelbd can reach and
has synced it (status: Connected, Synced, lastError).

Health is computed as data (`tenant_status`) and written through a StatusWriter. A change of
a message alone (the route count moves with every change) is coalesced to one write per
`MESSAGE_INTERVAL`: those writes cost the management API server as much as the route records
themselves. A real change (a condition's status or reason) is written at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from ..hub import RecordSink
from ..kube import ApiError, Kube, KubeconfigError, KubeconfigRefused
from ..kube.client import timestamp
from ..kube.status_writer import StatusWriter
from ..records import conditions
from ..records.conditions import Desired
from ..records.names import TENANT, TENANTS
from ..records.objects import status_object, tenant_object
from ..records.types import TenantStatus

log = logging.getLogger(__name__)

STATUS_MANAGER = "kubelbd-tenant"
MESSAGE_INTERVAL = 10.0

#: (ok, reason, message) of one condition
State = tuple[bool | None, str, str]


class RetryLater(Exception):
    """Part of a reconcile failed; what failed is retried after a backoff, alone."""


def classify(error: BaseException) -> tuple[str, str]:
    """(reason, message) for a condition, from whatever went wrong talking to the tenant."""
    if isinstance(error, KubeconfigRefused):
        return "KubeconfigRefused", str(error)
    if isinstance(error, KubeconfigError):
        return "InvalidKubeconfig", str(error)
    if isinstance(error, RetryLater):
        return "ObjectErrors", str(error)
    if isinstance(error, ApiError):
        if error.status in (401, 403):
            return "Unauthorized", f"the tenant API server refused kubelbd: {error}"
        return "APIError", str(error)
    if isinstance(error, (ConnectionError, OSError, TimeoutError)):
        return "Unreachable", str(error)
    return "Error", repr(error)


@dataclass(frozen=True)
class Health:
    """The Tenant record's status as decided: conditions without timestamps."""

    conditions: tuple[Desired, ...]
    last_error: str

    def minor_change_from(self, other: Health | None) -> bool:
        """Only messages differ from `other`."""
        return (
            other is not None
            and other.last_error == self.last_error
            and conditions.same(other.conditions, self.conditions, messages=False)
        )


def tenant_status(connected: State, synced: State, last_error: str) -> Health:
    return Health(
        (conditions.desired("Connected", *connected), conditions.desired("Synced", *synced)),
        last_error,
    )


class TenantHealth:
    def __init__(self, tenant: str, mgmt: Kube, sink: RecordSink, address_type: str) -> None:
        self.tenant = tenant
        self.mgmt = mgmt
        self.sink = sink
        self.address_type = address_type
        self.connected: State = (None, "Connecting", "connecting")
        self.synced: State = (None, "Pending", "not synced yet")
        self.last_error = ""
        self._informer_errors: dict[str, str] = {}
        self._addresses: list[str] | None = None
        self._last: Health | None = None  # as last handed to the writer
        self._previous: list[object] = []  # conditions as last written, with their times
        self.writer = StatusWriter(f"tenant {tenant}", coalesce=MESSAGE_INTERVAL)

    # ---- what the tenant task reports ----------------------------------------------------------

    def connection_failed(self, error: BaseException) -> None:
        reason, message = classify(error)
        self.connected = (False, reason, message)
        self.last_error = message
        self._changed()

    def informer(self, which: str, error: Exception | None) -> bool:
        """One informer's health; returns whether any informer is failing."""
        if error is None:
            self._informer_errors.pop(which, None)
        else:
            reason, message = classify(error)
            self._informer_errors[which] = f"{reason}: {message}"
        if self._informer_errors:
            reason = next(iter(self._informer_errors.values())).split(":", 1)[0]
            msg = "; ".join(f"{k}: {v}" for k, v in sorted(self._informer_errors.items()))
            self.connected = (False, reason, msg)
            self.last_error = msg
        else:
            self.connected = (True, "Connected", "watching the tenant API server")
        self._changed()
        return bool(self._informer_errors)

    def sync_failed(self, error: BaseException) -> str:
        """Returns the message, which the caller logs when it is new."""
        reason, message = classify(error)
        self.synced = (False, reason, message)
        self.last_error = message
        self._changed()
        return message

    def sync_succeeded(self, records: int) -> None:
        self.synced = (True, "Synced", f"{records} routes in sync")
        self._changed()

    # ---- the record ------------------------------------------------------------------------------

    async def set_addresses(self, addresses: list[str]) -> None:
        """The Tenant record's node addresses (one write per change, shared by every route)."""
        if addresses == self._addresses:
            return
        obj = await self.mgmt.apply(
            TENANTS,
            tenant_object(
                self.tenant, {"nodeAddressType": self.address_type, "nodeAddresses": addresses}
            ),
        )
        self._addresses = addresses
        self.sink.written(TENANT, obj)
        log.info("tenant %s: node addresses %s", self.tenant, ", ".join(addresses) or "(none)")

    def _changed(self) -> None:
        status = tenant_status(self.connected, self.synced, self.last_error)
        minor = status.minor_change_from(self._last)
        self._last = status
        fingerprint = (repr(status.conditions), status.last_error)
        self.writer.want(self.tenant, fingerprint, partial(self._write, status), minor=minor)

    async def _write(self, status: Health) -> None:
        body: TenantStatus = {
            "conditions": conditions.stamp(status.conditions, self._previous, timestamp()),
            "lastError": status.last_error,
        }
        obj = status_object(TENANT.kind, self.tenant, self.tenant, body)
        try:
            written = await self.mgmt.apply(
                TENANTS, obj, subresource="status", field_manager=STATUS_MANAGER
            )
        except ApiError as e:
            if not e.not_found:
                raise
            # Status needs the object: create it (node addresses come once nodes sync).
            await self._create_record()
            written = await self.mgmt.apply(
                TENANTS, obj, subresource="status", field_manager=STATUS_MANAGER
            )
        self._previous = (written.get("status") or {}).get("conditions") or []

    async def _create_record(self) -> None:
        obj = tenant_object(self.tenant, {"nodeAddressType": self.address_type})
        try:
            await self.mgmt.create(TENANTS, obj)
        except ApiError as e:
            if not e.conflict:
                log.warning("tenant %s: cannot create Tenant record: %s", self.tenant, e)
                raise
