"""The load balancer in the fleet: kubelbd (running Envoy as its child) on the mgmt cluster,
with every tenant cluster registered to it."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import dns
from .layout import ROOT, Cluster, Layout, Replica
from .nodeemu.echobasic import port_open
from .procs import Proc

if TYPE_CHECKING:
    from .fleet import Fleet

NAMESPACE = "kubelb"
KUBELBD = "kubelbd"


#: how long a replica's Envoy drains before it stops (the Deployment says 15 s: shorter here,
#: so that a test stopping Envoy does not wait long)
DRAIN_SECONDS = 3


def config_dir(layout: Layout, replica: int = 1) -> Path:
    """Envoy's config volume. Memory-backed, like the `emptyDir: {medium: Memory}` of the
    Deployment: the files are derived from the records, and fsync on tmpfs costs nothing,
    where on a busy disk it can wait tens of milliseconds for a journal commit. One per
    replica, as each pod has its own."""
    name = "envoy" if replica == 1 else f"envoy-{replica}"
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"kubelbd-fleet-{layout.base_port}" / name
    return layout.dir / name


def replica_of(fleet: Fleet, component: str) -> Replica | None:
    """The replica a component (kubelbd-2, envoy-2, ...) belongs to, if it is one of ours."""
    for r in fleet.layout.replica_set:
        if component in (r.name, r.envoy):
            return r
    return None


def ports(fleet: Fleet) -> dict[int, str]:
    lay = fleet.layout
    out: dict[int, str] = {}
    for r in lay.replica_set:
        out |= {
            r.http_port: f"Envoy HTTP listener ({r.name})",
            r.https_port: f"Envoy HTTPS listener ({r.name})",
            r.admin_port: f"Envoy admin ({r.name})",
            r.health_port: f"kubelbd health ({r.name})",
        }
    return out | {
        lay.pebble_port: "Pebble ACME server",
        lay.pebble_management_port: "Pebble management",
    }


#: Issued certificates live 45 s, so that renewal (at two thirds of the lifetime) happens
#: within a test.
ACME_CERT_SECONDS = 45


def build_pebble() -> Path:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-pebble")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def pebble_config(
    bin_dir: Path, port: int, management_port: int, http_port: int, tls_port: int
) -> dict[str, Any]:
    """Pebble's configuration: its API and management API on loopback, validating HTTP-01 at
    `http_port` (and TLS-ALPN-01 at `tls_port`) of the address a name resolves to."""
    return {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{management_port}",
            "certificate": str(bin_dir / "cert.pem"),
            "privateKey": str(bin_dir / "key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "keyAlgorithm": "ecdsa",
        }
    }


#: Pebble's environment: no random sleep before a validation, no nonce rejected on purpose.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}


def pebble_procs(fleet: Fleet, bin_dir: Path) -> list[Proc]:
    """Pebble (an ACME CA for tests), resolving every name through the fleet's BIND: a
    validation succeeds only for a name kubelbd really published (HTTP-01: the host's address;
    DNS-01: the `_acme-challenge` TXT), as with a real CA."""
    lay = fleet.layout
    conf_dir = lay.dir / "pebble"
    conf_dir.mkdir(parents=True, exist_ok=True)
    config = pebble_config(
        bin_dir, lay.pebble_port, lay.pebble_management_port, lay.envoy_http_port,
        lay.envoy_https_port,
    )  # fmt: skip
    config["pebble"]["profiles"] = {
        "default": {"description": "fleet", "validityPeriod": ACME_CERT_SECONDS}
    }
    (conf_dir / "pebble.json").write_text(json.dumps(config, indent=2))
    return [
        Proc(
            "pebble",
            [str(bin_dir / "pebble"), f"-config={conf_dir / 'pebble.json'}",
             f"-dnsserver=127.0.0.1:{lay.dns_port}"],
            str(lay.logs / "pebble.log"),
            # Always reuse a valid authorization for a renewal, as Let's Encrypt does for 30
            # days (Pebble's default is a coin toss, which made the renewal test flaky).
            env=PEBBLE_ENV | {"PEBBLE_AUTHZREUSE": "100"},
        ),
    ]  # fmt: skip


def acme_directory(layout: Layout) -> str:
    return f"https://127.0.0.1:{layout.pebble_port}/dir"


def env(fleet: Fleet) -> dict[str, str]:
    lay = fleet.layout

    def every(port: str) -> str:
        return ",".join(f"127.0.0.1:{getattr(r, port)}" for r in lay.replica_set)

    return {
        "KUBELB_HTTP_ADDRS": every("http_port"),
        "KUBELB_HTTPS_ADDRS": every("https_port"),
        "ENVOY_ADMIN_ADDRS": every("admin_port"),
        "KUBELBD_HEALTH_ADDRS": every("health_port"),
        "KUBELB_HTTP_ADDR": f"127.0.0.1:{lay.envoy_http_port}",
        "KUBELB_HTTPS_ADDR": f"127.0.0.1:{lay.envoy_https_port}",
        "ENVOY_ADMIN_ADDR": f"127.0.0.1:{lay.envoy_admin_port}",
        "KUBELBD_HEALTH_ADDR": f"127.0.0.1:{lay.kubelbd_health_port}",
        "KUBELB_L4_POOL": lay.l4_pool,
        "ACME_DIRECTORY": acme_directory(lay),
        "PEBBLE_MANAGEMENT_ADDR": f"127.0.0.1:{lay.pebble_management_port}",
    }


#: Flags of the Deployment's kubelbd the fleet sets to its own values: where it listens and
#: keeps Envoy's files, who it is, how long Envoy drains (shorter, for the tests).
def _fleet_values(lay: Layout, r: Replica) -> dict[str, str]:
    return {
        "--config-dir": str(config_dir(lay, r.index)),
        "--http-listen": f"127.0.0.1:{r.http_port}",
        "--https-listen": f"127.0.0.1:{r.https_port}",
        "--envoy-admin": f"127.0.0.1:{r.admin_port}",
        "--health-listen": f"127.0.0.1:{r.health_port}",
        "--public-address": "127.0.0.1",
        "--identity": r.name,
        "--drain-seconds": str(DRAIN_SECONDS),
    }


def deployment_args(lay: Layout, r: Replica, args: list[str]) -> list[str]:
    """The Deployment's kubelbd arguments (deploy/, `args`) as this replica runs them: every
    flag the Deployment sets, with the fleet's addresses; none dropped, none added here."""
    values = _fleet_values(lay, r)
    out = []
    for a in args:
        flag, eq, _ = a.partition("=")
        if eq and flag in values:
            a = f"{flag}={values.pop(flag)}"
        if "$(" in a:
            raise ValueError(f"deploy/ passes {a!r}: the fleet has no value for it")
        out.append(a)
    if values:
        raise ValueError(f"deploy/ no longer sets {', '.join(sorted(values))}")
    return out


