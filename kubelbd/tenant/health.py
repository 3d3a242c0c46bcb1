"""The Tenant record's status: where the tenant's nodes are, and whether kubelbd can reach and
has synced it, accepted its node addresses and its policy (Connected, Synced, NodesAccepted,
PolicyAccepted, lastError). Its spec is the operator's (the tenant's policy): never written.

Node addresses are written by their own field manager, once per change, with the time
kubelbd first saw each (what decides between two tenants listing one address: ir/nodes.py).

Health is computed as data (`tenant_status`) and written through a StatusWriter. A change of
a message alone (the route count moves with every change) is coalesced to one write per
`MESSAGE_INTERVAL`: those writes cost the management API server as much as the route records
themselves. A real change (a condition's status or reason) is written at once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial

from ..hub import RecordSink
from ..kube import ApiError, Kube, KubeconfigError, KubeconfigRefused
from ..kube.client import precise_timestamp, timestamp
from ..kube.status_writer import StatusWriter
from ..objects import Obj
from ..records import conditions
from ..records.conditions import Desired
from ..records.names import TENANT, TENANTS
from ..records.objects import status_object, tenant_object
from ..records.types import TenantNodes, TenantStatus
from ..sources.nodes import NodeAddresses

log = logging.getLogger(__name__)

STATUS_MANAGER = "kubelbd-tenant"
NODES_MANAGER = "kubelbd-nodes"
RECORD_MANAGER = "kubelbd-record"
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


NODES_OK: State = (True, "Accepted", "every node address is used")
POLICY_OK: State = (True, "Accepted", "the tenant's policy applies")


def tenant_status(
    connected: State,
    synced: State,
    last_error: str,
    nodes: State = NODES_OK,
    policy: State = POLICY_OK,
    policy_generation: int | None = None,
) -> Health:
    return Health(
        (
            conditions.desired("Connected", *connected),
            conditions.desired("Synced", *synced),
            conditions.desired("NodesAccepted", *nodes),
            # observedGeneration: the Tenant record's generation whose policy is in force, so
            # that an operator (or a test) knows when a policy change applies
            conditions.desired("PolicyAccepted", *policy, policy_generation),
        ),
        last_error,
    )


def nodes_state(refused: list[tuple[str, str]]) -> State:
    if not refused:
        return NODES_OK
    shown = "; ".join(f"node {n}: {why}" for n, why in refused[:10])
    more = f" (and {len(refused) - 10} more)" if len(refused) > 10 else ""
    return (False, "AddressRefused", f"not used: {shown}{more}")


class TenantHealth:
    def __init__(self, tenant: str, mgmt: Kube, sink: RecordSink, address_type: str) -> None:
        self.tenant = tenant
        self.mgmt = mgmt
        self.sink = sink
        self.address_type = address_type
        self.connected: State = (None, "Connecting", "connecting")
        self.synced: State = (None, "Pending", "not synced yet")
        self.nodes: State = NODES_OK
        self.policy: State = POLICY_OK
        self.policy_generation: int | None = None
        self.last_error = ""
        self._informer_errors: dict[str, str] = {}
        self._addresses: list[str] | None = None
        #: address -> when kubelbd first saw a node of this tenant with it
        self._since: dict[str, str] = {}
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

    def known_claims(self, status: object) -> None:
        """The claims the Tenant record holds (its status as stored), kept on rewrites."""
        claims = status.get("nodeAddressClaims") if isinstance(status, dict) else None
        for c in claims if isinstance(claims, list) else []:
            if isinstance(c, dict) and isinstance(c.get("address"), str):
                self._since.setdefault(c["address"], str(c.get("since") or ""))

    def policy_state(self, state: State, generation: int | None) -> None:
        self.policy, self.policy_generation = state, generation
        self._changed()

    async def set_addresses(self, found: NodeAddresses, taken: Collection[str] = ()) -> None:
        """The Tenant record's node addresses (one write per change, shared by every route),
        with when kubelbd first saw each. An address another tenant listed first (`taken`)
        gets no time: a losing claim must not age into a winning one."""
        state = nodes_state(found.refused)
        if state != self.nodes:
            self.nodes = state
            self._changed()
        now = precise_timestamp()
        since = {a: self._since.get(a) or now for a in found.claimed if a not in taken}
        addresses = found.addresses
        if (addresses, since) == (self._addresses, self._since):
            return
        nodes: TenantNodes = {
            "nodeAddressType": self.address_type,
            "nodeAddresses": addresses,
            "nodeAddressClaims": [{"address": a, "since": t} for a, t in sorted(since.items())],
        }
        obj = await self._apply_status(dict(nodes), NODES_MANAGER)
        self._addresses, self._since = addresses, since
        self.sink.written(TENANT, obj)
        log.info("tenant %s: node addresses %s", self.tenant, ", ".join(addresses) or "(none)")

    def _changed(self) -> None:
        status = tenant_status(
            self.connected, self.synced, self.last_error, self.nodes, self.policy,
            self.policy_generation,
        )  # fmt: skip
        minor = status.minor_change_from(self._last)
        self._last = status
        fingerprint = (repr(status.conditions), status.last_error)
        self.writer.want(self.tenant, fingerprint, partial(self._write, status), minor=minor)

    async def _write(self, status: Health) -> None:
        body: TenantStatus = {
            "conditions": conditions.stamp(status.conditions, self._previous, timestamp()),
            "lastError": status.last_error,
        }
        written = await self._apply_status(dict(body), STATUS_MANAGER)
        self._previous = (written.get("status") or {}).get("conditions") or []

    async def _apply_status(self, status: dict[str, object], manager: str) -> Obj:
        obj = status_object(TENANT.kind, self.tenant, self.tenant, status)
        try:
            return await self.mgmt.apply(TENANTS, obj, subresource="status", field_manager=manager)
        except ApiError as e:
            if not e.not_found:
                raise
        # Status needs the object: make it (the operator may have made it already).
        await self.ensure_record()
        return await self.mgmt.apply(TENANTS, obj, subresource="status", field_manager=manager)

    async def ensure_record(self) -> None:
        """The Tenant record exists and carries the tenant label (the data plane watches by
        it); its spec, the operator's, is never written: an operator's Tenant made before
        the registration Secret keeps its policy."""
        await self.mgmt.apply(TENANTS, tenant_object(self.tenant), field_manager=RECORD_MANAGER)
