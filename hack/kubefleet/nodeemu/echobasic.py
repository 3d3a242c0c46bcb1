"""Pods whose container image is echo-basic run the real thing: the Gateway API conformance
suite's backend, built by hack/build-conformance; so do pods of CoreDNS's image (the suite's
UDPRoute backend, built there too: a CoreDNS with the plugins the suite's Corefile names),
from the Corefile of their mounted ConfigMap with its ports moved to free host ports and its
`forward` sent nowhere (the fleet's traffic stays on loopback).

echo-basic has no bind-address option: it listens on every interface, on ports it reads from
`HTTP_PORT`, `H2C_PORT`, `HTTPS_PORT`, `TCP_PORT`, `TLS_PORT`, `UDP_PORT` (defaults 3000, 3001,
8443, 3000, 8443, 8080). Emulated pods share one host, so each process gets free host ports
through those variables instead, and the kubelet listens on the pod's own loopback address on
the ports the pod asked for (the variables' values as written, or the defaults) and relays to
them. So a pod IP:port means what the Service and EndpointSlice say, exactly as for the Python
echo: kube-proxy and anything else dialling `pod_listen_ip(ip):port` need not know.

The container's env (literal values with $(VAR) references, and the downward API's
metadata.name/namespace/uid, spec.nodeName, status.podIP/hostIP) is given to the process and
nothing else of ours; Secret volumes are written as files (0600) into a per-pod directory, and
env and args paths under a mount are rewritten to point there. stdout and stderr go to a
per-container log file in the CRI format (`<RFC 3339 time> <stream> F <line>`) that the
kubelet's /containerLogs endpoint serves; the directory is removed with the pod.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import datetime as dt
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kubelbd.objects import Obj

from .proxy import UdpRelay, relay_tcp

log = logging.getLogger(__name__)

#: The fleet's own image name for the Python echo (e2e/support.py, hack/demo-app.yaml).
EMULATED_IMAGE = "registry.k8s.io/echo-basic:emulated"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
LINE_LIMIT = 1 << 20


def image_repository(image: str) -> str:
    """An image reference without its digest and tag."""
    ref = image.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def is_echo_basic(image: str) -> bool:
    """Any echo-basic image (`.../echo-basic[:tag][@digest]`) but the fleet's emulated one."""
    return image != EMULATED_IMAGE and image_repository(image).endswith("/echo-basic")


def is_coredns(image: str) -> bool:
    """CoreDNS's image (`.../coredns/coredns[:tag]`): the suite's UDPRoute backend."""
    return image_repository(image).endswith("/coredns/coredns")


#: a Corefile server block's key with a port (`.:53 {`, `foo.bar.com:53 {`)
_SERVER_PORT = re.compile(r"^(\s*[^\s{#]*?):(\d+)(\s*\{)", re.MULTILINE)
_FORWARD = re.compile(r"^(\s*forward\s+\S+)\s+[^{\n]+", re.MULTILINE)
#: where CoreDNS forwards what it does not answer itself: nowhere (a loopback port nothing
#: listens on), since the fleet's traffic stays on loopback
FORWARD_NOWHERE = "127.0.0.1:9"


def corefile_ports(text: str) -> list[int]:
    """The ports a Corefile's server blocks listen on, each once, in order."""
    out: list[int] = []
    for m in _SERVER_PORT.finditer(text):
        if int(m.group(2)) not in out:
            out.append(int(m.group(2)))
    return out


def rewrite_corefile(text: str, host_ports: Mapping[int, int]) -> str:
    """The Corefile with each server port moved to its host port and every `forward` sent
    nowhere (see FORWARD_NOWHERE)."""
    moved = _SERVER_PORT.sub(
        lambda m: f"{m.group(1)}:{host_ports[int(m.group(2))]}{m.group(3)}", text
    )
    return _FORWARD.sub(lambda m: f"{m.group(1)} {FORWARD_NOWHERE}", moved)


@dataclass(frozen=True)
class EchoPort:
    env: str  # the variable that sets it
    protocol: str
    port: int  # what the pod listens on: the variable's value, else echo-basic's default


