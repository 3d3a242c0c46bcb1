"""Where everything in the local fleet lives: clusters, ports, addresses, files.

One function of (tenant count, base port) so that every tool (the CLI, the node emulator, the
tests, the benchmarks) derives the same numbers instead of passing them around.

Addresses, all on loopback:
- cluster index i: mgmt is 0, tenants are 1..N (alpha, beta, gamma, ...);
- node k (1..3) of cluster i has InternalIP 127.0.i.k;
- pods of that node get API-visible IPs 10.(100+i).k.x and really listen on 127.(100+i).k.x:
  the API rejects loopback endpoint addresses, so the emulated pod network maps 10/8 onto 127/8
  (see `pod_listen_ip`); nothing ever sends a packet to 10/8.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

TENANT_NAMES = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon",
)  # fmt: skip
NODES_PER_CLUSTER = 3
DEFAULT_BASE_PORT = 16400
SERVICE_CIDR = "10.96.0.0/16"
NODE_PORT_RANGE = "30000-32767"

ROOT = Path(__file__).resolve().parents[2]


def tenant_name(i: int) -> str:
    return TENANT_NAMES[i - 1] if i <= len(TENANT_NAMES) else f"tenant{i}"


def pod_listen_ip(pod_ip: str) -> str:
    """The loopback address an emulated pod really listens on, for its API-visible IP."""
    octets = pod_ip.split(".")
    if octets[0] != "10":
        raise ValueError(f"{pod_ip} is not an emulated pod IP")
    return ".".join(["127", *octets[1:]])


@dataclass(frozen=True)
class Node:
    cluster: str
    name: str
    ip: str
    pod_cidr: str  # API-visible


@dataclass(frozen=True)
class Cluster:
    name: str
    index: int
    apiserver_port: int
    nodes: tuple[Node, ...] = field(default=())

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def is_tenant(self) -> bool:
        return self.index > 0


@dataclass(frozen=True)
class Replica:
    """One kubelbd with its Envoy: what a pod of the Deployment is. Replica 1 keeps the
    ports a one-replica fleet always had; the others get their own."""

    index: int
    http_port: int
    https_port: int
    admin_port: int
    health_port: int

    @property
    def name(self) -> str:
        """Its fleet component (and Lease identity): kubelbd, kubelbd-2, ..."""
        return "kubelbd" if self.index == 1 else f"kubelbd-{self.index}"

    @property
    def envoy(self) -> str:
        return "envoy" if self.index == 1 else f"envoy-{self.index}"


MAX_REPLICAS = 5


@dataclass(frozen=True)
class Layout:
    tenants: int
    base_port: int
    dir: Path
    replicas: int = 1

    @property
    def replica_set(self) -> tuple[Replica, ...]:
        first = Replica(
            1, self.envoy_http_port, self.envoy_https_port, self.envoy_admin_port,
            self.kubelbd_health_port,
        )  # fmt: skip
        rest = (
            Replica(r, *(self.base_port + 200 + 10 * (r - 2) + k for k in range(4)))
            for r in range(2, self.replicas + 1)
        )
        return (first, *rest)

    @property
    def etcd_client_port(self) -> int:
        return self.base_port

    @property
    def etcd_peer_port(self) -> int:
        return self.base_port + 1

    @property
    def envoy_http_port(self) -> int:
        return self.base_port + 80

    @property
    def envoy_https_port(self) -> int:
        return self.base_port + 81

    @property
    def pebble_port(self) -> int:
        return self.base_port + 70

    @property
    def pebble_management_port(self) -> int:
        return self.base_port + 71

    @property
    def dns_port(self) -> int:
        """The fleet's authoritative DNS server (BIND), UDP and TCP."""
        return self.base_port + 74

    @property
    def kubelet_port(self) -> int:
        """Every emulated node's kubelet endpoint (pod logs), on the node's own IP. From the
        base port, not the kubelet's 10250: node IPs depend only on the cluster index, so a
        second fleet (another base port) would otherwise take the same address and port."""
        return self.base_port + 75

    @property
    def envoy_admin_port(self) -> int:
        return self.base_port + 90

    @property
    def kubelbd_health_port(self) -> int:
        return self.base_port + 91

    @property
    def l4_pool(self) -> str:
        return "127.0.200.0/24"

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        out = [Cluster("mgmt", 0, self.base_port + 10)]
        for i in range(1, self.tenants + 1):
            name = tenant_name(i)
            nodes = tuple(
                Node(name, f"node-{k}", f"127.0.{i}.{k}", f"10.{100 + i}.{k}.0/24")
                for k in range(1, NODES_PER_CLUSTER + 1)
            )
            out.append(Cluster(name, i, self.base_port + 10 + i, nodes))
        return tuple(out)

    @property
    def tenant_clusters(self) -> tuple[Cluster, ...]:
        return tuple(c for c in self.clusters if c.is_tenant)

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(f"no cluster {name!r} in this fleet (have: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clusters]

    def kubeconfig(self, cluster: str) -> Path:
        return self.dir / "kubeconfig" / f"{cluster}.yaml"

    def pki(self, cluster: str) -> Path:
        return self.dir / "pki" / cluster

    @property
    def env_file(self) -> Path:
        return self.dir / "fleet.env"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"


def validate_replicas(n: int) -> None:
    if not 1 <= n <= MAX_REPLICAS:
        raise ValueError(f"--replicas must be between 1 and {MAX_REPLICAS}, got {n}")


def validate_tenants(n: int) -> None:
    if not 1 <= n <= 50:
        raise ValueError(f"--tenants must be between 1 and 50, got {n}")
    # 127.(100+i) must stay a valid octet.
    ipaddress.ip_address(f"127.{100 + n}.0.1")


def fleet_dir() -> Path:
    return Path(os.environ.get("KUBELBD_FLEET_DIR", ROOT / ".fleet"))
