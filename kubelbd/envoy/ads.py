"""What Envoy gets over one gRPC stream (delta ADS) on a Unix socket: the certificates, the
clusters, and the HTTP front listener's host scopes (scoped routes).

Certificates:

Envoy watches every file subscription with its own inotify instance, and a Linux user has 128
by default: one SDS file per certificate made Envoy abort at about 107 certificates (and again
on every restart). Here every certificate travels on one stream instead, whatever their
number: Envoy subscribes to the names its HTTPS listener uses, kubelbd sends each certificate
once and again only when it changes; a rotation is one small message that touches neither the
listener nor its connections (docs/benchmarks.md, "Certificates at scale", has the
measurements against the alternatives).

Host scopes (envoy/scopes.py): a route table per host, chosen in the front listener's own
connection manager by the Host header, so a request to a host takes no hop through a shard's
internal listener, and a change to one host is one small message Envoy applies in about a
millisecond, whatever the number of hosts (a route table file is rebuilt whole). Files cannot
carry them: a file subscription holds one route table.

Clusters, likewise: a cluster file is one DiscoveryResponse that Envoy parses whole for any
change, 50 ms for a backend's new cluster among 1,100 on a loaded machine, where one cluster
over the stream costs what it is (docs/benchmarks.md, "Clusters over the stream").

Scopes and clusters are wildcard collections: Envoy subscribes to every resource of the type;
kubelbd sends each once, again when it changes, and tells Envoy which are gone, clusters
before scopes (a scope may name a new cluster). Which publish Envoy has applied is counted in
generations: every change of either is one, and a stream that acknowledged a response holds
that type as it was when that response was made (responses carry all that stream lacked).

Envoy keeps what it received when the stream breaks (kubelbd restarting) and reconnects,
telling what it holds, so a restarted kubelbd sends only what changed meanwhile; a type only
once kubelbd has published it (`serve`), so a restart never takes one away meanwhile. What
Envoy does not keep is anything across its own restart: an Envoy that restarts while kubelbd
is down has no cluster and no scope until kubelbd is back (with two replicas, the other
pod's Envoy serves meanwhile; a file would have kept them, at the cost above).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import inf
from pathlib import Path
from typing import Any

import anyio
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream

from ..ir.tls import CertificateData
from . import protos
from .type_urls import CLUSTER, SCOPED_ROUTE, SDS_SECRET

log = logging.getLogger(__name__)

# Envoy's generated messages (xds-protos, as for the files: envoy/protos.py).
_Secret = protos.message_class(SDS_SECRET)
_DeltaRequest = protos.message_class("envoy.service.discovery.v3.DeltaDiscoveryRequest")
_DeltaResponse = protos.message_class("envoy.service.discovery.v3.DeltaDiscoveryResponse")
_Resource = protos.message_class("envoy.service.discovery.v3.Resource")


@dataclass
class DeltaRequest:
    """What kubelbd reads of a DeltaDiscoveryRequest."""

    type_url: str = ""
    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)
    #: what Envoy already holds when it (re)connects: name -> version
    initial_versions: dict[str, str] = field(default_factory=dict)
    nonce: str = ""  # of the response this acknowledges (or rejects)
    error: str | None = None  # set: the response was rejected, and why


def parse_delta_request(data: bytes) -> DeltaRequest:
    """The request's fields kubelbd uses; DecodeError if it does not parse."""
    m: Any = _DeltaRequest.FromString(data)
    error = None
    if m.HasField("error_detail"):
        error = m.error_detail.message or f"code {m.error_detail.code}"
    return DeltaRequest(
        type_url=m.type_url,
        subscribe=list(m.resource_names_subscribe),
        unsubscribe=list(m.resource_names_unsubscribe),
        initial_versions=dict(m.initial_resource_versions),
        nonce=m.response_nonce,
        error=error,
    )


def secret(name: str, cert_pem: bytes, key_pem: bytes) -> bytes:
    """An SDS Secret holding one certificate and its key, inline."""
    certificate = {"certificate_chain": {"inline_bytes": cert_pem}}
    certificate["private_key"] = {"inline_bytes": key_pem}
    return _Secret(name=name, tls_certificate=certificate).SerializeToString()