def echo_ports(env: Mapping[str, str]) -> list[EchoPort]:
    """The ports echo-basic opens for this environment, following its main(): gRPC, TCP or UDP
    mode when their variable is set (checked in that order), else HTTP, h2c and (with a
    certificate and key) HTTPS. The variable names for the key differ by mode, as upstream's."""

    def port(var: str, default: int, proto: str = "TCP") -> EchoPort:
        return EchoPort(var, proto, int(env.get(var) or default))

    cert = bool(env.get("TLS_SERVER_CERT"))
    if env.get("GRPC_ECHO_SERVER"):
        out = [port("HTTP_PORT", 3000)]
        if cert and env.get("TLS_SERVER_PRIV_KEY"):
            out.append(port("HTTPS_PORT", 8443))
        return out
    if env.get("TCP_ECHO_SERVER"):
        out = [port("TCP_PORT", 3000)]
        if cert and env.get("TLS_SERVER_PRIV_KEY"):
            out.append(port("TLS_PORT", 8443))
        return out
    if env.get("UDP_ECHO_SERVER"):
        return [port("UDP_PORT", 8080, "UDP")]
    out = [port("HTTP_PORT", 3000), port("H2C_PORT", 3001)]
    if cert and env.get("TLS_SERVER_PRIVKEY"):
        out.append(port("HTTPS_PORT", 8443))
    return out


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are substituted, `$$` is a `$`,
    anything else stays as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, value)


def field_value(path: str, pod: Obj, pod_ip: str, node_ip: str) -> str | None:
    """A downward-API fieldRef's value, for the fields an emulated pod has."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    values = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": node_ip,
        "status.hostIPs": node_ip,
    }
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2))
    return values.get(path)


def container_env(container: Obj, pod: Obj, pod_ip: str, node_ip: str) -> dict[str, str]:
    """The container's environment from its `env` list, in order (later entries may refer to
    earlier ones). Sources an emulated node cannot resolve are left out, with a warning."""
    out: dict[str, str] = {}
    for e in container.get("env") or []:
        name = e["name"]
        if "valueFrom" not in e:
            out[name] = expand(str(e.get("value", "")), out)
            continue
        ref = (e["valueFrom"] or {}).get("fieldRef")
        value = field_value(ref["fieldPath"], pod, pod_ip, node_ip) if ref else None
        if value is None:
            log.warning("env %s of %s: source not emulated: %s", name, container["name"], e)
            continue
        out[name] = value
    return out


def secret_files(volume: Obj, secret: Obj | None) -> dict[str, bytes]:
    """A Secret volume's files (relative path -> content): its `items`, else every key."""
    data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
    return volume_files(volume, data, f"secret {volume.get('secretName')}")


def config_map_files(volume: Obj, config_map: Obj | None) -> dict[str, bytes]:
    """A ConfigMap volume's files, the same way (its `data`, as text)."""
    data = {k: str(v).encode() for k, v in ((config_map or {}).get("data") or {}).items()}
    return volume_files(volume, data, f"configMap {volume.get('name')}")


def volume_files(volume: Obj, data: Mapping[str, bytes], what: str) -> dict[str, bytes]:
    """A volume's files from its object's `data`: its `items`, else every key."""
    items = volume.get("items")
    if not items:
        return dict(data)
    out = {}
    for it in items:
        rel = Path(it["path"])
        if rel.is_absolute() or ".." in rel.parts:  # the API server forbids both
            raise ValueError(f"{what}: volume item path {it['path']!r} leaves the volume")
        if it["key"] in data:
            out[it["path"]] = data[it["key"]]
        elif not volume.get("optional"):
            raise KeyError(f"{what} has no key {it['key']!r}")
    return out


def rewrite_path(value: str, mounts: Mapping[str, Path]) -> str:
    """A path inside a mount, as it is on this host; anything else unchanged."""
    for mount in sorted(mounts, key=len, reverse=True):
        base = mount.rstrip("/")
        if value == base or value.startswith(base + "/"):
            return str(mounts[mount]) + value[len(base) :]
    return value


def free_port(protocol: str) -> int:
    """A port nothing on this host is bound to right now (the kernel's pick)."""
    kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def free_port_both() -> int:
    """A port free for UDP and TCP alike (CoreDNS serves a server block on both): the
    kernel's pick for UDP says nothing of TCP, where a connection of another process may hold
    the same number (seen: CoreDNS failing with "address already in use")."""
    for _ in range(100):
        port = free_port("UDP")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise OSError("no port free for both UDP and TCP")


TCP_LISTEN = "0A"