def kubelbd_proc(fleet: Fleet, pebble_bin: Path, r: Replica, args: list[str]) -> Proc:
    """A replica as the Deployment runs it (same entry point and arguments), plus what only a
    machine without Kubernetes needs: a kubeconfig (the ServiceAccount's token, where a pod
    has it mounted), Envoy as a child, the fleet's L4 pool, Pebble as ACME CA."""
    lay = fleet.layout
    return Proc(
        r.name,
        [
            sys.executable,
            "-m",
            "kubelbd",
            *deployment_args(lay, r, args),
            f"--kubeconfig={kubelbd_kubeconfig(lay)}",
            f"--https-redirect-port={lay.envoy_https_port}",
            "--run-envoy",
            "--keep-envoy",
            f"--l4-address-pool={lay.l4_pool}",
            f"--acme-directory={acme_directory(lay)}",
            f"--acme-ca-bundle={pebble_bin / 'pebble.minica.pem'}",
            "--acme-email=fleet@example.test",
            *bind_args(lay, args),
            "--dns-ttl=5",
            # Every tenant's own <tenant>.lb.example.test, for automatic names.
            f"--dns-base-domain={dns.BASE_DOMAIN}",
            f"--envoy-log={lay.logs / (r.envoy + '.log')}",
            # The management side of the fleet: never a tenant node address.
            "--management-cidrs=127.0.0.0/24",
        ],
        str(lay.logs / f"{r.name}.log"),
    )


