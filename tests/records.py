"""Records for unit tests, built the way the data plane reads them (checked by records.parse)."""

from __future__ import annotations

import base64
from typing import Any

from kubelbd.objects import Obj
from kubelbd.records import parse
from kubelbd.records.names import ROUTE, TLS_LABEL, TLS_SOURCE_LABEL, labels, namespace_of
from kubelbd.records.objects import record_object, tenant_object
from kubelbd.records.types import RouteRecord


def route(
    tenant: str,
    name: str,
    rules: list[Any],
    created: str = "2026-01-01T00:00:00Z",
    generation: int = 1,
    **extra: Any,
) -> RouteRecord:
    """Route `name` (`<namespace>.<ingress>`) of `tenant`, from an Ingress in that namespace."""
    namespace, _, ingress = name.partition(".")
    raw = {
        "source": {
            "kind": "Ingress",
            "namespace": namespace,
            "name": ingress,
            "uid": f"uid-{tenant}-{name}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "rules": rules,
        **extra,
    }
    # Stored by the management cluster when the tenant object was made, in these tests.
    return RouteRecord(tenant, name, parse.route_spec(raw), generation, created)


def host_route(tenant: str, name: str, node_port: int, host: str = "") -> RouteRecord:
    """Route `default.<name>` of `tenant`: `host` (`<name>.example.com` unless given),
    everything to one backend at `node_port`."""
    backend = {"service": f"svc{node_port}", "port": "80", "nodePort": node_port}
    rule = {
        "host": host or f"{name}.example.com",
        "paths": [{"path": "/", "pathType": "Prefix", "backends": [backend]}],
    }
    return route(tenant, f"default.{name}", [rule])


# ---- records as the management cluster stores them (for the operator's overview) ----------


def condition(
    type_: str, status: str, reason: str, message: str = "", since: str = "2026-01-01T00:00:00Z"
) -> Obj:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since}  # fmt: skip


def stored_route(record: RouteRecord, hosts: str = "", *conds: Obj) -> Obj:
    """`record` as stored, with the status the data plane wrote (none without `conds`)."""
    obj = record_object(ROUTE.kind, record.tenant, record.name, record.spec)
    obj["metadata"]["creationTimestamp"] = record.recorded
    if conds or hosts:
        obj["status"] = {"hosts": hosts, "conditions": list(conds)}
    return obj


def stored_tenant(name: str, *conds: Obj, addresses: tuple[str, ...] = ()) -> Obj:
    obj = tenant_object(name)
    obj["status"] = {"conditions": list(conds), "lastError": "",
                     "nodeAddresses": list(addresses)}  # fmt: skip
    return obj


def healthy_tenant(name: str, *addresses: str) -> Obj:
    return stored_tenant(
        name, *(condition(t, "True", t) for t in ("Connected", "Synced", "NodesAccepted",
                                                  "PolicyAccepted")),
        addresses=addresses,
    )  # fmt: skip


def tls_copy(tenant: str, name: str, cert_pem: bytes, source: str = "tenant") -> Obj:
    """A certificate Secret in `tenant-<tenant>` as the data plane reads it (key omitted)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace_of(tenant),
                     "labels": labels(tenant) | {TLS_LABEL: "true", TLS_SOURCE_LABEL: source}},
        "data": {"tls.crt": base64.b64encode(cert_pem).decode()},
    }  # fmt: skip