def delta_response(
    nonce: str,
    type_url: str,
    resources: list[tuple[str, str, bytes]],
    removed: list[str] | None = None,
) -> bytes:
    """A DeltaDiscoveryResponse: (name, version, encoded resource) each, and the names gone.
    A resource's bytes are the message's own (a Secret's) or already an Any (a scope's or a
    cluster's, as envoy/protos.py encodes them)."""
    response: Any = _DeltaResponse(
        system_version_info=nonce, type_url=type_url, nonce=nonce, removed_resources=removed or []
    )
    head: bytes = response.SerializeToString()
    return head + b"".join(
        protos.length_delimited(_RESOURCES_FIELD, _resource(name, version, type_url, body))
        for name, version, body in resources
    )


def _resource(name: str, version: str, type_url: str, body: bytes) -> bytes:
    if type_url not in WILDCARD:
        body = any_pb2.Any(type_url=type_url, value=body).SerializeToString()
    head: bytes = _Resource(name=name, version=version).SerializeToString()
    return head + protos.length_delimited(_ANY_FIELD, body)


# Messages concatenate: a response is its own fields, then each resource appended as bytes
# (a scope or a cluster arrives encoded as an Any already, envoy/protos.py, and is not parsed
# again).
_RESOURCES_FIELD = _DeltaResponse.DESCRIPTOR.fields_by_name["resources"].number
_ANY_FIELD = _Resource.DESCRIPTOR.fields_by_name["resource"].number


#: seconds before scopes or clusters Envoy rejected are sent again (what it rejected may name
#: a cluster it had not read yet; one it rejects for good is logged at every try, not sent in
#: a loop)
RETRY_REJECTED = 5.0

#: the types Envoy subscribes to whole (wildcard), in the order a wake sends them: a cluster
#: before the scope that names it
WILDCARD = (CLUSTER, SCOPED_ROUTE)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "DeltaAggregatedResources"


