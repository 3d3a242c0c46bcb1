"""Loading what the overview (kubelbd.overview) is computed from: the records and certificate
Secrets in the management cluster, and what Envoy's admin says it holds. Plain lists through
the project's API client; no informer, no cache: the operator asks rarely, and must see what
is stored now, not what this process last saw."""

from __future__ import annotations

from typing import Any

import anyio

from .envoy.admin import EnvoyAdmin
from .kube import ApiError, Kube
from .objects import SECRETS, Obj, Resource
from .overview.snapshot import Snapshot
from .records.names import LOADBALANCERS, ROUTES, TENANTS, TLS_LABEL, namespace_of

#: the admin resources the overview reads: route tables, the plain listener's scopes, listeners
ENVOY_RESOURCES = ("dynamic_route_configs", "dynamic_scoped_route_configs", "dynamic_listeners")


async def load_snapshot(
    mgmt: Kube, admin: EnvoyAdmin | None, tenant: str | None = None
) -> Snapshot:
    """Every tenant's records (only `tenant`'s when given), concurrently; Envoy's facts when
    `admin` is given. A list the API server refuses raises its ApiError (or ConnectionError)
    as it is, not inside an exception group, so callers can say what went wrong."""
    namespace = namespace_of(tenant) if tenant else None
    lists: dict[str, list[Obj]] = {}
    envoy: list[list[Obj] | None] = []
    errors: list[ApiError | ConnectionError] = []

    async def list_into(key: str, res: Resource, **params: Any) -> None:
        try:
            lists[key], _ = await mgmt.list(res, namespace, **params)
        except (ApiError, ConnectionError) as e:
            errors.append(e)

    async def dump(resource: str) -> None:
        assert admin is not None
        envoy.append(await admin.config_dump(resource))

    async with anyio.create_task_group() as tg:
        tg.start_soon(list_into, "tenants", TENANTS)
        tg.start_soon(list_into, "routes", ROUTES)
        tg.start_soon(list_into, "load_balancers", LOADBALANCERS)
        tg.start_soon(lambda: list_into("certificates", SECRETS, labelSelector=f"{TLS_LABEL}=true"))
        if admin is not None:
            for resource in ENVOY_RESOURCES:
                tg.start_soon(dump, resource)
    if errors:
        raise errors[0]
    configs = None if any(d is None for d in envoy) else [c for d in envoy for c in d or []]
    return Snapshot(
        tenants=lists["tenants"],
        routes=lists["routes"],
        load_balancers=lists["load_balancers"],
        certificates=[without_key(s) for s in lists["certificates"]],
        envoy_asked=admin is not None,
        envoy_configs=configs,
    )


def without_key(secret: Obj) -> Obj:
    """A certificate Secret with its certificate only: the private key is never needed to say
    what a certificate is for and when it expires, so it is not kept a moment longer."""
    data = secret.get("data") or {}
    return {**secret, "data": {"tls.crt": data.get("tls.crt", "")}}