def bind_args(lay: Layout, args: list[str]) -> list[str]:
    """Every served host published in the fleet's BIND (hack/kubefleet/dns.py); none when the
    Deployment publishes through external-dns (deploy/dns-endpoints), which refuses them."""
    from . import manifests

    if manifests.dns_provider(args) != "rfc2136":
        return []
    return [
        f"--dns-server=127.0.0.1:{lay.dns_port}",
        f"--dns-zone={dns.ZONE}",
        f"--dns-tsig-name={dns.TSIG_NAME}",
        f"--dns-tsig-algorithm={dns.TSIG_ALGORITHM}",
        f"--dns-tsig-secret-file={dns.secret_file(lay)}",
    ]


def kubelbd_kubeconfig(lay: Layout) -> Path:
    return lay.dir / "kubeconfig" / "kubelbd.yaml"


def install_rbac(fleet: Fleet) -> None:
    """deploy/'s Namespace, ServiceAccount, Roles and bindings, applied as rendered; then a
    kubeconfig with a token of that ServiceAccount: kubelbd runs with exactly the permissions
    the manifests give it, so a missing one fails the tests, not a rollout."""
    from . import manifests

    for doc in manifests.rbac_documents():
        apply_document(fleet, doc)
    token = fleet.request(
        "mgmt",
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{KUBELBD}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 30 * 24 * 3600},
        },
    )["status"]["token"]
    admin = yaml.safe_load(fleet.layout.kubeconfig("mgmt").read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mgmt", "cluster": cluster}],
        "users": [{"name": "kubelbd", "user": {"token": token}}],
        "contexts": [{"name": "kubelbd", "context": {"cluster": "mgmt", "user": "kubelbd"}}],
        "current-context": "kubelbd",
    }
    path = kubelbd_kubeconfig(fleet.layout)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


#: where each kind deploy/'s RBAC renders lives: (API prefix, plural, namespaced)
_PLURALS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}


def _document_path(doc: dict[str, Any]) -> str:
    prefix, plural, namespaced = _PLURALS[doc["kind"]]
    meta = doc["metadata"]
    where = f"/namespaces/{meta['namespace']}" if namespaced else ""
    return f"{prefix}{where}/{plural}/{meta['name']}"


def apply_document(fleet: Fleet, doc: dict[str, Any]) -> None:
    """Server-side apply of one manifest, as `kubectl apply --server-side` does."""
    fleet.request(
        "mgmt",
        "PATCH",
        _document_path(doc) + "?fieldManager=hack-fleet&force=true",
        doc,
        content_type="application/apply-patch+yaml",
    )


def delete_document(fleet: Fleet, doc: dict[str, Any]) -> None:
    fleet.request("mgmt", "DELETE", _document_path(doc))


def start(fleet: Fleet) -> None:
    """Pebble, the tenants' registration, kubelbd; wait until every tenant is synced."""
    pebble_bin = build_pebble()
    for p in pebble_procs(fleet, pebble_bin):
        fleet.spawn(p)
    directory = acme_directory(fleet.layout)
    fleet.wait_for("Pebble", lambda: _https_ok(directory, pebble_bin), ["pebble"])
    register_tenants(fleet)
    install_rbac(fleet)
    from . import manifests

    args = manifests.kubelbd_args()
    first, *others = fleet.layout.replica_set
    # The first replica takes the Lease; the others follow, each serving from the records.
    fleet.spawn(kubelbd_proc(fleet, pebble_bin, first, args))
    wait_ready(fleet)
    for r in others:
        fleet.spawn(kubelbd_proc(fleet, pebble_bin, r, args))
        wait_ready(fleet, tenants=False, replica=r)


