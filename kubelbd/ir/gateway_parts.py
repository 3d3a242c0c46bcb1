"""The Gateway model built one tenant at a time (`ir.gateway.build` is the model itself):
what the data plane calls on every change of a Gateway or of a route attached to one, so
that a change on one tenant's Gateway rebuilds that tenant's part only. Pure.

Tenants' Gateways share no listener (each has its own address, or its own ports), and a
route attaches to its own tenant's Gateways only, so the parts are independent and their
merge is what one build of them all gives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from ..records.types import LBRecord, RouteRecord, TenantRecord
from .gateway import GatewayIR, build, forget_compiled
from .l4 import Placement
from .tls import CertificateData

#: a tenant's part of the Gateway model, and what it was built from
Part = tuple[tuple[Any, ...], GatewayIR]


def build_by_tenant(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    routes: Sequence[RouteRecord],
    certificates: Mapping[str, CertificateData],
    certificates_version: int,
    now: dt.datetime,
    tenants: Mapping[str, TenantRecord],
    parts: dict[str, Part],
) -> GatewayIR:
    """What `build` returns, built one tenant at a time: a tenant's part is built again only
    when something it is built from changed (a Gateway or route record replaced, since the
    data plane replaces a record when it changes and never changes one; a placement, its
    node addresses, the certificates, the minute certificates are checked at). `parts` is
    the caller's, kept across calls."""
    by_tenant: dict[str, tuple[dict[str, LBRecord], list[RouteRecord]]] = {}
    for gid, gw in gateways.items():
        by_tenant.setdefault(gw.tenant, ({}, []))[0][gid] = gw
    for route in routes:
        by_tenant.setdefault(route.tenant, ({}, []))[1].append(route)
    minute = now.replace(second=0, microsecond=0)
    out = GatewayIR()
    # Sorted as a build sorts Gateway ids (`<tenant>/<record>`): the parts' listeners then
    # come in the order one build of them all gives.
    for tenant in sorted(by_tenant, key=lambda t: f"{t}/"):
        gws, rts = by_tenant[tenant]
        ids = sorted(gws)
        inputs = (
            tuple(gws[g] for g in ids), tuple(placements.get(g) for g in ids), tuple(rts),
            tenants.get(tenant), certificates_version, minute,
        )  # fmt: skip
        held = parts.get(tenant)
        if held is None or not _same_inputs(held[0], inputs):
            held = parts[tenant] = (
                inputs,
                build(gws, placements, rts, certificates, now, tenants, prune=False),
            )
        _merge(out, held[1])
    for gone in set(parts) - set(by_tenant):
        del parts[gone]
    out.l4_clusters.sort(key=lambda c: c.name)
    forget_compiled(routes)
    return out


def _same_inputs(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Records by identity (replaced when they change), the rest by value."""
    records_a, records_b = (a[0], a[2]), (b[0], b[2])
    return all(
        len(x) == len(y) and all(p is q for p, q in zip(x, y, strict=True))
        for x, y in zip(records_a, records_b, strict=True)
    ) and (a[1], a[3], a[4], a[5]) == (b[1], b[3], b[4], b[5])


def _merge(out: GatewayIR, part: GatewayIR) -> None:
    out.listeners += part.listeners
    out.tls_listeners += part.tls_listeners
    out.l4_listeners += part.l4_listeners
    out.l4_clusters += part.l4_clusters
    out.secrets.update(part.secrets)
    out.unserved.update(part.unserved)
    out.attached.update(part.attached)
    out.served.update(part.served)
    out.hosts.update(part.hosts)