def port_open(protocol: str, port: int) -> bool:
    """Whether a socket on this host listens on this TCP port, or is bound to this UDP port
    (/proc/net/{tcp,udp}{,6}). Read, not dialled: a probe connection would land in the pod's
    log as a client (a TLS handshake error, say), where the suite's mirror tests look."""
    want = f":{port:04X}"
    kind = protocol.lower()
    for name in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(want) and (kind == "udp" or fields[3] == TCP_LISTEN):
                    return True
    return False


def cri_line(stream: str, line: bytes, now: dt.datetime | None = None) -> bytes:
    """One log line as the CRI writes it: `<RFC 3339 nano> <stream> F <text>\\n`."""
    t = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{t} {stream} F ".encode() + line.rstrip(b"\n") + b"\n"


def _write_private(path: Path, content: bytes) -> None:
    """A file only we can read, from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def _append(path: Path) -> BinaryIO:
    return open(path, "ab", buffering=0)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the node emulator dies, even by SIGKILL, so no
    echo-basic outlives its node holding ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EchoBasicContainer:
    """One echo-basic process: the container's env and args, host ports behind the pod's."""

    def __init__(
        self,
        binary: Path,
        name: str,
        env: dict[str, str],
        args: list[str],
        listen_ip: str,
        log_path: Path,
        cwd: Path,
    ) -> None:
        self.binary = binary
        self.name = name
        self.ports, self.host_ports, self.env, self.args = self._ports(env, args, cwd)
        self.listen_ip = listen_ip
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self._relays: list[asyncio.Server | asyncio.DatagramTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _ports(
        self, env: dict[str, str], args: list[str], cwd: Path
    ) -> tuple[list[EchoPort], dict[str, int], dict[str, str], list[str]]:
        """The pod's ports, the host port behind each (by name), and the env and args that
        make the process listen there: echo-basic's from its port variables."""
        ports = echo_ports(env)
        host_ports = {p.env: free_port(p.protocol) for p in ports}
        return ports, host_ports, {**env, **{v: str(hp) for v, hp in host_ports.items()}}, args

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def start(self) -> None:
        self.log_path.touch(mode=0o600)
        self.proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            *self.args,
            env={"PATH": "/usr/bin:/bin", **self.env},
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, reader in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            self._spawn(self._capture(stream, reader))
        for p in self.ports:
            try:
                self._relays.append(await self._relay(p))
            except OSError as e:
                log.warning("%s: cannot listen on %s %s:%d: %s",
                            self.name, p.protocol, self.listen_ip, p.port, e)  # fmt: skip

    async def _relay(self, p: EchoPort) -> asyncio.Server | asyncio.DatagramTransport:
        """The pod's port on its own address, relayed to the process's host port."""
        target = ("127.0.0.1", self.host_ports[p.env])
        if p.protocol == "UDP":

            def udp() -> UdpRelay:
                return UdpRelay(lambda: target, self._tasks)

            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                udp, local_addr=(self.listen_ip, p.port)
            )
            return transport

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await relay_tcp(reader, writer, target)

        return await asyncio.start_server(tcp, self.listen_ip, p.port, reuse_address=True)

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _capture(self, stream: str, reader: asyncio.StreamReader) -> None:
        """Copy one output stream into the log, a CRI line per line (a local append: small
        enough to do on the loop)."""
        with _append(self.log_path) as f:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line beyond the reader's limit: take it in pieces
                    line = await reader.read(LINE_LIMIT)
                if not line:
                    return
                f.write(cri_line(stream, line))

    def answers(self) -> bool:
        """The process runs and every port of it is open (TCP: listening; UDP: bound)."""
        if self.proc is None or self.exited:
            return False
        return all(port_open(p.protocol, self.host_ports[p.env]) for p in self.ports)

    async def stop(self) -> None:
        for relay in self._relays:
            relay.close()
        self._relays.clear()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        # The output readers end at EOF once the process is gone; wait so the log is complete.
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


class CoreDNSContainer(EchoBasicContainer):
    """One CoreDNS process (the suite's UDPRoute backend): its Corefile (`-conf`, from a
    mounted ConfigMap) rewritten so that each server port is a free host port, relayed from
    the pod's own address as echo-basic's are, UDP and TCP."""

    def _ports(
        self, env: dict[str, str], args: list[str], cwd: Path
    ) -> tuple[list[EchoPort], dict[str, int], dict[str, str], list[str]]:
        conf = args.index("-conf") + 1 if "-conf" in args else -1
        if conf <= 0 or conf >= len(args):
            raise ValueError("coredns without -conf: the emulator runs it with its Corefile only")
        text = Path(args[conf]).read_text()
        ports = corefile_ports(text)
        if not ports:
            raise ValueError(f"Corefile {args[conf]}: no server block with a port")
        host = {p: free_port_both() for p in ports}
        pod_ports = [EchoPort(f"{proto}{p}", proto, p) for p in ports for proto in ("UDP", "TCP")]
        rewritten = cwd / "Corefile.kubefleet"
        rewritten.write_text(rewrite_corefile(text, host))
        return (
            pod_ports,
            {p.env: host[p.port] for p in pod_ports},
            dict(env),
            [*args[:conf], str(rewritten), *args[conf + 1 :]],
        )


