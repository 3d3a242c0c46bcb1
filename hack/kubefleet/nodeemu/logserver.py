"""The kubelet's HTTPS endpoint, as far as `kubectl logs` needs it.

The API server serves GET pods/<name>/log by calling the node's kubelet at
https://<InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/containerLogs/<ns>/<pod>/
<container> with the same options (sinceTime, sinceSeconds, tailLines, limitBytes, timestamps,
follow). It presents the fleet's kubelet client certificate and checks ours against the
cluster CA (the fleet's --kubelet-* flags); we accept only clients the cluster CA signed.
Logs are the CRI files echobasic.py writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

KUBELET_PORT = 10250
FOLLOW_POLL = 0.2

#: (namespace, pod, container) -> its log file; None: no such pod or container here.
#: A pod that runs but has written nothing (or whose container is not captured) gives a path
#: that need not exist: its log is empty.
LogLookup = Callable[[str, str, str], "Path | None"]


@dataclass(frozen=True)
class LogOptions:
    since: dt.datetime | None = None
    tail_lines: int | None = None
    limit_bytes: int | None = None
    timestamps: bool = False
    follow: bool = False

    @classmethod
    def parse(cls, query: dict[str, str], now: dt.datetime | None = None) -> LogOptions:
        """PodLogOptions as query parameters; ValueError for a malformed one."""
        since = None
        if query.get("sinceTime"):
            since = _parse_time(query["sinceTime"])
        elif query.get("sinceSeconds"):
            since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(
                seconds=int(query["sinceSeconds"])
            )
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        return cls(
            since=since,
            tail_lines=tail,
            limit_bytes=limit,
            timestamps=query.get("timestamps") == "true",
            follow=query.get("follow") == "true",
        )


def _parse_time(s: str) -> dt.datetime:
    """RFC 3339 with up to nanoseconds (Python keeps microseconds); naive means UTC."""
    s = re.sub(r"(\.\d{6})\d+", r"\1", s.strip().replace("Z", "+00:00"))
    t = dt.datetime.fromisoformat(s)
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def render(cri: bytes, opts: LogOptions) -> bytes:
    """CRI log lines as the kubelet returns them: the text only (or `<time> <text>` with
    timestamps), lines before `since` left out, then the last `tail_lines`, at most
    `limit_bytes`."""
    out: list[bytes] = []
    for raw in cri.splitlines():
        parts = raw.split(b" ", 3)
        if len(parts) < 4:
            continue
        stamp, _stream, _tag, text = parts
        if opts.since is not None:
            try:
                if _parse_time(stamp.decode()) < opts.since:
                    continue
            except ValueError:
                continue
        out.append((stamp + b" " if opts.timestamps else b"") + text + b"\n")
    if opts.tail_lines is not None:
        out = out[-opts.tail_lines :] if opts.tail_lines > 0 else []
    body = b"".join(out)
    return body[: opts.limit_bytes] if opts.limit_bytes is not None else body


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def app(lookup: LogLookup) -> web.Application:
    async def container_logs(request: web.Request) -> web.StreamResponse:
        ns, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        path = lookup(ns, pod, container)
        if path is None:
            raise web.HTTPNotFound(text=f'pod "{ns}/{pod}" container "{container}" not found\n')
        if request.query.get("previous") == "true":
            raise web.HTTPBadRequest(
                text=f'previous terminated container "{container}" in pod "{pod}" not found\n'
            )
        try:
            opts = LogOptions.parse(dict(request.query))
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from e
        data = path.read_bytes() if path.exists() else b""
        if not opts.follow:
            return web.Response(body=render(data, opts), content_type="text/plain")
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        await resp.write(render(data, opts))
        offset = len(data)
        # Follow until the pod goes (its file with it) or the client hangs up.
        while lookup(ns, pod, container) is not None:
            await asyncio.sleep(FOLLOW_POLL)
            try:
                more = _read_from(path, offset)
            except FileNotFoundError:
                break
            complete = more[: more.rfind(b"\n") + 1]
            if complete:
                offset += len(complete)
                await resp.write(render(complete, LogOptions(timestamps=opts.timestamps)))
        await resp.write_eof()
        return resp

    application = web.Application()
    application.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    return application


class KubeletServer:
    """The endpoint on the node's IP: start() it, then close() it."""

    def __init__(self, lookup: LogLookup, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.runner = web.AppRunner(app(lookup), access_log=None)
        self.host, self.port, self.ctx = host, port, ctx

    async def start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, ssl_context=self.ctx)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        await self.runner.cleanup()
