"""The data plane for Layer 4: LoadBalancer records → allocations → listeners → status.

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
from dataclasses import dataclass
from typing import Any, Protocol

from . import allocator, conditions, l4ir, records
from .informer import Informer
from .ir import TenantRecord
from .kube import SERVICES, ApiError, Kube, Obj

log = logging.getLogger(__name__)

STATUS_MANAGER = "kubelbd-dataplane"
L4_LABEL = "kubelb.io/l4-record"


@dataclass(frozen=True)
class L4Settings:
    mode: str = "pool"  # or "service"
    pool: str = ""
    listen_address: str = "0.0.0.0"
    port_range: tuple[int, int] = (20000, 29999)
    envoy_selector: tuple[tuple[str, str], ...] = (("app", "kubelbd"),)


class ServiceHandle(Protocol):
    async def set_service_address(
        self, namespace: str, name: str, ingress: list[dict[str, Any]]
    ) -> None: ...
    def service(self, namespace: str, name: str) -> Obj | None: ...
    async def event(
        self, obj: Obj, type_: str, reason: str, message: str, kind: str = ...
    ) -> None: ...


def management_service_name(rec: l4ir.LBRecord) -> str:
    """A DNS label, readable where possible: lb-<namespace>-<name>, hashed when too long."""
    base = f"lb-{rec.namespace}-{rec.service}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(rec.id.encode()).hexdigest()[:8]
    return f"{base[:54]}-{digest}"


def management_service(rec: l4ir.LBRecord, placement: l4ir.Placement, settings: L4Settings) -> Obj:
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
            "namespace": records.namespace_of(rec.tenant),
            "labels": records.labels(rec.tenant) | {L4_LABEL: rec.name},
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": dict(settings.envoy_selector),
            "ports": ports,
        },
    }


class LoadBalancers:
    def __init__(self, mgmt: Kube, settings: L4Settings) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self.records: dict[str, l4ir.LBRecord] = {}
        self.status: dict[str, Obj] = {}  # record id -> its status as last seen or written
        self.placements: dict[str, l4ir.Placement] = {}
        self.failures: dict[str, allocator.AllocationError] = {}
        self.mgmt_services: dict[str, Obj] = {}  # record id -> management Service (service mode)
        self.dirty = True
        self.pending_status: set[str] = set()
        self._seen: dict[str, tuple[str, int]] = {}
        self._reported: dict[str, Any] = {}
        self.wake: Any = None  # set by the data plane: a callable that wakes its loop

    # ---- intake ------------------------------------------------------------------------------

    def upsert(self, obj: Obj) -> None:
        rec = records.lb_record(obj)
        if rec is None:
            return
        if obj.get("status"):
            self.status[rec.id] = obj["status"]
        uid = obj["metadata"].get("uid", "")
        if self._seen.get(rec.id) == (uid, rec.generation):
            return
        self._seen[rec.id] = (uid, rec.generation)
        self.records[rec.id] = rec
        self._changed()

    def delete(self, tenant: str, name: str, uid: str | None = None) -> None:
        rid = f"{tenant}/{name}"
        seen = self._seen.get(rid)
        if uid is not None and seen is not None and seen[0] != uid:
            return
        self._seen.pop(rid, None)
        self.records.pop(rid, None)
        self.status.pop(rid, None)
        self._reported.pop(rid, None)
        self._changed()

    def on_event(self, kind: str, obj: Obj) -> None:
        records.dispatch(kind, obj, self.upsert, self.delete)

    def on_management_service(self, kind: str, obj: Obj) -> None:
        """Service mode: the management cluster's LB wrote (or changed) an address."""
        tenant = records.tenant_of(obj)
        name = (obj["metadata"].get("labels") or {}).get(L4_LABEL)
        if tenant is None or name is None:
            return
        rid = f"{tenant}/{name}"
        if kind == "DELETED":
            self.mgmt_services.pop(rid, None)
            self._changed()
            return
        self.mgmt_services[rid] = obj
        self.pending_status.add(rid)
        if self.wake is not None:
            self.wake()

    def _changed(self) -> None:
        self.dirty = True
        if self.wake is not None:
            self.wake()

    def informers(self) -> list[Informer]:
        selector = f"{records.MANAGED_BY}={records.MANAGER}"
        out = [Informer(self.mgmt, records.LOADBALANCERS, self.on_event, label_selector=selector)]
        if self.settings.mode == "service":
            out.append(
                Informer(
                    self.mgmt,
                    SERVICES,
                    self.on_management_service,
                    label_selector=f"{selector},{L4_LABEL}",
                )
            )
        return out

    # ---- allocation and rendering ------------------------------------------------------------

    def _allocate(self) -> tuple[dict[str, l4ir.Placement], dict[str, allocator.AllocationError]]:
        recs = sorted(self.records.values(), key=lambda r: r.age)
        placements: dict[str, l4ir.Placement] = {}
        if self.settings.mode == "pool":
            if not self.settings.pool:
                err = allocator.AllocationError("NoPool", "kubelbd has no --l4-address-pool")
                return {}, {r.id: err for r in recs}
            result = allocator.allocate_addresses(
                (
                    allocator.AddressRequest(
                        r.id,
                        r.age,
                        r.spec.get("requestedAddress") or None,
                        (self.status.get(r.id) or {}).get("address") or None,
                    )
                    for r in recs
                ),
                self.settings.pool,
            )
            for r in recs:
                address = result.assigned.get(r.id)
                if address is not None:
                    ports = tuple(
                        (p["port"], p["protocol"], p["port"]) for p in r.spec.get("ports") or []
                    )
                    placements[r.id] = l4ir.Placement(address, ports)
            return placements, result.failed
        first, last = self.settings.port_range
        presult = allocator.allocate_ports(
            (
                allocator.PortRequest(
                    r.id,
                    r.age,
                    tuple((p["port"], p["protocol"]) for p in r.spec.get("ports") or []),
                    tuple(
                        (x["port"], x["protocol"], x["listenerPort"])
                        for x in (self.status.get(r.id) or {}).get("listenerPorts") or []
                    ),
                )
                for r in recs
            ),
            first,
            last,
        )
        for r in recs:
            got = presult.assigned.get(r.id)
            if got is not None:
                ports = tuple(sorted((p, proto, lp) for (p, proto), lp in got.items()))
                placements[r.id] = l4ir.Placement(self.settings.listen_address, ports)
        return placements, presult.failed

    async def reconcile(
        self, tenants: dict[str, TenantRecord]
    ) -> tuple[list[l4ir.L4Listener], list[l4ir.L4Cluster]]:
        """Allocate, persist allocations, then return what Envoy should serve."""
        self.dirty = False
        placements, failures = self._allocate()
        unwritten: set[str] = set()
        for rid, placement in placements.items():
            try:
                if self._status_allocation(rid) != _allocation(placement, self.settings.mode):
                    await self._write_allocation(rid, placement)
            except (ApiError, ConnectionError) as e:
                # Not served until its allocation is durable; the others go on regardless.
                log.warning("load balancer %s: cannot record its allocation: %s", rid, e)
                unwritten.add(rid)
                continue
            if self.settings.mode == "service":
                try:
                    await self._ensure_management_service(rid, placement)
                except (ApiError, ConnectionError) as e:
                    log.warning("load balancer %s: management Service: %s", rid, e)
                    self.dirty = True
        for rid, error in failures.items():
            status = self.status.get(rid) or {}
            if rid not in placements and (status.get("address") or status.get("listenerPorts")):
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
            placements = {r: p for r, p in placements.items() if r not in unwritten}
        changed = (set(placements) ^ set(self.placements)) | set(failures) ^ set(self.failures)
        changed |= {r for r in placements if self.placements.get(r) != placements[r]}
        self.placements, self.failures = placements, failures
        self.pending_status |= changed | set(failures) | set(placements)
        return l4ir.build(list(self.records.values()), tenants, placements)

    def _status_allocation(self, rid: str) -> Any:
        status = self.status.get(rid) or {}
        if self.settings.mode == "pool":
            return status.get("address") or None
        return (
            sorted(
                (x["port"], x["protocol"], x["listenerPort"])
                for x in status.get("listenerPorts") or []
            )
            or None
        )

    async def _write_allocation(self, rid: str, placement: l4ir.Placement | None) -> None:
        rec = self.records[rid]
        status: Obj = {}
        if placement is not None and self.settings.mode == "pool":
            status["address"] = placement.address
        elif placement is not None:
            status["listenerPorts"] = [
                {"port": p, "protocol": proto, "listenerPort": lp}
                for p, proto, lp in placement.ports
            ]
        # A field this manager no longer applies is removed: that is how an allocation is freed.
        summary = ", ".join(
            f"{p}/{proto}" for p, proto, _ in (placement.ports if placement else ())
        )
        status["portsSummary"] = summary
        written = await self.mgmt.apply(
            records.LOADBALANCERS,
            {
                "apiVersion": records.API_VERSION,
                "kind": "LoadBalancer",
                "metadata": {"name": rec.name, "namespace": records.namespace_of(rec.tenant)},
                "status": status,
            },
            subresource="status",
            field_manager=STATUS_MANAGER,
        )
        self.status[rid] = written.get("status") or {}
        log.info("load balancer %s: allocated %s", rid, _allocation(placement, self.settings.mode))

    async def _ensure_management_service(self, rid: str, placement: l4ir.Placement) -> None:
        rec = self.records[rid]
        want = management_service(rec, placement, self.settings)
        have = self.mgmt_services.get(rid)
        if have is not None and _same_ports(have, want):
            return
        self.mgmt_services[rid] = await self.mgmt.apply(SERVICES, want)

    async def _collect_management_services(self) -> None:
        for rid in [r for r in self.mgmt_services if r not in self.records]:
            meta = self.mgmt_services[rid]["metadata"]
            await self.mgmt.delete(SERVICES, meta["name"], meta["namespace"])
            self.mgmt_services.pop(rid, None)  # its DELETED event may have come first

    # ---- status after Envoy applied ----------------------------------------------------------

    def ingress_of(self, rid: str) -> list[dict[str, Any]]:
        placement = self.placements.get(rid)
        if placement is None:
            return []
        if self.settings.mode == "pool":
            return [{"ip": placement.address}]
        svc = self.mgmt_services.get(rid) or {}
        lb = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return [{k: v for k, v in i.items() if k in ("ip", "hostname")} for i in lb]

    async def report(self, rid: str, tenant: ServiceHandle | None) -> None:
        rec = self.records.get(rid)
        if rec is None:
            return
        error = self.failures.get(rid)
        ingress = self.ingress_of(rid)
        fingerprint = (rec.generation, error.reason if error else None, str(ingress))
        if self._reported.get(rid) == fingerprint:
            return
        if error is not None:
            cond = conditions.condition(
                "Programmed", False, error.reason, error.message, rec.generation
            )
        elif self.settings.mode == "service" and not ingress:
            cond = conditions.condition(
                "Programmed", False, "AwaitingAddress",
                "Envoy listens; waiting for the management cluster's load balancer to assign"
                f" an address to Service {management_service_name(rec)}",
                rec.generation,
            )  # fmt: skip
        else:
            where = ", ".join(i.get("ip") or i.get("hostname", "") for i in ingress)
            cond = conditions.condition("Programmed", True, "Programmed", f"serving at {where}",
                                        rec.generation)  # fmt: skip
        await self.mgmt.apply(
            records.LOADBALANCERS,
            {
                "apiVersion": records.API_VERSION,
                "kind": "LoadBalancer",
                "metadata": {"name": rec.name, "namespace": records.namespace_of(rec.tenant)},
                "status": {
                    "conditions": [cond],
                    "ingress": ingress,
                    "observedGeneration": rec.generation,
                },
            },
            subresource="status",
            field_manager=STATUS_MANAGER + "-report",
        )
        if tenant is not None:
            await tenant.set_service_address(rec.namespace, rec.service, ingress)
            if error is not None:
                svc = tenant.service(rec.namespace, rec.service)
                if svc is not None:
                    await tenant.event(svc, "Warning", error.reason, error.message, "Service")
        self._reported[rid] = fingerprint


def _allocation(placement: l4ir.Placement | None, mode: str) -> Any:
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
