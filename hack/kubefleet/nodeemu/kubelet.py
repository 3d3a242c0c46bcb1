"""The kubelet half of an emulated node: the Node object, its Lease, and its pods.

Pods bound to this node are "run" by starting an echo server on each declared containerPort
at the pod's loopback address, then reported Running and Ready. Containers whose image is
echo-basic run the real echo-basic instead (echobasic.py), and the pod turns Ready only once
its ports answer. A pod being deleted has its servers stopped and is then removed with grace
period 0, which is the kubelet's job. With a serving certificate, the node also serves its
pods' logs to the API server (logserver.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kubelbd.kube import ApiError, Kube
from kubelbd.kube.informer import Informer
from kubelbd.objects import CONFIGMAPS, LEASES, NODES, PODS, SECRETS, Obj, key

from ..layout import pod_listen_ip
from . import echobasic
from .echo import PodIdentity, PortServer

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
LEASE_RENEW = 2.0
STATUS_REFRESH = 20.0
KUBELET_VERSION = "v1.35.4"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: Seconds before an echo-basic pod whose process exited is started again.
RESTART_BACKOFF = 2.0


@dataclass
class Running:
    uid: str
    ip: str
    servers: list[PortServer]
    echo: echobasic.EchoBasicPod | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    failed: str = ""  # why its echo-basic could not be set up (CreateContainerConfigError)
    restart_at: float = 0.0  # loop time after which an exited echo-basic is started again

    @property
    def ready(self) -> bool:
        if self.failed:
            return False
        return self.echo is None or (self.echo.ready and not self.echo.exited)


class Kubelet:
    def __init__(
        self,
        kube: Kube,
        cluster: str,
        node: str,
        ip: str,
        pod_cidr: str,
        echo_basic: Path | None = None,
        pods_dir: Path | None = None,
        kubelet_port: int = 0,
        coredns: Path | None = None,
    ) -> None:
        self.kube = kube
        self.echo_basic = echo_basic  # the binary; None: echo-basic pods get the Python echo
        self.coredns = coredns  # the binary; None: CoreDNS pods get containerPort listeners
        self.pods_dir = pods_dir or Path(tempfile.gettempdir()) / f"kubefleet-{cluster}-{node}"
        self.kubelet_port = kubelet_port  # the log endpoint's port, 0 if none
        self.cluster = cluster
        self.node = node
        self.ip = ip
        self.pod_cidr = pod_cidr
        self._boot_id = str(uuid.uuid4())
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.pods = Informer(kube, PODS, self._on_pod, field_selector=f"spec.nodeName={node}")
        self._running: dict[str, Running] = {}
        net = ipaddress.ip_network(pod_cidr)
        self._free = [str(h) for h in list(net.hosts())[1:]]

    # ---- node ----------------------------------------------------------------------------

    def _conditions(self, ready: bool, reason: str, message: str) -> list[Obj]:
        t = now()
        conds = [
            (
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory",
            ),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID"),
            ("Ready", "True" if ready else "False", reason, message),
        ]
        return [
            {"type": c, "status": s, "reason": r, "message": m, "lastHeartbeatTime": t,
             "lastTransitionTime": t}
            for c, s, r, m in conds
        ]  # fmt: skip

    def _status(self, ready: bool, reason: str, message: str) -> Obj:
        resources = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        return {
            "addresses": [
                {"type": "InternalIP", "address": self.ip},
                {"type": "Hostname", "address": self.node},
            ],
            "capacity": resources,
            "allocatable": resources,
            "conditions": self._conditions(ready, reason, message),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": self._boot_id.replace("-", ""),
                "systemUUID": self._boot_id,
                "bootID": self._boot_id,
                "kernelVersion": "emulated",
                "osImage": "kubefleet node emulator",
                "containerRuntimeVersion": "emulated://1.0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register(self) -> None:
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "kubefleet.local/emulated": "true",
                },
            },
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": self._status(True, "KubeletReady", "kubelet is posting ready status"),
        }
        try:
            await self.kube.create(NODES, node)
        except ApiError as e:
            if not e.conflict:
                raise
        await self.post_status(True, "KubeletReady", "kubelet is posting ready status")

    async def post_status(self, ready: bool, reason: str, message: str) -> None:
        await self.kube.patch(
            NODES,
            self.node,
            {"status": self._status(ready, reason, message)},
            subresource="status",
            patch_type="strategic",
        )

    async def heartbeat(self) -> None:
        lease: Obj = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS},
        }
        last_status = asyncio.get_running_loop().time()
        while True:
            try:
                lease["spec"]["renewTime"] = micro_now()
                await self.kube.apply(LEASES, lease, field_manager="kubelet")
                if asyncio.get_running_loop().time() - last_status > STATUS_REFRESH:
                    await self.post_status(True, "KubeletReady", "kubelet is posting ready status")
                    last_status = asyncio.get_running_loop().time()
            except (ApiError, ConnectionError) as e:
                log.warning("heartbeat: %s", e)
            await asyncio.sleep(LEASE_RENEW)

    # ---- pods ----------------------------------------------------------------------------

    def _on_pod(self, _kind: str, obj: Obj) -> None:
        self._mark(key(obj))

    def _mark(self, k: str) -> None:
        self._dirty.add(k)
        self._wake.set()

    async def sync_pods(self) -> None:
        await self.pods.synced.wait()
        # Adopt what a previous run of this node left: same pods, same IPs.
        for pod in self.pods.cache.values():
            ip = (pod.get("status") or {}).get("podIP")
            if ip in self._free:
                self._free.remove(ip)
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for k in sorted(dirty):
                try:
                    await self._sync_pod(k)
                except (ApiError, ConnectionError) as e:
                    log.warning("pod %s: %s", k, e)
                    self._dirty.add(k)
                    self._wake.set()
            if self._dirty:
                await asyncio.sleep(0.5)

    async def _sync_pod(self, k: str) -> None:
        pod = self.pods.cache.get(k)
        if pod is None:
            await self._kill(k)
            return
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            await self._kill(k)
            await self.kube.delete(
                PODS, meta["name"], meta["namespace"], grace_period_seconds=0,
                preconditions={"uid": meta["uid"]},
            )  # fmt: skip
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        running = self._running.get(k)
        if running is not None and running.uid != meta["uid"]:
            await self._kill(k)  # same name, new pod
            running = None
        if (
            running is not None
            and running.echo is not None
            and running.echo.exited
            and running.restart_at
            and asyncio.get_running_loop().time() >= running.restart_at
        ):
            log.warning("pod %s: echo-basic exited; starting it again", k)
            await self._kill(k)  # restartPolicy Always, minus the bookkeeping
            running = None
        if running is None:
            running = await self._start(pod)
        if not _status_is(pod, running.ip, running.ready):
            await self.kube.patch(
                PODS,
                meta["name"],
                {"status": self._pod_status(pod, running.ip, running.ready)},
                meta["namespace"],
                "status",
            )

    async def _start(self, pod: Obj) -> Running:
        meta, spec = pod["metadata"], pod["spec"]
        echo_containers = (
            echobasic.echo_containers(pod, coredns=self.coredns is not None)
            if self.echo_basic
            else []
        )
        secrets: dict[str, Obj | None] = {}
        if echo_containers:
            # Before taking an IP: a Secret (ConfigMap) not there yet fails this sync, to be
            # retried.
            volumes = [
                (v, SECRETS, s["secretName"], s) for v, s in echobasic.secret_volumes(pod).items()
            ]
            volumes += [(v, CONFIGMAPS, s["name"], s)
                        for v, s in echobasic.config_map_volumes(pod).items()]  # fmt: skip
            for vol, resource, name, src in volumes:
                if src.get("optional"):
                    secrets[vol] = await self.kube.get_or_none(resource, name, meta["namespace"])
                else:
                    secrets[vol] = await self.kube.get(resource, name, meta["namespace"])
        host_net = bool(spec.get("hostNetwork"))
        ip = (pod.get("status") or {}).get("podIP")
        if host_net:
            ip = self.ip
        elif not ip or ipaddress.ip_address(ip) not in ipaddress.ip_network(self.pod_cidr):
            ip = self._free.pop(0)
        elif ip in self._free:
            self._free.remove(ip)  # its own IP again (restarted): no longer free for others
        listen = self.ip if host_net else pod_listen_ip(ip)
        servers: list[PortServer] = []
        for c in spec.get("containers") or []:
            if any(c is e for e in echo_containers):
                continue  # echo-basic opens the ports its env says, not containerPorts
            for p in c.get("ports") or []:
                proto = p.get("protocol", "TCP")
                if proto not in ("TCP", "UDP"):
                    continue
                ident = PodIdentity(
                    meta["name"], meta["namespace"], self.node, ip, p["containerPort"]
                )
                server = PortServer(ident, listen, proto)
                try:
                    await server.start()
                except OSError as e:
                    log.warning("pod %s: cannot listen on %s %s:%d: %s",
                                key(pod), proto, listen, p["containerPort"], e)  # fmt: skip
                    continue
                servers.append(server)
        running = Running(meta["uid"], ip, servers)
        self._running[key(pod)] = running
        if echo_containers:
            assert self.echo_basic is not None
            try:
                running.echo = echobasic.EchoBasicPod(
                    self.echo_basic, pod, ip, listen, self.ip, self.pods_dir, secrets,
                    self.coredns,
                )  # fmt: skip
                await running.echo.start()
            except (ValueError, KeyError, OSError) as e:
                # A port that is no number, a Secret key missing, no binary: the pod stays
                # not Ready until it changes, like CreateContainerConfigError; the node lives.
                log.warning("pod %s: cannot run echo-basic: %s", key(pod), e)
                running.failed = str(e)
                if running.echo is not None:
                    await running.echo.stop()
                    running.echo = None
                return running
            running.tasks.append(asyncio.create_task(self._watch(key(pod), running)))
        log.info("pod %s running at %s (%d ports%s)", key(pod), ip, len(servers),
                 ", echo-basic" if echo_containers else "")  # fmt: skip
        return running

    async def _watch(self, k: str, running: Running) -> None:
        """Ready once every port answers. After an exit: not Ready at once, then (after the
        backoff) a resync that starts it again."""
        echo = running.echo
        assert echo is not None
        if await echo.wait_ready():
            log.info("pod %s: echo-basic answers", k)
        self._mark(k)
        await echo.wait_exit()
        log.warning("pod %s: echo-basic exited (see its log in %s)", k, echo.dir)
        running.restart_at = asyncio.get_running_loop().time() + RESTART_BACKOFF
        self._mark(k)
        await asyncio.sleep(RESTART_BACKOFF)
        self._mark(k)

    def container_log(self, namespace: str, name: str, container: str) -> Path | None:
        """The log file of a running pod's container (need not exist: nothing written yet);
        None if this node runs no such pod or container."""
        running = self._running.get(f"{namespace}/{name}")
        pod = self.pods.cache.get(f"{namespace}/{name}")
        if running is None or pod is None:
            return None
        if container not in {c["name"] for c in pod["spec"].get("containers") or []}:
            return None
        if running.echo is not None:
            return running.echo.log_path(container)
        return Path(os.devnull)  # the Python echo's output is not captured: an empty log

    async def _kill(self, k: str) -> None:
        entry = self._running.pop(k, None)
        if entry is None:
            return
        for t in entry.tasks:
            t.cancel()
        for s in entry.servers:
            await s.stop()
        if entry.echo is not None:
            await entry.echo.stop()
        if entry.ip != self.ip:
            self._free.append(entry.ip)
        log.info("pod %s stopped", k)

    def _pod_status(self, pod: Obj, ip: str, ready: bool = True) -> Obj:
        t = now()
        spec = pod["spec"]
        started = (pod.get("status") or {}).get("startTime") or t

        def cstatus(c: Obj, init: bool) -> Obj:
            state = (
                {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": started,
                        "finishedAt": started,
                    }
                }
                if init
                else {"running": {"startedAt": started}}
            )
            return {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"emulated://{c.get('image', '')}",
                "containerID": f"emulated://{pod['metadata']['uid']}/{c['name']}",
                "ready": ready and not init,
                "started": not init,
                "restartCount": 0,
                "state": state,
            }

        conditions = [
            {
                "type": t_,
                "status": "True" if ready or t_ not in ("Ready", "ContainersReady") else "False",
                "lastTransitionTime": t,
                "lastProbeTime": None,
            }
            for t_ in (
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            )
        ]
        return {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": self.ip,
            "hostIPs": [{"ip": self.ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": started,
            "qosClass": (pod.get("status") or {}).get("qosClass", "BestEffort"),
            "containerStatuses": [cstatus(c, False) for c in spec.get("containers") or []],
            "initContainerStatuses": [cstatus(c, True) for c in spec.get("initContainers") or []],
        }

    async def mark_all_not_ready(self) -> None:
        """What a node going away gracefully leaves behind: its pods no longer Ready."""
        for k, pod in list(self.pods.cache.items()):
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or pod["metadata"].get("deletionTimestamp"):
                continue
            status = self._pod_status(pod, ip)
            for c in status["conditions"]:
                if c["type"] in ("Ready", "ContainersReady"):
                    c["status"] = "False"
                    c["reason"] = "NodeShutdown"
            for cs in status["containerStatuses"]:
                cs["ready"] = False
            try:
                await self.kube.patch(
                    PODS, pod["metadata"]["name"], {"status": status},
                    pod["metadata"]["namespace"], "status",
                )  # fmt: skip
            except (ApiError, ConnectionError) as e:
                log.warning("pod %s: %s", k, e)

    async def stop_all(self) -> None:
        for k in list(self._running):
            await self._kill(k)


def _status_is(pod: Obj, ip: str, ready: bool) -> bool:
    """Whether the pod's status already says Running at `ip`, Ready or not as `ready` is."""
    status = pod.get("status") or {}
    is_ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return status.get("phase") == "Running" and status.get("podIP") == ip and is_ready == ready
