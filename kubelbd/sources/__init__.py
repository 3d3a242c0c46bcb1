"""Tenant object kinds kubelbd serves, one module each; pure (see base.Source).

To add a kind: write `sources/<kind>.py` with a class that has the attributes and methods of
`base.Source`, and list an instance below. The tenant side watches, indexes and writes for
every source in this tuple alike.
"""

from __future__ import annotations

from collections.abc import Callable

from ..objects import CONFIGMAPS, INGRESSES, NAMESPACES, Obj, Resource
from .backendtls import BACKEND_TLS_POLICIES, kept_config_map
from .backendtlspolicy import BackendTLSPolicySource
from .base import References, Source, TenantView
from .gateway import GatewaySource
from .gatewayapi import (
    GATEWAY_CLASSES,
    GATEWAYS,
    GRPCROUTES,
    HTTPROUTES,
    REFERENCE_GRANTS,
    TCPROUTES,
    TLSROUTES,
    UDPROUTES,
)
from .grpcroute import GRPCRouteSource
from .httproute import HTTPRouteSource
from .ingress import IngressSource
from .l4routes import TCPRouteSource, TLSRouteSource, UDPRouteSource
from .loadbalancer import LoadBalancerServiceSource

SOURCES: tuple[Source, ...] = (
    IngressSource(),
    LoadBalancerServiceSource(),
    GatewaySource(),
    HTTPRouteSource(),
    GRPCRouteSource(),
    TLSRouteSource(),
    TCPRouteSource(),
    UDPRouteSource(),
    BackendTLSPolicySource(),
)

#: kinds a tenant's registration may not let kubelbd read yet (registered by a kubelbd from
#: before Gateway API): refused, they count as absent, the rest of the tenant is served, and
#: its health names the refusal until `kubelbd register` is run again
OPTIONAL: frozenset[Resource] = frozenset(
    {
        GATEWAYS,
        HTTPROUTES,
        GRPCROUTES,
        TLSROUTES,
        TCPROUTES,
        UDPROUTES,
        GATEWAY_CLASSES,
        REFERENCE_GRANTS,
        BACKEND_TLS_POLICIES,
        CONFIGMAPS,
        NAMESPACES,
    }
)

#: what the caches keep of an object of these kinds (the rest of it is never read)
KEPT: dict[Resource, Callable[[Obj], Obj]] = {CONFIGMAPS: kept_config_map}

#: the route kinds, which a tenant may have by the thousand and whose objects are each read
#: only when translated or their status written: their caches keep each one packed as bytes
#: (kube/packed.py), a sixth of its size as dicts
PACKED: frozenset[Resource] = frozenset(
    {INGRESSES, HTTPROUTES, GRPCROUTES, TLSROUTES, TCPROUTES, UDPROUTES}
)

__all__ = ["KEPT", "OPTIONAL", "PACKED", "SOURCES", "References", "Source", "TenantView"]
