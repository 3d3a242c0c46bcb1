"""Node addresses across tenants: one address, one tenant.

Envoy reaches a tenant's Services at its node addresses. A tenant that listed another
tenant's node address as one of its own would have Envoy carry its hosts' traffic into the
other tenant's NodePorts, so an address two tenants list belongs to the one kubelbd saw with
it first (the `since` the tenant side records in the management cluster, never a tenant's
own timestamps); the other loses it, and says so in its status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..records.types import TenantRecord, fixed_width

NEVER = "9999"


def exclusive(tenants: Iterable[TenantRecord]) -> tuple[list[TenantRecord], dict[str, str]]:
    """The tenants with every address held by one of them only; and for each address taken
    away, `tenant/address` -> the tenant that keeps it."""
    tenants = sorted(tenants, key=lambda t: t.name)
    holder: dict[str, tuple[str, str]] = {}  # address -> (since, tenant)
    for t in tenants:
        since = dict(t.claims)
        for a in t.addresses:
            claim = (fixed_width(since.get(a) or NEVER), t.name)
            if a not in holder or claim < holder[a]:
                holder[a] = claim
    out, lost = [], {}
    for t in tenants:
        kept = tuple(a for a in t.addresses if holder[a][1] == t.name)
        for a in t.addresses:
            if holder[a][1] != t.name:
                lost[f"{t.name}/{a}"] = holder[a][1]
        out.append(t if kept == t.addresses else replace(t, addresses=kept))
    return out, lost