class _Bytes(CodecBase):
    """Messages as their bytes both ways: kubelbd reads and builds them itself (above)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class _Server(Server):
    """grpclib's server, which also closes its connections when it stops: asyncio's server
    (before Python 3.13's `close_clients`) only stops listening, and Envoy would keep its
    stream to a secret server that is gone (a new term's, or a test's, is another one).
    `_protocol_factory` is grpclib's own, not its documented API: test_ads's restart, where
    Envoy must reconnect to the next server, fails if an upgrade moves it."""

    def __init__(self, handlers: list[Any], codec: CodecBase) -> None:
        super().__init__(handlers, codec=codec)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for protocol in list(self._protocols):
            if hasattr(protocol, "connection"):  # made: connection_made ran
                protocol.connection.close()


@dataclass
class _Collection:
    """One wildcard type on one stream: what Envoy holds or is sent, what is due to it."""

    held: dict[str, str] = field(default_factory=dict)
    due: set[str] = field(default_factory=set)
    #: the generation Envoy acknowledged holding this type in full; a rejection stops it
    applied: int = 0
    #: resources Envoy rejected and has not yet accepted since: sent again at the stream's
    #: `retry_at`
    rejected: set[str] = field(default_factory=set)


@dataclass(eq=False)  # one per connection, compared by identity
class _Stream:
    """One Envoy connection: what it asked for, what it was sent and what it accepted."""

    peer: str
    subscribed: set[str] = field(default_factory=set)  # secrets
    sent: dict[str, str] = field(default_factory=dict)  # secret -> version Envoy has or is sent
    #: nonce -> (type, what it carried: name -> version, None for a name removed; the
    #: generation it brings the stream's type to)
    unanswered: dict[str, tuple[str, dict[str, str | None], int]] = field(default_factory=dict)
    #: the wildcard types Envoy subscribed to (WILDCARD), once it did
    collections: dict[str, _Collection] = field(default_factory=dict)
    retry_at: float = 0.0
    wake: anyio.Event = field(default_factory=anyio.Event)

    def settled(self, secrets: Mapping[str, tuple[str, bytes]]) -> bool:
        """Whether Envoy answered every secret response and holds every secret served."""
        return all(kind != SDS_SECRET for kind, _, _ in self.unanswered.values()) and all(
            self.sent.get(n) == v for n, (v, _) in secrets.items()
        )

    def rejected(self) -> bool:
        return any(c.rejected for c in self.collections.values())


class DiscoveryServer:
    """Holds what kubelbd serves over ADS and pushes it to every connected Envoy."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._secrets: dict[str, tuple[str, bytes]] = {}  # name -> (version, encoded Secret)
        #: type -> name -> (version, encoded Any), for each WILDCARD type kubelbd has published
        self._served: dict[str, dict[str, tuple[str, bytes]]] = {}
        #: every change of a wildcard type moves it; None until the first (nothing served yet)
        self.generation: int | None = None
        self._streams: set[_Stream] = set()
        self._nonces = itertools.count(1)
        self._connections = itertools.count(1)
        self._changed = anyio.Event()
        self._server: _Server | None = None

    # ---- what kubelbd serves ----------------------------------------------------------------

    def put(self, certificates: Iterable[CertificateData]) -> None:
        """Serve these, replacing older versions (a certificate's version is its digest)."""
        for data in certificates:
            if self._secrets.get(data.name, ("",))[0] != data.digest:
                body = secret(data.name, data.cert_pem, data.key_pem)
                self._secrets[data.name] = (data.digest, body)
        self._wake_all()

    def remove(self, names: Iterable[str]) -> None:
        """Stop serving these (no listener names them any more). Envoy is not told: it drops
        a secret when the last listener naming it goes."""
        for name in names:
            self._secrets.pop(name, None)

    def names(self) -> set[str]:
        return set(self._secrets)

    def settled(self) -> bool:
        """Whether Envoy holds every certificate served, in its current version (and answered
        every response). Called once Envoy applied the listener that names them all, which
        is when it asks for them."""
        if not self._secrets:
            return True
        return bool(self._streams) and all(s.settled(self._secrets) for s in self._streams)

    async def wait_settled(self, timeout: float | None) -> bool:
        """True once `settled`; False after `timeout` seconds."""
        return await self._wait(self.settled, timeout)

    def serve(self, type_url: str, changes: Mapping[str, tuple[str, bytes] | None]) -> int:
        """Serve these resources of a WILDCARD type ((version, encoded Any) each), stop
        serving those given None; the generation that holds them (the first call for a type
        starts serving it)."""
        self.generation = (self.generation or 0) + 1
        served = self._served.setdefault(type_url, {})
        for name, resource in changes.items():
            if resource is None:
                served.pop(name, None)
            else:
                served[name] = resource
        for stream in self._streams:
            if type_url in stream.collections:
                stream.collections[type_url].due |= changes.keys()
        self._wake_all()
        return self.generation

    def applied(self, generation: int | None) -> bool:
        """Whether every Envoy holds every type kubelbd serves as of `generation` (None:
        nothing published yet), and at least one subscribed to each."""
        if generation is None:
            return True
        for type_url in self._served:
            streams = [s.collections[type_url] for s in self._streams if type_url in s.collections]
            if not streams or any(c.applied < generation for c in streams):
                return False
        return True

    async def wait_applied(self, generation: int | None, timeout: float | None) -> bool:
        return await self._wait(lambda: self.applied(generation), timeout)

    async def _wait(self, check: Any, timeout: float | None) -> bool:
        with anyio.move_on_after(timeout):
            while not check():
                self._changed = anyio.Event()
                await self._changed.wait()
            return True
        return False

    def _wake_all(self) -> None:
        for stream in self._streams:
            stream.wake.set()

    # ---- the gRPC side ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the socket: readable and writable by the group (the Envoy sidecar shares
        the volume's group), not by others. grpclib, not grpcio: a pure-Python server on the
        event loop kubelbd already runs, where grpcio's import alone cost every kubelbd
        process 22 MiB of RSS (its C core), for one stream to one Envoy."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # left by a previous run
        server = _Server([self], codec=_Bytes())
        await server.start(path=str(self.socket_path))
        os.chmod(self.socket_path, 0o660)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def __mapping__(self) -> dict[str, Handler]:
        """The one method served (grpclib's `IServable`)."""
        return {
            f"/{SERVICE}/{METHOD}": Handler(self._delta, Cardinality.STREAM_STREAM, bytes, bytes)
        }

    async def _delta(self, grpc_stream: Stream[bytes, bytes]) -> None:
        """One Envoy's stream: read its requests in a task, answer with what it lacks."""
        stream = _Stream(f"connection {next(self._connections)}")
        self._streams.add(stream)
        log.info("ads: envoy connected (%s)", stream.peer)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, grpc_stream, stream, tg.cancel_scope)
                while True:
                    rejected = stream.rejected()
                    with anyio.CancelScope(deadline=stream.retry_at if rejected else inf):
                        await stream.wake.wait()
                    stream.wake = anyio.Event()
                    if rejected and anyio.current_time() >= stream.retry_at:
                        for collection in stream.collections.values():
                            collection.due |= collection.rejected
                        stream.retry_at = anyio.current_time() + RETRY_REJECTED
                    responses = [self._secrets_response(stream)]
                    responses += [self._wildcard_response(stream, t) for t in WILDCARD]
                    for response in responses:
                        if response is not None:
                            await grpc_stream.send_message(response)
        finally:
            self._streams.discard(stream)
            self._changed.set()
            log.info("ads: envoy disconnected (%s)", stream.peer)

    async def _read(
        self, grpc_stream: Stream[bytes, bytes], stream: _Stream, scope: anyio.CancelScope
    ) -> None:
        try:
            while (raw := await grpc_stream.recv_message()) is not None:
                try:
                    request = parse_delta_request(raw)
                except DecodeError as e:
                    log.warning("ads: unreadable request from %s: %s", stream.peer, e)
                    continue
                self._on_request(stream, request)
        finally:
            scope.cancel()  # Envoy hung up: end the response side too

    def _on_request(self, stream: _Stream, request: DeltaRequest) -> None:
        if request.type_url != SDS_SECRET and request.type_url not in WILDCARD:
            return  # kubelbd serves nothing else over ADS
        if request.nonce:
            self._answered(stream, request)
        if request.type_url == SDS_SECRET:
            stream.sent.update(request.initial_versions)
            stream.subscribed |= set(request.subscribe)
            stream.subscribed -= set(request.unsubscribe)
            for name in request.unsubscribe:
                stream.sent.pop(name, None)
        elif request.type_url not in stream.collections:
            # The first request: wildcard (Envoy asks for every one), telling what it holds.
            held = dict(request.initial_versions)
            served = self._served.get(request.type_url, {})
            stream.collections[request.type_url] = _Collection(held, set(held) | set(served))
        stream.wake.set()
        self._changed.set()

    def _answered(self, stream: _Stream, request: DeltaRequest) -> None:
        kind, sent, generation = stream.unanswered.pop(request.nonce, (request.type_url, {}, 0))
        collection = stream.collections.get(kind)
        if request.error is None:
            if collection is not None:
                collection.rejected -= sent.keys()
                if not collection.rejected:
                    collection.applied = max(collection.applied, generation)
            return
        # Every resource is checked before it is served (ir.tls for certificates, protos for
        # scopes and clusters): this would be a gap in those checks. Envoy keeps what it had;
        # the stream's type is not counted as applied until it accepts them (so no status
        # says otherwise), and they are sent again after a while: what Envoy holds of them is
        # no longer known.
        log.error("ads: envoy rejected %s: %s", ", ".join(sorted(sent)), request.error)
        if collection is not None:
            collection.rejected |= sent.keys()
            stream.retry_at = anyio.current_time() + RETRY_REJECTED
            for name in sent:
                collection.held.pop(name, None)

    def _secrets_response(self, stream: _Stream) -> bytes | None:
        """The secrets this Envoy asked for and does not hold in their current version."""
        due = {
            name: self._secrets[name]
            for name in sorted(stream.subscribed)
            if name in self._secrets and stream.sent.get(name) != self._secrets[name][0]
        }
        if not due:
            return None
        nonce = str(next(self._nonces))
        versions = {name: version for name, (version, _) in due.items()}
        stream.sent.update(versions)
        stream.unanswered[nonce] = (SDS_SECRET, dict(versions), 0)
        resources = [(name, version, body) for name, (version, body) in due.items()]
        return delta_response(nonce, SDS_SECRET, resources)

    def _wildcard_response(self, stream: _Stream, type_url: str) -> bytes | None:
        """The resources of a wildcard type that changed since this Envoy was last sent them,
        and those gone; once kubelbd has published the type (before, a restarted kubelbd would
        take every one away)."""
        collection = stream.collections.get(type_url)
        served = self._served.get(type_url)
        if collection is None or served is None or self.generation is None:
            return None
        resources: list[tuple[str, str, bytes]] = []
        removed: list[str] = []
        carried: dict[str, str | None] = {}
        for name in sorted(collection.due):
            resource = served.get(name)
            if resource is None:
                if collection.held.pop(name, None) is not None:
                    removed.append(name)
                    carried[name] = None
            elif collection.held.get(name) != resource[0]:
                collection.held[name] = carried[name] = resource[0]
                resources.append((name, *resource))
        collection.due = set()
        waiting = any(kind == type_url for kind, _, _ in stream.unanswered.values())
        if not carried:
            if not waiting and not collection.rejected:
                collection.applied = self.generation  # it holds them all already
                self._changed.set()
            return None
        nonce = str(next(self._nonces))
        stream.unanswered[nonce] = (type_url, carried, self.generation)
        return delta_response(nonce, type_url, resources, removed)