def _https_ok(url: str, bin_dir: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(bin_dir / "pebble.minica.pem"))
    with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
        return bool(r.status == 200)


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def install_crds(fleet: Fleet) -> None:
    """kubelbd's CRDs, as kubelbd itself would install them: the operator's Tenant records
    (each tenant's policy) are made before kubelbd first runs."""
    from kubelbd.kube.crds import load

    for doc in load():
        name = doc["metadata"]["name"]
        if fleet.request("mgmt", "POST", CRDS, doc, ok_if_exists=True) is None:
            doc["metadata"]["resourceVersion"] = fleet.api("mgmt", f"{CRDS}/{name}")["metadata"][
                "resourceVersion"
            ]
            fleet.request("mgmt", "PUT", f"{CRDS}/{name}", doc)
    fleet.wait_for(
        "the Tenant kind to be served",
        lambda: bool(fleet.api("mgmt", "/apis/kubelb.io/v1alpha1/tenants") is not None),
        [],
    )


def install_dnsendpoint_crd(fleet: Fleet) -> None:
    """external-dns's DNSEndpoint CRD (hack/kubefleet/dnsendpoints.externaldns.k8s.io.yaml),
    as external-dns's own install would bring it: no external-dns runs in the fleet, but the
    tests of --dns-provider=dnsendpoint (deploy/dns-endpoints) need the kind served. kubelbd
    in its default mode never reads it."""
    from . import manifests

    doc = yaml.safe_load(manifests.DNSENDPOINT_CRD.read_text())
    name = doc["metadata"]["name"]
    if fleet.request("mgmt", "POST", CRDS, doc, ok_if_exists=True) is None:
        current = fleet.api("mgmt", f"{CRDS}/{name}")
        doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        fleet.request("mgmt", "PUT", f"{CRDS}/{name}", doc)
    fleet.wait_for(
        "the DNSEndpoint kind to be served",
        lambda: fleet.api("mgmt", "/apis/externaldns.k8s.io/v1alpha1/dnsendpoints") is not None,
        [],
    )


def node_cidr(c: Cluster) -> str:
    """Where a fleet tenant's nodes are: its own loopback /24."""
    return f"127.0.{c.index}.0/24"


def tenant_policy(c: Cluster) -> dict[str, object]:
    """The operator's policy for a fleet tenant: its nodes on their own /24, domains open
    (what `register_command` says with flags)."""
    return {"nodeCIDRs": [node_cidr(c)]}


def register_command(layout: Layout, c: Cluster) -> list[str]:
    """`kubelbd register` for a fleet tenant, as an operator runs it: the tenant admin's
    kubeconfig grants kubelbd its role, and kubelbd gets only a ServiceAccount token."""
    return [
        sys.executable, "-m", "kubelbd", "register", c.name,
        f"--kubeconfig={layout.kubeconfig(c.name)}",
        f"--mgmt-kubeconfig={layout.kubeconfig('mgmt')}",
        f"--namespace={NAMESPACE}",
        f"--node-cidr={node_cidr(c)}",
    ]  # fmt: skip


