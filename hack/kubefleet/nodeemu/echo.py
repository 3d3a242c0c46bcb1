"""What an emulated pod runs on each declared containerPort.

TCP: a connection that opens with an HTTP/1.x request line gets echo-basic style JSON per
request (keep-alive honoured); any other bytes are echoed back verbatim. A PROXY protocol v2
header, if present, is consumed first and reported in the HTTP echo as `proxyProtocol`.
UDP: every datagram is sent back to its sender.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import struct
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PP2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
REQUEST_LINE = re.compile(rb"^([A-Z]{3,10}) (\S+) (HTTP/1\.[01])\r?\n")
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class PodIdentity:
    pod: str
    namespace: str
    node: str
    pod_ip: str
    port: int


def parse_proxy_v2(header: bytes) -> dict[str, Any]:
    """Decode the address block of a PROXY v2 header (16-byte preamble + addresses)."""
    ver_cmd, fam, length = header[12], header[13], struct.unpack("!H", header[14:16])[0]
    body = header[16 : 16 + length]
    out: dict[str, Any] = {
        "version": ver_cmd >> 4,
        "command": "PROXY" if ver_cmd & 0xF else "LOCAL",
    }
    if fam >> 4 == 1 and len(body) >= 12:  # AF_INET
        src, dst = body[0:4], body[4:8]
        sport, dport = struct.unpack("!HH", body[8:12])
        out.update(
            source=f"{ipaddress.IPv4Address(src)}:{sport}",
            destination=f"{ipaddress.IPv4Address(dst)}:{dport}",
            transport="UDP" if fam & 0xF == 2 else "TCP",
        )
    elif fam >> 4 == 2 and len(body) >= 36:  # AF_INET6
        src, dst = body[0:16], body[16:32]
        sport, dport = struct.unpack("!HH", body[32:36])
        out.update(
            source=f"[{ipaddress.IPv6Address(src)}]:{sport}",
            destination=f"[{ipaddress.IPv6Address(dst)}]:{dport}",
            transport="UDP" if fam & 0xF == 2 else "TCP",
        )
    return out


class _Conn:
    def __init__(
        self, ident: PodIdentity, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ):
        self.ident = ident
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.proxy: dict[str, Any] | None = None

    async def _fill(self, timeout: float | None = None) -> bool:
        chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def run(self) -> None:
        try:
            if not await self._fill():
                return
            if self.buf.startswith(PP2_SIGNATURE[: len(self.buf)]):
                while len(self.buf) < 16 and await self._fill(5):
                    pass
                if self.buf.startswith(PP2_SIGNATURE) and len(self.buf) >= 16:
                    total = 16 + struct.unpack("!H", self.buf[14:16])[0]
                    while len(self.buf) < total and await self._fill(5):
                        pass
                    self.proxy = parse_proxy_v2(self.buf[:total])
                    self.buf = self.buf[total:]
                    if not self.buf and not await self._fill():
                        return
            if await self._looks_like_http():
                await self._serve_http()
            else:
                await self._echo()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()

    async def _looks_like_http(self) -> bool:
        # Wait for a whole first line, but only while it still could be a request line.
        while b"\n" not in self.buf:
            if not re.match(rb"^[A-Z]{0,10}( \S*( H?T?T?P?/?1?\.?[01]?\r?)?)?$", self.buf):
                return False
            if len(self.buf) > 8192:
                return False
            try:
                if not await self._fill(1.0):
                    return False
            except TimeoutError:
                return False
        return REQUEST_LINE.match(self.buf) is not None

    async def _echo(self) -> None:
        while True:
            if self.buf:
                self.writer.write(self.buf)
                await self.writer.drain()
                self.buf = b""
            if not await self._fill():
                return

    async def _serve_http(self) -> None:
        while True:
            while b"\r\n\r\n" not in self.buf:
                if len(self.buf) > MAX_HEAD or not await self._fill():
                    return
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, proto = lines[0].split(" ", 2)
            headers: dict[str, list[str]] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.setdefault(_canonical(name.strip()), []).append(value.strip())
            body = await self._read_body(headers)
            host = headers.get("Host", [""])[0]
            answer = {
                "path": target,
                "host": host,
                "method": method,
                "proto": proto,
                "headers": headers,
                "namespace": self.ident.namespace,
                "ingress": "",
                "service": "",
                "pod": self.ident.pod,
                "node": self.ident.node,
                "podIP": self.ident.pod_ip,
                "port": self.ident.port,
                "bodyLength": len(body),
            }
            if self.proxy is not None:
                answer["proxyProtocol"] = self.proxy
            payload = json.dumps(answer).encode()
            conn_hdr = headers.get("Connection", [""])[0].lower()
            close = conn_hdr == "close" or (proto == "HTTP/1.0" and conn_hdr != "keep-alive")
            resp = (
                f"{proto} 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                f"X-Pod: {self.ident.pod}\r\n"
                f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
            ).encode() + (b"" if method == "HEAD" else payload)
            self.writer.write(resp)
            await self.writer.drain()
            if close:
                return

    async def _read_body(self, headers: dict[str, list[str]]) -> bytes:
        if "chunked" in headers.get("Transfer-Encoding", [""])[0].lower():
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not await self._fill():
                        return body
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    if not await self._fill():
                        return body
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    return body
        length = int(headers.get("Content-Length", ["0"])[0] or 0)
        while len(self.buf) < length:
            if not await self._fill():
                break
        body, self.buf = self.buf[:length], self.buf[length:]
        return body


def _canonical(name: str) -> str:
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class PortServer:
    """One declared containerPort of one pod: a TCP server or a UDP socket."""

    def __init__(self, ident: PodIdentity, listen_ip: str, protocol: str) -> None:
        self.ident = ident
        self.listen_ip = listen_ip
        self.protocol = protocol
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.protocol == "UDP":
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                _UdpEcho, local_addr=(self.listen_ip, self.ident.port), reuse_port=False
            )
            self._udp = transport
        else:
            self._server = await asyncio.start_server(
                self._accept, self.listen_ip, self.ident.port, reuse_address=True
            )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await _Conn(self.ident, reader, writer).run()
        finally:
            self._conns.discard(task)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await self._server.wait_closed()