class EchoBasicPod:
    """A pod's echo-basic containers, with its own directory for mounted secrets and logs."""

    def __init__(
        self,
        binary: Path,
        pod: Obj,
        pod_ip: str,
        listen_ip: str,
        node_ip: str,
        root: Path,
        secrets: Mapping[str, Obj | None],
        coredns: Path | None = None,
    ) -> None:
        meta = pod["metadata"]
        self.coredns = coredns
        self.binary, self.pod, self.pod_ip, self.listen_ip, self.node_ip = (
            binary, pod, pod_ip, listen_ip, node_ip,
        )  # fmt: skip
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{meta['namespace']}_{meta['name']}_", dir=root))
        self.ready = False
        self.containers: list[EchoBasicContainer] = []
        try:
            self._prepare(secrets)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _prepare(self, secrets: Mapping[str, Obj | None]) -> None:
        """Write the Secret volumes, work out each container's env, args and ports."""
        pod = self.pod
        volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
        written: dict[str, Path] = {}
        for name, v in volumes.items():
            if "secret" in v:
                files = secret_files(v["secret"], secrets.get(name))
            elif "configMap" in v:
                files = config_map_files(v["configMap"], secrets.get(name))
            else:
                continue
            d = self.dir / "volumes" / name
            d.mkdir(parents=True, mode=0o700)
            for rel, content in files.items():
                _write_private(d / rel, content)
            written[name] = d
        for c in echo_containers(pod, coredns=self.coredns is not None):
            mounts = {
                m["mountPath"]: written[m["name"]] / m.get("subPath", "")
                for m in c.get("volumeMounts") or []
                if m["name"] in written
            }
            env = {
                k: rewrite_path(v, mounts)
                for k, v in container_env(c, pod, self.pod_ip, self.node_ip).items()
            }
            args = [rewrite_path(expand(str(a), env), mounts) for a in c.get("args") or []]
            dns = is_coredns(c.get("image", ""))
            kind = CoreDNSContainer if dns else EchoBasicContainer
            self.containers.append(
                kind(
                    self.coredns if dns and self.coredns else self.binary,
                    c["name"],
                    env,
                    args,
                    self.listen_ip,
                    self.log_path(c["name"]),
                    self.dir,
                )
            )

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    @property
    def exited(self) -> bool:
        return any(c.exited for c in self.containers)

    async def start(self) -> None:
        for c in self.containers:
            await c.start()

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Poll until every port answers; False if a process exits or time runs out."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline and not self.exited:
            if all(c.answers() for c in self.containers):
                self.ready = True
                return True
            await asyncio.sleep(0.1)
        return False

    async def wait_exit(self) -> None:
        """Return when any of the processes exits."""
        waits = [asyncio.ensure_future(c.proc.wait()) for c in self.containers if c.proc]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def stop(self) -> None:
        self.ready = False
        for c in self.containers:
            await c.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def echo_containers(pod: Obj, coredns: bool = False) -> list[Obj]:
    """The containers that run a real program here: echo-basic (and CoreDNS, when the
    emulator has its binary)."""
    return [
        c
        for c in (pod.get("spec") or {}).get("containers") or []
        if is_echo_basic(c.get("image", "")) or (coredns and is_coredns(c.get("image", "")))
    ]


def secret_volumes(pod: Obj) -> dict[str, Obj]:
    """volume name -> its `secret` source, for the volumes an echo-basic pod needs written."""
    return {
        v["name"]: v["secret"]
        for v in (pod.get("spec") or {}).get("volumes") or []
        if "secret" in v
    }


def config_map_volumes(pod: Obj) -> dict[str, Obj]:
    """volume name -> its `configMap` source (a CoreDNS pod's Corefile)."""
    return {
        v["name"]: v["configMap"]
        for v in (pod.get("spec") or {}).get("volumes") or []
        if "configMap" in v
    }
