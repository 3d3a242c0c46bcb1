"""kube-proxy for one emulated node: every NodePort answers on the node's IP.

Like the iptables proxier, each new TCP connection or UDP flow is sent to one ready endpoint
(round-robin here). One difference a user-space proxy cannot avoid: it has accepted the
client's connection before it dials the endpoint. With iptables the client's own SYN reaches
the endpoint, so an endpoint that refuses (or never answers) is a failed *connect* for the
client, which a load balancer retries on another node (Envoy's `connect-failure`); here the
client is already connected and has sent its request, and a close would look like a request
the backend dropped, which no client may safely retry. So a TCP connection whose endpoint
cannot be reached is dialled to the next ready endpoint instead, as kube-proxy's old
userspace mode did: the outcome a client sees is the one iptables gives it. A NodePort with
no ready endpoint still closes the connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubelbd.kube import Kube
from kubelbd.kube.informer import Informer
from kubelbd.objects import ENDPOINT_SLICES, SERVICES

from ..layout import pod_listen_ip

log = logging.getLogger(__name__)

UDP_IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Binding:
    """One NodePort: which Service port it leads to."""

    namespace: str
    service: str
    port_name: str
    protocol: str
    node_port: int
    local_only: bool


class KubeProxy:
    def __init__(self, kube: Kube, node_name: str, node_ip: str) -> None:
        self.node_name = node_name
        self.node_ip = node_ip
        self.services = Informer(kube, SERVICES, lambda *_: self._changed.set())
        self.slices = Informer(kube, ENDPOINT_SLICES)
        self._changed = asyncio.Event()
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._rr: dict[tuple[str, str, str], itertools.count[int]] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.services.run())
            tg.create_task(self.slices.run())
            await self.services.synced.wait()
            try:
                while True:
                    await self._changed.wait()
                    self._changed.clear()
                    await self._sync()
            finally:
                await self.close()

    def desired(self) -> dict[tuple[str, int], Binding]:
        out: dict[tuple[str, int], Binding] = {}
        for svc in self.services.cache.values():
            spec = svc.get("spec") or {}
            if spec.get("type") not in ("NodePort", "LoadBalancer"):
                continue
            meta = svc["metadata"]
            for p in spec.get("ports") or []:
                if not p.get("nodePort"):
                    continue
                proto = p.get("protocol", "TCP")
                out[(proto, p["nodePort"])] = Binding(
                    meta["namespace"],
                    meta["name"],
                    p.get("name", ""),
                    proto,
                    p["nodePort"],
                    spec.get("externalTrafficPolicy") == "Local",
                )
        return out

    async def _sync(self) -> None:
        want = self.desired()
        for k in list(self._listeners):
            if k not in want or self._listeners[k].binding != want[k]:
                await self._listeners.pop(k).close()
        for k, b in want.items():
            if k in self._listeners or b.protocol not in ("TCP", "UDP"):
                continue
            listener = _Listener(self, b)
            try:
                await listener.start()
            except OSError as e:
                log.warning(
                    "cannot listen on %s %s:%d: %s", b.protocol, self.node_ip, b.node_port, e
                )
                continue
            self._listeners[k] = listener

    async def close(self) -> None:
        for listener in self._listeners.values():
            await listener.close()
        self._listeners.clear()

    def pick(self, b: Binding) -> tuple[str, int] | None:
        """The next ready endpoint for a Service port, as a loopback address to dial."""
        return next(iter(self.ranked(b)), None)

    def ranked(self, b: Binding) -> list[tuple[str, int]]:
        """Every ready endpoint for a Service port, as loopback addresses to dial, starting at
        the next in round-robin order."""
        candidates: list[tuple[str, int]] = []
        for sl in self.slices.cache.values():
            meta = sl["metadata"]
            if meta.get("namespace") != b.namespace:
                continue
            if (meta.get("labels") or {}).get("kubernetes.io/service-name") != b.service:
                continue
            port = next(
                (
                    p
                    for p in sl.get("ports") or []
                    if p.get("name", "") == b.port_name and p.get("protocol", "TCP") == b.protocol
                ),
                None,
            )
            if port is None or port.get("port") is None:
                continue
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                if b.local_only and ep.get("nodeName") != self.node_name:
                    continue
                for addr in ep.get("addresses") or []:
                    candidates.append((addr, port["port"]))
        if not candidates:
            return []
        candidates.sort()
        counter = self._rr.setdefault((b.namespace, b.service, b.port_name), itertools.count())
        first = next(counter) % len(candidates)
        return [_dialable(a) for a in candidates[first:] + candidates[:first]]


def _dialable(endpoint: tuple[str, int]) -> tuple[str, int]:
    addr, port = endpoint
    try:
        return pod_listen_ip(addr), port
    except ValueError:
        return addr, port  # hostNetwork pods listen on their node's loopback IP


class _Listener:
    def __init__(self, proxy: KubeProxy, binding: Binding) -> None:
        self.proxy = proxy
        self.binding = binding
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        ip, port = self.proxy.node_ip, self.binding.node_port
        if self.binding.protocol == "UDP":
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: UdpRelay(lambda: self.proxy.pick(self.binding), self._tasks),
                local_addr=(ip, port),
            )
        else:
            self._server = await asyncio.start_server(self._tcp, ip, port, reuse_address=True)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await relay_tcp(reader, writer, *self.proxy.ranked(self.binding))
        finally:
            self._tasks.discard(task)


async def relay_tcp(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *targets: tuple[str, int]
) -> None:
    """Splice one accepted connection to the first of `targets` that takes it (none: drop
    it), both ways, until both sides are done; then close it."""
    try:
        for target in targets:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*target), 3)
                break
            except (TimeoutError, OSError):
                continue
        else:
            return
        try:
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        finally:
            up_w.close()
    finally:
        writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.close()


class UdpRelay(asyncio.DatagramProtocol):
    """A front socket (a NodePort, a pod's port): one upstream socket per client address, like
    a conntrack entry, to the target `pick` names when the flow starts."""

    def __init__(
        self, pick: Callable[[], tuple[str, int] | None], tasks: set[asyncio.Task[None]]
    ) -> None:
        self.pick = pick
        self.tasks = tasks
        self.flows: dict[tuple[str, int], _UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is not None:
            if not flow.expired():
                flow.send(data)
                return
            flow.close()
        target = self.pick()
        if target is None:
            return
        flow = _UdpFlow(self, addr)
        self.flows[addr] = flow
        flow.pending.append(data)
        task = asyncio.get_running_loop().create_task(flow.open(target))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        for f in self.flows.values():
            f.close()


class _UdpFlow(asyncio.DatagramProtocol):
    def __init__(self, front: UdpRelay, client: tuple[str, int]) -> None:
        self.front = front
        self.client = client
        self.pending: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()

    async def open(self, target: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: self, remote_addr=target
            )
        except OSError:
            self.front.flows.pop(self.client, None)
            return
        for d in self.pending:
            self.transport.sendto(d)
        self.pending.clear()

    def expired(self) -> bool:
        return time.monotonic() - self.last > UDP_IDLE_TIMEOUT

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = time.monotonic()
        self.front.transport.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        self.front.flows.pop(self.client, None)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
