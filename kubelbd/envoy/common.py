"""Pieces every Envoy resource kubelbd renders is built from."""

from __future__ import annotations

from typing import Any

from .settings import Settings

Resource = dict[str, Any]


def config_source(path: str) -> Resource:
    """A file subscription: Envoy watches the file and applies each new version."""
    return {"resource_api_version": "V3", "path_config_source": {"path": path}}


def socket_address(address: str, port: int, protocol: str = "TCP") -> Resource:
    out: Resource = {"address": address, "port_value": port}
    if protocol == "UDP":
        out["protocol"] = "UDP"
    return {"socket_address": out}


def health_check(settings: Settings) -> Resource:
    """Active TCP checks of tenant nodes: a node that stops answering leaves rotation."""
    return {
        "timeout": "1s",
        "interval": settings.health_check_interval,
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        "tcp_health_check": {},
    }
