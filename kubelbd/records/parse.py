"""Records read back from the API: checked against their types, and migrated.

Anything in the management cluster can be edited by someone with access to it, so a record
is checked against the TypedDicts of `types.py` before the data plane looks at it (pydantic
does the checking; a record that does not fit is refused with a message naming the field,
never half-used). Records written by an older kubelbd are migrated here, on the way in, so
a fleet upgraded in place keeps serving them until the tenant side rewrites them:

- before typed records, a Route path had one `backend`; now it has a list of `backends`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from ..objects import Obj
from .names import tenant_of
from .types import (
    LBRecord,
    LoadBalancerSpec,
    LoadBalancerStatus,
    RouteRecord,
    RouteSpec,
    TenantNodes,
    TenantRecord,
    TenantSpec,
)

T = TypeVar("T")

_ROUTE_SPEC = TypeAdapter(RouteSpec)
_LB_SPEC = TypeAdapter(LoadBalancerSpec)
_LB_STATUS = TypeAdapter(LoadBalancerStatus)
_TENANT_NODES = TypeAdapter(TenantNodes)
_TENANT_SPEC = TypeAdapter(TenantSpec)


class RecordError(ValueError):
    """A record that does not have the shape of its kind."""


def _check(adapter: TypeAdapter[T], value: Any, what: str) -> T:
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecordError(f"{what}: {where}: {first['msg']}") from e


def migrate_route_spec(raw: Any) -> Any:
    """A Route spec in today's shape (a copy where it had to change; `raw` is never mutated:
    it may be an informer's cached object)."""
    if not isinstance(raw, dict):
        return raw
    rules = raw.get("rules")
    old = isinstance(rules, list) and any(
        isinstance(p, dict) and "backend" in p and "backends" not in p
        for r in rules
        if isinstance(r, dict)
        for p in r.get("paths") or []
    )
    if not old:
        return raw
    out = copy.deepcopy(raw)
    for rule in out["rules"]:
        for p in rule.get("paths") or []:
            if isinstance(p, dict) and "backend" in p and "backends" not in p:
                p["backends"] = [p.pop("backend")]
    return out


def route_spec(raw: Any) -> RouteSpec:
    return _check(_ROUTE_SPEC, migrate_route_spec(raw), "spec")


def lb_spec(raw: Any) -> LoadBalancerSpec:
    return _check(_LB_SPEC, raw, "spec")


ALLOCATION_FIELDS = ("address", "listenerPorts", "portsSummary")


def lb_status(raw: Any) -> LoadBalancerStatus:
    """The allocation in a LoadBalancer's status (what the data plane reads back); fields
    that do not parse count as absent, and an allocation that does not is made anew."""
    if not isinstance(raw, dict):
        return {}
    allocation = {k: raw[k] for k in ALLOCATION_FIELDS if k in raw}
    try:
        return _check(_LB_STATUS, allocation, "status")
    except RecordError:
        return {}


def _record(obj: Obj, make: Callable[[str, str, Any, int, str], T]) -> T | None:
    tenant = tenant_of(obj)
    if tenant is None:
        return None
    meta = obj.get("metadata") or {}
    generation = meta.get("generation", 0)
    recorded = str(meta.get("creationTimestamp") or "")
    return make(tenant, str(meta.get("name", "")), obj.get("spec"), int(generation or 0), recorded)


def route_record(obj: Obj) -> RouteRecord | None:
    """The Route in `obj` (None: not a tenant's record); RecordError if it does not parse."""
    return _record(obj, lambda t, n, spec, g, r: RouteRecord(t, n, route_spec(spec), g, r))


def lb_record(obj: Obj) -> LBRecord | None:
    return _record(obj, lambda t, n, spec, g, r: LBRecord(t, n, lb_spec(spec), g, r))


def tenant_spec(raw: Any) -> TenantSpec:
    """The operator's policy in a Tenant record (records/policy.py applies it)."""
    return _check(_TENANT_SPEC, raw, "spec")


def tenant_nodes(obj: Obj) -> TenantNodes:
    """Where a tenant's nodes are: in the status since the spec became the operator's; a
    record of an older kubelbd has them in its spec (read until the status has them)."""
    status = obj.get("status") or {}
    if isinstance(status, dict) and "nodeAddresses" in status:
        raw = {k: status[k] for k in ("nodeAddressType", "nodeAddresses", "nodeAddressClaims")
               if k in status}  # fmt: skip
    else:
        spec = obj.get("spec") or {}
        raw = {k: spec[k] for k in ("nodeAddresses",) if isinstance(spec, dict) and k in spec}
    return _check(_TENANT_NODES, raw, "status")


def tenant_record(obj: Obj) -> TenantRecord | None:
    def make(tenant: str, _name: str, _spec: Any, _generation: int, _r: str) -> TenantRecord:
        nodes = tenant_nodes(obj)
        claims = tuple((c["address"], c["since"]) for c in nodes.get("nodeAddressClaims") or ())
        return TenantRecord(tenant, tuple(nodes.get("nodeAddresses") or ()), claims)

    return _record(obj, make)


def dispatch(
    kind: str,
    obj: Obj,
    upsert: Callable[[Obj], None],
    delete: Callable[[str, str, str | None], None],
) -> None:
    """Route a watch event on a record to upsert(obj) or delete(tenant, name, uid)."""
    if kind != "DELETED":
        upsert(obj)
        return
    tenant = tenant_of(obj)
    if tenant is not None:
        meta = obj["metadata"]
        delete(tenant, meta["name"], meta.get("uid"))
