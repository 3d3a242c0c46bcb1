"""Layer 4 in the data plane: LoadBalancer records → allocations → listeners and clusters.

Allocations are made here because only here are all tenants visible at once, and they are
written into the record's status *before* Envoy listens on them, so what Envoy serves can
always be rebuilt from the records after a restart.

- pool mode: each LoadBalancer gets an address of its own from `--l4-address-pool`, and Envoy
  listens on it at the Service's own ports;
- service mode: each Service port gets an Envoy listener port, and a Service of type
  LoadBalancer in the management cluster (selecting the Envoy pods) maps the tenant's port to
  it; whatever address the management cluster's load balancer writes into that Service's status
  is handed on to the tenant Service.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ir.allocation import AllocationError
from ..ir.l4 import L4Cluster, L4Listener, Placement, Pool, PortRange, build, place
from ..ir.status import DNSState, Report, lb_report
from ..kube import ApiError, Kube
from ..kube.informer import EventHandler, Informer, identity_only
from ..objects import MANAGED_BY, MANAGER, SERVICES, Obj, labels_of
from ..records import parse
from ..records.conditions import Transitions, carried_fingerprint, transitions
from ..records.names import (
    L4_RECORD_LABEL,
    LOADBALANCER,
    LOADBALANCERS,
    labels,
    namespace_of,
    tenant_of,
)
from ..records.objects import status_object
from ..records.types import (
    LBRecord,
    ListenerPort,
    LoadBalancerIngress,
    LoadBalancerStatus,
    TenantRecord,
)
from .arrivals import Arrivals
from .refusals import Refusals

log = logging.getLogger(__name__)

#: the field manager of allocations (address, listenerPorts, portsSummary)
ALLOCATION_MANAGER = "kubelbd-dataplane"


@dataclass(frozen=True)
class L4Settings:
    mode: str = "pool"  # or "service"
    pool: str = ""
    listen_address: str = "0.0.0.0"
    port_range: tuple[int, int] = (20000, 29999)
    envoy_selector: tuple[tuple[str, str], ...] = (("app", "kubelbd"),)


def management_service_name(rec: LBRecord) -> str:
    """A DNS label, readable where possible: lb-<namespace>-<name>, hashed when too long."""
    base = f"lb-{rec.namespace}-{rec.service}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(rec.id.encode()).hexdigest()[:8]
    return f"{base[:54]}-{digest}"


def management_service(rec: LBRecord, placement: Placement, settings: L4Settings) -> Obj:
    ports = [
        {
            "name": f"{proto.lower()}-{port}",
            "port": port,
            "targetPort": listener,
            "protocol": proto,
        }
        for port, proto, listener in placement.ports
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": management_service_name(rec),
            "namespace": namespace_of(rec.tenant),
            "labels": labels(rec.tenant) | {L4_RECORD_LABEL: rec.name},
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": dict(settings.envoy_selector),
            "ports": ports,
        },
    }


NO_GATEWAY_ADDRESS = AllocationError(
    "NoAddressPool", "a Gateway needs an address of its own: --l4-mode=pool and --l4-address-pool"
)


class NotLeading(Exception):
    """This replica lost the Lease: the allocation it was about to write is not its to write."""


class LoadBalancers:
    def __init__(self, mgmt: Kube, settings: L4Settings, wake: Callable[[], None]) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self._wake = wake  # the data plane's render loop
        self.records: dict[str, LBRecord] = {}
        self.status: dict[str, LoadBalancerStatus] = {}  # record id -> as last seen or written
        #: record id -> the conditions it carried when last seen (lastTransitionTime's base)
        self.conditions: dict[str, Transitions] = {}  # as in intake.py
        #: record id -> the status it carried when last seen, less the allocation, as its
        #: `carried_fingerprint` (as in intake.py): what a new term need not write again
        self.carried: dict[str, bytes] = {}
        self.placements: dict[str, Placement] = {}
        self.failures: dict[str, AllocationError] = {}
        self.mgmt_services: dict[str, Obj] = {}  # record id -> management Service (service mode)
        self.dirty = True
        #: whether this replica leads: only the leader allocates, and writes what it decided
        self.writes = True
        self.pending_status: set[str] = set()
        self._seen: dict[str, tuple[str, int]] = {}
        self.refused = Refusals()
        self.arrivals = Arrivals()
        self._deleted: dict[str, LBRecord] = {}

    # ---- intake ------------------------------------------------------------------------------

    def upsert(self, obj: Obj) -> None:
        tenant = tenant_of(obj)
        if tenant is None:
            return
        rid = f"{tenant}/{obj['metadata']['name']}"
        if obj.get("status"):
            status = parse.lb_status(obj["status"])
            if not self.writes and status != self.status.get(rid):
                self._changed()  # a follower serves what the leader allocated, once written
            self.status[rid] = status
            self.conditions[rid] = transitions(obj["status"].get("conditions"))
            self.carried[rid] = carried_fingerprint(_reported(obj["status"]))
        uid = obj["metadata"].get("uid", "")
        generation = int(obj["metadata"].get("generation") or 0)
        if self._seen.get(rid) == (uid, generation):
            return
        rec = self.refused.parse(LOADBALANCER.kind, rid, lambda: parse.lb_record(obj))
        if rec is None:
            return
        self._seen[rid] = (uid, generation)
        self.records[rid] = rec
        self.arrivals.arrived(LOADBALANCER.kind, rid)
        self._changed()

    def delete(self, tenant: str, name: str, uid: str | None = None) -> None:
        rid = f"{tenant}/{name}"
        seen = self._seen.get(rid)
        if uid is not None and seen is not None and seen[0] != uid:
            return
        self._seen.pop(rid, None)
        self.refused.forget(rid)
        self.status.pop(rid, None)
        self.conditions.pop(rid, None)
        self.carried.pop(rid, None)
        rec = self.records.pop(rid, None)
        if rec is not None:
            self._deleted[rid] = rec
            self.arrivals.arrived(LOADBALANCER.kind, rid)
        self._changed()

    def uid(self, rid: str) -> str | None:
        """The uid of the LoadBalancer record as last seen (None: unknown)."""
        seen = self._seen.get(rid)
        return (seen[0] or None) if seen is not None else None

    def take_deleted(self) -> list[LBRecord]:
        """Records deleted since the last call (their status is nobody's business now)."""
        deleted, self._deleted = self._deleted, {}
        return list(deleted.values())

    def on_management_service(self, kind: str, obj: Obj) -> None:
        """Service mode: the management cluster's LB wrote (or changed) an address."""
        tenant = tenant_of(obj)
        name = labels_of(obj).get(L4_RECORD_LABEL)
        if tenant is None or name is None:
            return
        rid = f"{tenant}/{name}"
        if kind == "DELETED":
            self.mgmt_services.pop(rid, None)
            self._changed()
            return
        self.mgmt_services[rid] = obj
        self.pending_status.add(rid)
        self._wake()

    def _changed(self) -> None:
        self.dirty = True
        self._wake()

    def informers(
        self, on_record: EventHandler, guard: Callable[[str, EventHandler], EventHandler]
    ) -> list[Informer]:
        """The watches of the records (`on_record`) and, in service mode, of the management
        Services; `guard` keeps out what is in no tenant's namespace (strays.py)."""
        selector = f"{MANAGED_BY}={MANAGER}"
        out = [
            Informer(
                self.mgmt,
                LOADBALANCERS,
                guard("LoadBalancer", on_record),
                label_selector=selector,
                stored=identity_only,  # kept parsed by the intake, as Routes are
                packed=True,
            )
        ]
        if self.settings.mode == "service":
            out.append(
                Informer(
                    self.mgmt,
                    SERVICES,
                    guard("Service", self.on_management_service),
                    label_selector=f"{selector},{L4_RECORD_LABEL}",
                )
            )
        return out

    # ---- allocation and rendering ------------------------------------------------------------

    def _where(self) -> Pool | PortRange:
        if self.settings.mode == "pool":
            return Pool(self.settings.pool)
        first, last = self.settings.port_range
        return PortRange(self.settings.listen_address, first, last)

    async def reconcile(
        self, tenants: dict[str, TenantRecord]
    ) -> tuple[list[L4Listener], list[L4Cluster]]:
        """Allocate, persist allocations, then return what Envoy should serve."""
        self.dirty = False
        records = list(self.records.values())
        refused: dict[str, AllocationError] = {}
        if self.settings.mode == "service":
            # A Gateway listens on its own ports: only an address of its own allows that.
            gateways = {r.id for r in records if "listeners" in r.spec}
            records = [r for r in records if r.id not in gateways]
            refused = dict.fromkeys(gateways, NO_GATEWAY_ADDRESS)
        placements, failures = place(records, self.status, self._where())
        failures |= refused
        if not self.writes:
            # A follower serves the allocations the leader recorded, and nothing else: it
            # never decides an address or port that the leader might decide differently.
            return self._recorded(placements, tenants)
        try:
            return await self._allocate(placements, failures, tenants)
        except NotLeading:  # the Lease went while writing: not one more write
            return self._recorded(placements, tenants)

    async def _allocate(
        self,
        placements: dict[str, Placement],
        failures: dict[str, AllocationError],
        tenants: dict[str, TenantRecord],
    ) -> tuple[list[L4Listener], list[L4Cluster]]:
        unwritten: set[str] = set()
        for rid, placement in placements.items():
            # Each write awaits, and the record's DELETED event may come meanwhile: a record
            # gone is not written for (its allocation went with it; the next pass collects).
            if rid not in self.records:
                unwritten.add(rid)
                continue
            try:
                if self._status_allocation(rid) != _allocation(placement, self.settings.mode):
                    await self._write_allocation(rid, placement)
            except (ApiError, ConnectionError) as e:
                # Not served until its allocation is durable; the others go on regardless.
                log.warning("load balancer %s: cannot record its allocation: %s", rid, e)
                unwritten.add(rid)
                continue
            if self.settings.mode == "service" and rid in self.records:
                try:
                    await self._ensure_management_service(rid, placement)
                except (ApiError, ConnectionError) as e:
                    log.warning("load balancer %s: management Service: %s", rid, e)
                    self.dirty = True
        for rid, error in failures.items():
            status = self.status.get(rid, {})
            held = status.get("address") or status.get("listenerPorts")
            if held and rid in self.records and rid not in placements:
                try:
                    await self._write_allocation(rid, None)
                except (ApiError, ConnectionError) as e:
                    log.warning("load balancer %s: cannot release its allocation: %s", rid, e)
                    unwritten.add(rid)
            log.warning("load balancer %s: %s", rid, error.message)
        if self.settings.mode == "service":
            try:
                await self._collect_management_services()
            except (ApiError, ConnectionError) as e:
                log.warning("load balancers: cannot delete a management Service: %s", e)
                self.dirty = True
        if unwritten:
            self.dirty = True  # the data plane retries soon
        placements = {
            r: p for r, p in placements.items() if r not in unwritten and r in self.records
        }
        changed = (set(placements) ^ set(self.placements)) | set(failures) ^ set(self.failures)
        changed |= {r for r in placements if self.placements.get(r) != placements[r]}
        self.placements, self.failures = placements, failures
        self.pending_status |= changed | set(failures) | set(placements)
        return build(list(self.records.values()), tenants, placements)

    def _recorded(
        self, placements: dict[str, Placement], tenants: dict[str, TenantRecord]
    ) -> tuple[list[L4Listener], list[L4Cluster]]:
        mode = self.settings.mode
        kept = {
            rid: p
            for rid, p in placements.items()
            if self._status_allocation(rid) == _allocation(p, mode)
        }
        self.placements, self.failures = kept, {}
        return build(list(self.records.values()), tenants, kept)

    def _status_allocation(self, rid: str) -> Any:
        status = self.status.get(rid, {})
        if self.settings.mode == "pool":
            return status.get("address") or None
        return (
            sorted(
                (x["port"], x["protocol"], x["listenerPort"])
                for x in status.get("listenerPorts", [])
            )
            or None
        )

    def _leading(self) -> None:
        if not self.writes:
            raise NotLeading

    async def _write_allocation(self, rid: str, placement: Placement | None) -> None:
        self._leading()
        rec = self.records[rid]
        status: LoadBalancerStatus = {}
        if placement is not None and self.settings.mode == "pool":
            status["address"] = placement.address
        elif placement is not None:
            status["listenerPorts"] = [
                ListenerPort(port=p, protocol="UDP" if proto == "UDP" else "TCP", listenerPort=lp)
                for p, proto, lp in placement.ports
            ]
        # A field this manager no longer applies is removed: that is how an allocation is freed.
        status["portsSummary"] = ", ".join(
            f"{p}/{proto}" for p, proto, _ in (placement.ports if placement else ())
        )
        written = await self.mgmt.apply(
            LOADBALANCERS,
            status_object(LOADBALANCER.kind, rec.tenant, rec.name, status),
            subresource="status",
            field_manager=ALLOCATION_MANAGER,
        )
        self.status[rid] = parse.lb_status(written.get("status"))
        log.info("load balancer %s: allocated %s", rid, _allocation(placement, self.settings.mode))

    async def _ensure_management_service(self, rid: str, placement: Placement) -> None:
        self._leading()
        rec = self.records[rid]
        want = management_service(rec, placement, self.settings)
        have = self.mgmt_services.get(rid)
        if have is not None and _same_ports(have, want):
            return
        self.mgmt_services[rid] = await self.mgmt.apply(SERVICES, want)

    async def _collect_management_services(self) -> None:
        for rid in [r for r in self.mgmt_services if r not in self.records]:
            self._leading()
            svc = self.mgmt_services.get(rid)  # its DELETED event may have come meanwhile
            if svc is None:
                continue
            meta = svc["metadata"]
            await self.mgmt.delete(SERVICES, meta["name"], meta["namespace"])
            self.mgmt_services.pop(rid, None)  # its DELETED event may have come first

    # ---- status after Envoy applied ----------------------------------------------------------

    def ingress_of(self, rid: str) -> list[LoadBalancerIngress]:
        placement = self.placements.get(rid)
        if placement is None:
            return []
        if self.settings.mode == "pool":
            return [{"ip": placement.address}]
        svc = self.mgmt_services.get(rid) or {}
        lb = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        out: list[LoadBalancerIngress] = []
        for i in lb:
            entry: LoadBalancerIngress = {}
            if i.get("ip"):
                entry["ip"] = str(i["ip"])
            if i.get("hostname"):
                entry["hostname"] = str(i["hostname"])
            out.append(entry)
        return out

    def report(self, rid: str, applied: bool, dns: DNSState | None = None) -> Report | None:
        rec = self.records.get(rid)
        if rec is None:
            return None
        awaiting = management_service_name(rec) if self.settings.mode == "service" else None
        failure = self.failures.get(rid)
        return lb_report(rec, self.ingress_of(rid), failure, awaiting, applied, dns)


def _reported(status: Any) -> Any:
    """What the status reporter writes of a LoadBalancer record's status: all but the
    allocation, which the allocator writes."""
    if not isinstance(status, dict):
        return status
    return {k: v for k, v in status.items() if k not in parse.ALLOCATION_FIELDS}


def _allocation(placement: Placement | None, mode: str) -> Any:
    if placement is None:
        return None
    if mode == "pool":
        return placement.address
    return sorted(placement.ports)


def _same_ports(have: Obj, want: Obj) -> bool:
    def shape(svc: Obj) -> list[tuple[Any, ...]]:
        return sorted(
            (p.get("port"), p.get("protocol", "TCP"), p.get("targetPort"))
            for p in (svc.get("spec") or {}).get("ports") or []
        )

    return shape(have) == shape(want) and (have.get("spec") or {}).get("selector") == (
        want.get("spec") or {}
    ).get("selector")
