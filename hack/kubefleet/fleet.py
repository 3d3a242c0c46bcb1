"""The local fleet: real etcd and Kubernetes control planes, emulated nodes, on loopback.

`up` is all-or-nothing: if any step fails, everything it started is stopped again and one
line names the cause. The state file records each process as soon as it is spawned, so even
a `fleet up` that was killed midway can be cleaned up by `down`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import certs, dns, lb
from .layout import NODE_PORT_RANGE, ROOT, SERVICE_CIDR, Cluster, Layout, Node
from .procs import Proc, alive, spawn, stop, tail

START_TIMEOUT = 90.0


class FleetError(Exception):
    """One line for the user; the fleet has already been cleaned up when this reaches them."""


@dataclass
class State:
    tenants: int
    base_port: int
    bin_dir: str
    procs: dict[str, Proc] = field(default_factory=dict)
    replicas: int = 1

    def save(self, path: Path) -> None:
        data = {
            "tenants": self.tenants,
            "base_port": self.base_port,
            "bin_dir": self.bin_dir,
            "replicas": self.replicas,
            "procs": {k: p.to_json() for k, p in self.procs.items()},
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        procs = {k: Proc.from_json(v) for k, v in data.pop("procs").items()}
        return cls(procs=procs, **data)


def build_binaries() -> Path:
    """The cached Kubernetes binaries, built on first use by hack/build-kube."""
    return run_build("build-kube")


def run_build(script: str) -> Path:
    """Run a hack/build-* script (instant once its cache is warm) and return the bin directory
    it prints. Its progress goes to our stderr as it happens; its last line, the cause, becomes
    ours."""
    child = subprocess.Popen(
        [str(ROOT / "hack" / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None and child.stdout is not None
    last = ""
    for line in child.stderr:
        if last:
            print(last, file=sys.stderr, end="")
        last = line
    out = child.stdout.read()
    if child.wait() != 0:
        raise FleetError(last.strip().removeprefix(f"{script}: ") or f"{script} failed")
    if last:
        print(last, file=sys.stderr, end="")
    return Path(out.strip().splitlines()[-1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Fleet:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.state: State | None = State.load(layout.state_file)
        self.conformance_bin: Path | None = None  # hack/build-conformance's, set by up()

    # ---- status -------------------------------------------------------------------------

    def running(self) -> dict[str, bool]:
        if self.state is None:
            return {}
        return {name: alive(p) for name, p in self.state.procs.items()}

    # ---- up -----------------------------------------------------------------------------

    def up(self) -> None:
        running = self.running()
        if running and all(running.values()):
            raise FleetError(
                f"the fleet is already up ({len(running)} processes, state in "
                f"{self.layout.dir}); run 'hack/fleet down' first"
            )
        if running:
            stopped = [n for n, ok in running.items() if not ok]
            self.down(quiet=True)
            raise FleetError(
                "found a half-started fleet (not running: "
                f"{', '.join(sorted(stopped))}); stopped what was left of it, run 'up' again"
            )
        bin_dir = build_binaries()
        from . import gatewayapi

        # Before the nodes: they run echo-basic for echo-basic pods (the suite's backends).
        self.conformance_bin = gatewayapi.build()
        self._check_ports()
        lay = self.layout
        if lay.dir.exists():
            for sub in ("etcd", "pki", "kubeconfig", "state.json", "fleet.env", "envoy", "pods"):
                p = lay.dir / sub
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        lay.dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(lb.config_dir(lay).parent, ignore_errors=True)
        self.state = State(lay.tenants, lay.base_port, str(bin_dir), replicas=lay.replicas)
        self._save()
        try:
            self._generate_pki()
            self._start_etcd()
            if os.environ.get("KUBEFLEET_INJECT_FAILURE") == "after-etcd":
                raise FleetError("injected failure after etcd started (KUBEFLEET_INJECT_FAILURE)")
            for c in lay.clusters:
                self.spawn(self._apiserver(c))
            for c in lay.clusters:
                self._wait_apiserver(c)
            for c in lay.clusters:
                self.spawn(self._controller_manager(c))
                self.spawn(self._scheduler(c))
                for n in c.nodes:
                    self.spawn(self._node(n))
            for c in lay.tenant_clusters:
                self._wait_nodes_ready(c)
            for c in lay.clusters:
                self._wait_default_service_account(c)
            # Before kubelbd, which publishes its names there from its first render.
            dns.start(self)
            lb.start(self)
            self.write_env()
        except BaseException as e:
            self.down(quiet=True)
            if isinstance(e, FleetError):
                raise
            if isinstance(e, KeyboardInterrupt):
                raise FleetError("interrupted; stopped everything that had started") from e
            raise FleetError(f"fleet up failed: {e!r}") from e

    def _check_ports(self) -> None:
        lay = self.layout
        wanted = {
            lay.etcd_client_port: "etcd client",
            lay.etcd_peer_port: "etcd peer",
            **{c.apiserver_port: f"{c.name} kube-apiserver" for c in lay.clusters},
            **lb.ports(self),
            **dns.ports(self),
        }
        for port, what in sorted(wanted.items()):
            if port_in_use(port):
                raise FleetError(
                    f"port 127.0.0.1:{port} ({what}) is already in use by another process; "
                    "free it or pick another --base-port"
                )

    def _save(self) -> None:
        assert self.state is not None
        self.state.save(self.layout.state_file)

    def _bin(self, name: str) -> str:
        assert self.state is not None
        return str(Path(self.state.bin_dir) / name)

    def spawn(self, p: Proc) -> Proc:
        assert self.state is not None
        spawn(p, ROOT)
        self.state.procs[p.name] = p
        self._save()
        return p

    def _proc(self, name: str) -> Proc:
        assert self.state is not None
        return self.state.procs[name]

    def wait_for(
        self,
        what: str,
        check: Callable[[], bool],
        procs: Iterable[str] = (),
        timeout: float = START_TIMEOUT,
        explain: Callable[[], str] | None = None,
    ) -> None:
        """Poll `check` until true; fail early, with the log's last line, if a process died;
        on timeout, with what `explain` says (a readiness endpoint's reason, say)."""
        deadline = time.monotonic() + timeout
        names = list(procs)
        while True:
            for name in names:
                p = self._proc(name)
                if not alive(p):
                    last = tail(p.log, 1) or "(no output)"
                    raise FleetError(f"{name} exited while waiting for {what}: {last}  [{p.log}]")
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError, ssl.SSLError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                why = ""
                if explain is not None:
                    with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                        why = f": {explain()}"
                raise FleetError(f"timed out after {timeout:.0f}s waiting for {what}{why}")
            time.sleep(0.2)

    # ---- certificates -------------------------------------------------------------------

    def _generate_pki(self) -> None:
        lay = self.layout
        (lay.dir / "kubeconfig").mkdir(parents=True, exist_ok=True)
        for c in lay.clusters:
            d = lay.pki(c.name)
            d.mkdir(parents=True, exist_ok=True)
            ca = certs.new_ca(f"{c.name}-ca")
            ca.write(d, "ca")
            certs.issue(
                ca,
                "kube-apiserver",
                dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
                ips=("127.0.0.1", "10.96.0.1"),
                server=True,
            ).write(d, "apiserver")
            certs.write_service_account_key(d)
            # What the API server shows the kubelets when it fetches logs, and what each
            # kubelet serves them with (checked against this CA: --kubelet-* flags).
            certs.issue(ca, "kube-apiserver-kubelet-client", ("system:masters",)).write(
                d, "apiserver-kubelet-client"
            )
            for n in c.nodes:
                certs.issue(
                    ca, f"system:node:{n.name}", ("system:nodes",), dns=(n.name,), ips=(n.ip,),
                    server=True,
                ).write(d, f"kubelet-{n.name}")  # fmt: skip
            users = {
                "admin": ("kubernetes-admin", ("system:masters",)),
                "controller-manager": ("system:kube-controller-manager", ()),
                "scheduler": ("system:kube-scheduler", ()),
            }
            for user, (cn, orgs) in users.items():
                pair = certs.issue(ca, cn, orgs)
                text = certs.kubeconfig(c.name, c.server, ca, pair, user)
                path = lay.kubeconfig(c.name) if user == "admin" else d / f"{user}.kubeconfig"
                path.write_text(text)
                path.chmod(0o600)
                if user == "admin":
                    pair.write(d, "admin")

    # ---- components ---------------------------------------------------------------------

    def _log(self, name: str) -> str:
        return str(self.layout.logs / f"{name.replace('/', '-')}.log")

    def _start_etcd(self) -> None:
        lay = self.layout
        client = f"http://127.0.0.1:{lay.etcd_client_port}"
        peer = f"http://127.0.0.1:{lay.etcd_peer_port}"
        p = Proc(
            "etcd",
            [
                self._bin("etcd"),
                "--name=fleet",
                f"--data-dir={lay.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=fleet={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
            self._log("etcd"),
        )
        self.spawn(p)
        self.wait_for("etcd", lambda: _http_ok(f"{client}/health"), ["etcd"])

    def _apiserver(self, c: Cluster) -> Proc:
        lay = self.layout
        d = lay.pki(c.name)
        return Proc(
            f"{c.name}/apiserver",
            [
                self._bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{lay.etcd_client_port}",
                f"--etcd-prefix=/clusters/{c.name}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={c.apiserver_port}",
                f"--cert-dir={d}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-node-port-range={NODE_PORT_RANGE}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                # The emulated control plane has no reachable advertise address to publish.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--event-ttl=30m",
                # Logs (pods/log) come from the node emulator's kubelet endpoint: reach it on
                # the node's InternalIP (its Hostname resolves nowhere), check its certificate
                # and show our own, all from this cluster's CA.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={d / 'ca.crt'}",
                f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}",
            ],
            self._log(f"{c.name}/apiserver"),
        )

    def _controller_manager(self, c: Cluster) -> Proc:
        d = self.layout.pki(c.name)
        return Proc(
            f"{c.name}/controller-manager",
            [
                self._bin("kube-controller-manager"),
                f"--kubeconfig={d / 'controller-manager.kubeconfig'}",
                "--secure-port=0",
                "--leader-elect=false",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                "--use-service-account-credentials=true",
                # Notice a silent node within seconds, not the default 50 s.
                "--node-monitor-period=1s",
                "--node-monitor-grace-period=8s",
            ],
            self._log(f"{c.name}/controller-manager"),
        )

    def _scheduler(self, c: Cluster) -> Proc:
        d = self.layout.pki(c.name)
        return Proc(
            f"{c.name}/scheduler",
            [
                self._bin("kube-scheduler"),
                f"--kubeconfig={d / 'scheduler.kubeconfig'}",
                "--secure-port=0",
                "--leader-elect=false",
            ],
            self._log(f"{c.name}/scheduler"),
        )

    def _node(self, n: Node) -> Proc:
        d = self.layout.pki(n.cluster)
        argv = [
            sys.executable,
            "-m",
            "kubefleet.nodeemu",
            f"--kubeconfig={self.layout.kubeconfig(n.cluster)}",
            f"--cluster={n.cluster}",
            f"--node={n.name}",
            f"--ip={n.ip}",
            f"--pod-cidr={n.pod_cidr}",
            f"--pods-dir={self.layout.dir / 'pods' / n.cluster / n.name}",
            f"--tls-cert={d / f'kubelet-{n.name}.crt'}",
            f"--tls-key={d / f'kubelet-{n.name}.key'}",
            f"--client-ca={d / 'ca.crt'}",
            f"--kubelet-port={self.layout.kubelet_port}",
        ]
        if self.conformance_bin is not None:
            argv.append(f"--echo-basic={self.conformance_bin / 'echo-basic'}")
            argv.append(f"--coredns={self.conformance_bin / 'coredns'}")
        return Proc(
            f"{n.cluster}/{n.name}",
            argv,
            self._log(f"{n.cluster}/{n.name}"),
            env={"PYTHONPATH": str(ROOT / "hack")},
        )

    # ---- readiness ----------------------------------------------------------------------

    def api(self, cluster: str, path: str, timeout: float = 5.0) -> Any:
        """GET a path on a cluster as admin; JSON in, JSON out."""
        return self.request(cluster, "GET", path, timeout=timeout)

    def request(
        self,
        cluster: str,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 5.0,
        ok_if_exists: bool = False,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> Any:
        d = self.layout.pki(cluster)
        ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
        url = self.layout.cluster(cluster).server + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", content_type)
        if accept is not None:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
                answer = r.read()
        except urllib.error.HTTPError as e:
            if ok_if_exists and e.code == 409:
                return None
            raise
        return json.loads(answer) if answer[:1] in (b"{", b"[") else answer.decode()

    def _wait_apiserver(self, c: Cluster) -> None:
        self.wait_for(
            f"{c.name} kube-apiserver to be ready",
            lambda: self.api(c.name, "/readyz") == "ok",
            [f"{c.name}/apiserver"],
        )

    def nodes_ready(self, c: Cluster, names: Iterable[str] | None = None) -> bool:
        want = set(names) if names is not None else {n.name for n in c.nodes}
        items = self.api(c.name, "/api/v1/nodes")["items"]
        ready = set()
        for node in items:
            conds = {x["type"]: x["status"] for x in node.get("status", {}).get("conditions", [])}
            taints = {t["key"] for t in node.get("spec", {}).get("taints") or []}
            if conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints:
                ready.add(node["metadata"]["name"])
        return want <= ready

    def _wait_nodes_ready(self, c: Cluster, names: Iterable[str] | None = None) -> None:
        names = list(names) if names is not None else [n.name for n in c.nodes]
        self.wait_for(
            f"{c.name} nodes {', '.join(names)} to be Ready",
            lambda: self.nodes_ready(c, names),
            [f"{c.name}/{n}" for n in names] + [f"{c.name}/controller-manager"],
        )

    def _wait_default_service_account(self, c: Cluster) -> None:
        self.wait_for(
            f"{c.name} default ServiceAccount",
            lambda: bool(self.api(c.name, "/api/v1/namespaces/default/serviceaccounts/default")),
            [f"{c.name}/controller-manager"],
        )

    # ---- env ----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        lay = self.layout
        out = {"KUBECTL": self._bin("kubectl"), "FLEET_DIR": str(lay.dir)}
        for c in lay.clusters:
            out[f"KUBECONFIG_{c.name.upper()}"] = str(lay.kubeconfig(c.name))
        out["FLEET_TENANTS"] = ",".join(c.name for c in lay.tenant_clusters)
        out.update(lb.env(self))
        out.update(dns.env(self))
        return out

    def write_env(self) -> None:
        lines = ["# Written by hack/fleet up; source it: . .fleet/fleet.env"]
        lines += [f"export {k}={_shell_quote(v)}" for k, v in self.env().items()]
        tmp = self.layout.env_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.layout.env_file)

    # ---- down / stop / start ------------------------------------------------------------

    def down(self, quiet: bool = False) -> list[str]:
        if self.state is None:
            return []
        stopped = []
        # Reverse start order: nodes and controllers before the API servers, etcd last.
        for name in reversed(list(self.state.procs)):
            p = self.state.procs[name]
            if alive(p):
                stop(p)
                stopped.append(name)
        lb.stop_orphan(self)
        # The config volume lives in memory and holds private keys: it goes with the fleet.
        shutil.rmtree(lb.config_dir(self.layout).parent, ignore_errors=True)
        self.layout.state_file.unlink(missing_ok=True)
        self.layout.env_file.unlink(missing_ok=True)
        self.state = None
        if not quiet:
            print(f"fleet: stopped {len(stopped)} processes")
        return stopped

    def component_name(self, component: str, cluster: str | None) -> str:
        assert self.state is not None
        if component in self.state.procs:
            return component
        name = f"{cluster or 'mgmt'}/{component}"
        if name in self.state.procs:
            return name
        known = ", ".join(sorted(self.state.procs))
        raise FleetError(
            f"no component {component!r} in cluster {cluster or 'mgmt'} (known: {known})"
        )

    def stop_component(self, component: str, cluster: str | None) -> None:
        if self.state is None:
            raise FleetError("the fleet is not up")
        r = lb.replica_of(self, component)
        if r is not None and component == r.envoy:
            if not lb.envoy_pid(self.layout, r.index):
                raise FleetError(f"{r.envoy} is not running")
            lb.stop_envoy(self, r.index)
            return
        name = self.component_name(component, cluster)
        p = self.state.procs[name]
        if not alive(p):
            raise FleetError(f"{name} is not running")
        stop(p)
        self._save()

    def start_component(self, component: str, cluster: str | None) -> None:
        if self.state is None:
            raise FleetError("the fleet is not up")
        r = lb.replica_of(self, component)
        if r is not None and component == r.envoy:
            if lb.envoy_pid(self.layout, r.index):
                raise FleetError(f"{r.envoy} is already running")
            if not alive(self.state.procs[r.name]):
                # kubelbd supervises Envoy: released now, it starts when kubelbd does.
                lb.release_envoy(self, r.index)
                raise FleetError(
                    f"{r.name} is not running; {r.envoy} starts with it: start {r.name}"
                )
            lb.start_envoy(self, r.index)
            return
        name = self.component_name(component, cluster)
        p = self.state.procs[name]
        if alive(p):
            raise FleetError(f"{name} is already running (pid {p.pid})")
        spawn(p, ROOT)
        self._save()
        self.wait_ready(name)

    def restart_replica(self, name: str) -> None:
        """What a rolling update does to a pod: its Envoy drains (fails its health check, asks
        clients to leave, closes its listeners) and stops, kubelbd stops (releasing the Lease
        if it held it), and both start again."""
        if self.state is None:
            raise FleetError("the fleet is not up")
        r = lb.replica_of(self, name)
        if r is None or name != r.name:
            raise FleetError(f"no replica {name!r}")
        if lb.envoy_pid(self.layout, r.index):
            lb.stop_envoy(self, r.index)
        stop(self.state.procs[r.name])
        lb.release_envoy(self, r.index)
        spawn(self.state.procs[r.name], ROOT)
        self._save()
        self.wait_ready(r.name)

    def wait_ready(self, name: str) -> None:
        cluster, _, comp = name.rpartition("/")
        if name == "etcd":
            url = f"http://127.0.0.1:{self.layout.etcd_client_port}/health"
            self.wait_for("etcd", lambda: _http_ok(url), [name])
        elif comp == "apiserver":
            self._wait_apiserver(self.layout.cluster(cluster))
        elif name == dns.COMPONENT:
            dns.wait_ready(self)
        elif comp.startswith("node-"):
            self._wait_nodes_ready(self.layout.cluster(cluster), [comp])
        elif (r := lb.replica_of(self, name)) is not None:
            # A tenant may be down on purpose (fault tests): do not wait for it to sync.
            lb.wait_ready(self, tenants=False, replica=r)
        else:
            self.wait_for(f"{name} to stay up", lambda: True, [name])


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def _shell_quote(v: str) -> str:
    if all(ch.isalnum() or ch in "/._-:,=@" for ch in v):
        return v
    return "'" + v.replace("'", "'\\''") + "'"


def proc_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def describe(fleet: Fleet) -> str:
    if fleet.state is None:
        return "fleet: down"
    rows = []
    total = 0
    for name, p in fleet.state.procs.items():
        up = alive(p)
        rss = proc_rss_kib(p.pid) if up else 0
        total += rss
        what = "running" if up else "stopped"
        rows.append(f"  {name:<28} {what:<8} pid {p.pid or '-':<8} {rss // 1024:>5} MiB")
    if lb.KUBELBD in fleet.state.procs:
        for row, rss in lb.describe(fleet):
            rows.append(row)
            total += rss
    head = f"fleet: {fleet.layout.tenants} tenants, state in {fleet.layout.dir}"
    return "\n".join([head, *rows, f"  {'total RSS':<28} {'':<8} {'':<12} {total // 1024:>5} MiB"])