def register_tenants(fleet: Fleet) -> None:
    """kubelbd's namespace and CRDs (as kubelbd would install them: the Tenant kind must be
    served before a Tenant record is written), the Gateway API CRDs in every tenant (a tenant
    cluster's own prerequisite, as its operator would install them, so kubelbd finds the kinds
    served from its first sync), then every tenant, by `kubelbd register`."""
    from . import gatewayapi
    from .fleet import FleetError

    fleet.request("mgmt", "POST", "/api/v1/namespaces", namespace_doc(), ok_if_exists=True)
    install_crds(fleet)
    install_dnsendpoint_crd(fleet)
    gatewayapi.install_all(fleet, [c.name for c in fleet.layout.tenant_clusters])
    for c in fleet.layout.tenant_clusters:
        done = subprocess.run(
            register_command(fleet.layout, c), cwd=ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise FleetError(f"kubelbd register {c.name} failed: {done.stderr.strip()}")


def namespace_doc() -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def _http_body(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode(errors="replace").strip())
    except urllib.error.HTTPError as e:
        return str(e.read().decode(errors="replace").strip())


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def tenants_synced(fleet: Fleet) -> bool:
    for c in fleet.layout.tenant_clusters:
        path = f"/apis/kubelb.io/v1alpha1/namespaces/tenant-{c.name}/tenants/{c.name}"
        obj = fleet.api("mgmt", path)
        conds = {x["type"]: x["status"] for x in (obj.get("status") or {}).get("conditions", [])}
        if conds.get("Connected") != "True" or conds.get("Synced") != "True":
            return False
        if not (obj.get("status") or {}).get("nodeAddresses"):
            return False
    return True


def wait_ready(fleet: Fleet, tenants: bool = True, replica: Replica | None = None) -> None:
    """kubelbd and Envoy ready; with `tenants`, every tenant connected and synced too."""
    r = replica or fleet.layout.replica_set[0]
    health = f"http://127.0.0.1:{r.health_port}/readyz"
    admin = f"http://127.0.0.1:{r.admin_port}/ready"
    fleet.wait_for(
        f"{r.name} to be ready",
        lambda: _http_status(health) == 200,
        [r.name],
        explain=lambda: _http_body(health),
    )
    fleet.wait_for(f"{r.envoy} to be ready", lambda: _http_status(admin) == 200, [r.name])
    if tenants:
        fleet.wait_for(
            "every tenant to be connected and synced", lambda: tenants_synced(fleet), [r.name]
        )


def envoy_pid(layout: Layout, replica: int = 1) -> int:
    """The running Envoy of a replica (0: none, or a zombie)."""
    try:
        pid = int((config_dir(layout, replica) / "envoy.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return 0
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return 0
    return pid


def stop_envoy(fleet: Fleet, replica: int = 1) -> None:
    """Hold Envoy down: kubelbd drains its child (DRAIN_SECONDS), stops it and does not
    restart it until `start_envoy`."""
    hold = config_dir(fleet.layout, replica) / "envoy.hold"
    hold.write_text("held by hack/fleet stop envoy\n")
    deadline = time.monotonic() + 20 + DRAIN_SECONDS
    while envoy_pid(fleet.layout, replica) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = envoy_pid(fleet.layout, replica)
    if pid:
        os.kill(pid, signal.SIGKILL)
    # The pid file is kubelbd's word; what callers rely on is that nothing answers on the
    # replica's listeners any more (an Envoy the file does not name included).
    r = fleet.layout.replica_set[replica - 1]
    closing = time.monotonic() + 10  # its own time: the drain may have used up the deadline
    while port_open("TCP", r.http_port):
        if time.monotonic() > closing:
            raise RuntimeError(f"{r.envoy} held, but 127.0.0.1:{r.http_port} still accepts")
        time.sleep(0.05)


def release_envoy(fleet: Fleet, replica: int = 1) -> None:
    """Let kubelbd (re)start Envoy again."""
    (config_dir(fleet.layout, replica) / "envoy.hold").unlink(missing_ok=True)


def start_envoy(fleet: Fleet, replica: int = 1) -> None:
    release_envoy(fleet, replica)
    r = fleet.layout.replica_set[replica - 1]
    admin = f"http://127.0.0.1:{r.admin_port}/ready"
    fleet.wait_for(f"{r.envoy} to be ready", lambda: _http_status(admin) == 200, [r.name])


def describe(fleet: Fleet) -> list[tuple[str, int]]:
    from .fleet import proc_rss_kib

    out = []
    for r in fleet.layout.replica_set:
        pid = envoy_pid(fleet.layout, r.index)
        rss = proc_rss_kib(pid) if pid else 0
        what = "running" if pid else "stopped"
        out.append((f"  {r.envoy:<28} {what:<8} pid {pid or '-':<8} {rss // 1024:>5} MiB", rss))
    return out


def stop_orphan(fleet: Fleet) -> None:
    """Envoy outlives kubelbd on purpose (like a sidecar); `down` must still stop it."""
    for r in fleet.layout.replica_set:
        pid = envoy_pid(fleet.layout, r.index)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while envoy_pid(fleet.layout, r.index) and time.monotonic() < deadline:
                time.sleep(0.05)
            if envoy_pid(fleet.layout, r.index):
                os.kill(pid, signal.SIGKILL)
