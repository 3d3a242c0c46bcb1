"""What the overview is computed from: the management cluster's objects as listed, and
Envoy's admin answers, untouched (whoever loads them does no interpretation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..objects import Obj


@dataclass(frozen=True)
class Snapshot:
    tenants: list[Obj] = field(default_factory=list)  # Tenant records
    routes: list[Obj] = field(default_factory=list)  # Route records
    load_balancers: list[Obj] = field(default_factory=list)  # LoadBalancer records
    #: TLS Secrets labelled kubelb.io/tls=true (tls.crt is all that is read of them)
    certificates: list[Obj] = field(default_factory=list)
    #: whether Envoy's admin was asked at all (the CLI may be run without one)
    envoy_asked: bool = False
    #: the `configs` of Envoy's /config_dump for route tables and listeners; None when Envoy
    #: could not be reached
    envoy_configs: list[Obj] | None = None
