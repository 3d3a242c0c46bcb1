"""What the Envoy stage needs from kubelbd's flags, and how its files and tables are named."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

FRONT = "http"
FRONT_TLS = "https"
DEFAULT_SHARD = "shard.default"


@dataclass(frozen=True)
class Settings:
    """What the renderer needs from kubelbd's flags."""

    config_dir: str
    http_address: str = "0.0.0.0"
    http_port: int = 8080
    https_address: str = "0.0.0.0"
    https_port: int = 0  # 0: no HTTPS listener
    https_redirect_port: int = 443  # where HTTP→HTTPS redirects point
    shards: int = 16
    route_timeout: str = "60s"
    health_check_interval: str = "2s"
    #: How long a cluster no route uses stays in Envoy (see Renderer.update).
    cluster_grace: float = 1.0
    #: Gateway filter chains whose routes are a route table file of their own (the largest;
    #: each file costs Envoy an inotify instance), at most per tenant, and the routes a chain
    #: needs for one
    gateway_tables: int = 16
    gateway_tables_per_tenant: int = 4
    gateway_table_routes: int = 64


def shard_of(host: str, shards: int) -> str:
    """Stable (not Python's salted hash): the same host lands in the same file across restarts."""
    if host == "":
        return DEFAULT_SHARD
    return f"shard.{zlib.crc32(host.encode()) % shards}"


def rds_file(name: str) -> str:
    """The route table file of one listener, relative to the config directory."""
    return f"rds/{name}.pb"


def rds_path(settings: Settings, name: str) -> str:
    """The same file as Envoy opens it."""
    return f"{settings.config_dir}/{rds_file(name)}"


def gateway_table_name(chain: str) -> str:
    """The route table (and file) of a Gateway filter chain whose routes are a file: named
    after the chain alone (the same across restarts, never another chain's), by kubelbd
    (a stat name carries it, and Envoy's applied versions are read from stat names: a
    tenant's `.rds.` in one would misread them)."""
    return "gateway." + hashlib.sha256(chain.encode()).hexdigest()[:16]


def shard_names(settings: Settings) -> list[str]:
    return [DEFAULT_SHARD] + [f"shard.{k}" for k in range(settings.shards)]


#: kubelbd's secret server, in the config directory (envoy/bootstrap.yaml names it)
ADS_SOCKET = "ads.sock"
