"""Does a backend's NodePort lead to a pod yet? One connection per node, as Envoy would make.

A new NodePort (a new twin, a Service a route did not use before) is not served at once: the
tenant's kube-proxy has to program it, and until then a node refuses the connection, or
accepts it and closes it (no endpoint yet). Envoy's retry policy takes a refused connect to
another node, but a request on a connection closed under it is answered 503. So a route's
switch to such a backend waits (dataplane.holds) until a node answers: the request bytes
Envoy would send (HTTP/1.1, or HTTP/2's preface for an h2c backend; a TLS handshake for a
backend behind a BackendTLSPolicy) get bytes back, and no node that accepts the connection
closes it without answering.
"""

from __future__ import annotations

import ssl
from enum import Enum
from functools import cache

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from ..ir.http import Cluster

#: what a node says to one connection within this long counts
TIMEOUT = 1.0
HTTP1 = b"HEAD / HTTP/1.1\r\nHost: kubelbd-probe\r\nConnection: close\r\n\r\n"
#: HTTP/2's connection preface and an empty SETTINGS frame: an h2c server answers SETTINGS
HTTP2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


class Answer(Enum):
    ANSWERS = "answers"
    REFUSED = "refused"  # or unreachable: Envoy's retries take such a node's requests elsewhere
    CLOSED = "closed"  # accepted and closed, or silent: a request there would fail


@cache
def _no_verify() -> ssl.SSLContext:
    """Made once: a probe every 50 ms need not load the system's CA certificates each time
    (none are checked: the handshake completing is the answer)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _ask(cluster: Cluster, address: str) -> Answer:
    try:
        with anyio.fail_after(TIMEOUT):
            stream: ByteStream = await anyio.connect_tcp(address, cluster.port)
    except (OSError, TimeoutError):
        return Answer.REFUSED
    try:
        with anyio.fail_after(TIMEOUT):
            async with stream:
                if cluster.tls is not None:
                    # The handshake is the answer: a connection closed unserved never finishes it.
                    await TLSStream.wrap(
                        stream, server_side=False, hostname=cluster.tls.hostname,
                        ssl_context=_no_verify(), standard_compatible=False,
                    )  # fmt: skip
                    return Answer.ANSWERS
                await stream.send(HTTP2 if cluster.http2 else HTTP1)
                await stream.receive(1)
                return Answer.ANSWERS
    except (OSError, TimeoutError, ssl.SSLError, anyio.EndOfStream, anyio.BrokenResourceError):
        return Answer.CLOSED


async def answers(cluster: Cluster) -> bool:
    """Whether the backend answers through its NodePort: some node answers, and none that
    accepts the connection closes it unanswered (nodes are asked together)."""
    results: list[Answer] = []

    async def ask(address: str) -> None:
        results.append(await _ask(cluster, address))

    async with anyio.create_task_group() as tg:
        for address in cluster.addresses:
            tg.start_soon(ask, address)
    return Answer.ANSWERS in results and Answer.CLOSED not in results
