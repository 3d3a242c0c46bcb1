"""Tenant object kinds kubelbd serves, one module each; pure (see base.Source).

To add a kind: write `sources/<kind>.py` with a class that has the attributes and methods of
`base.Source`, and list an instance below. The tenant side watches, indexes and writes for
every source in this tuple alike.
"""

from __future__ import annotations

from .base import References, Source, TenantView
from .gateway import GatewaySource
from .httproute import HTTPRouteSource
from .ingress import IngressSource
from .loadbalancer import LoadBalancerServiceSource

SOURCES: tuple[Source, ...] = (
    IngressSource(),
    LoadBalancerServiceSource(),
    GatewaySource(),
    HTTPRouteSource(),
)

__all__ = ["SOURCES", "References", "Source", "TenantView"]
