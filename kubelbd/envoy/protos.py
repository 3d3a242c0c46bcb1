"""Envoy's resources in their binary form (Protocol Buffers), as the files hold them.

Envoy reads a file by its extension, and a `.pb` file four times faster than the same
resources as JSON: a Gateway route table of 500 virtual hosts took Envoy a median 81 ms to
apply as JSON and 21 ms as protobuf (most of the JSON time is protobuf's JSON parser in
Envoy's main thread, which every file change waits for). The renderer's dicts stay the
readable form (goldens, tests, the status page); this module turns them into messages with
the generated classes of Envoy's API (`xds-protos`, gRPC's build of envoyproxy/data-plane-api)
and protobuf's own JSON mapping, so a field Envoy does not have, or a value of the wrong
type, fails here, in kubelbd, with the field's path, instead of in Envoy (Envoy's own rules
on values, e.g. a regex's syntax, are the checks' before this, in sources/).

protobuf's JSON mapping runs in Python (about 0.3 ms per cluster or virtual host), so the
publisher remembers each resource's bytes, and a route table's each virtual host's
(`Remembered`): a table is a new dict on every change of one of its hosts, its hosts are not.
"""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from operator import itemgetter
from typing import Any, cast

from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from .type_urls import ROUTE_CONFIG, SCOPED_ROUTE

#: The generated modules of every type kubelbd's resources name (type_urls.py): importing one
#: registers its messages in the default pool, where an `@type` is looked up.
#: tests/test_protos.py checks that each type URL resolves.
_MODULES = (
    "envoy.service.discovery.v3.discovery_pb2",
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.config.route.v3.scoped_route_pb2",
    "envoy.extensions.filters.http.lua.v3.lua_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.network.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.udp.udp_proxy.v3.udp_proxy_pb2",
    "envoy.extensions.filters.udp.udp_proxy.v3.route_pb2",
    "envoy.extensions.transport_sockets.proxy_protocol.v3.upstream_proxy_protocol_pb2",
    "envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2",
    "envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.transport_sockets.tls.v3.secret_pb2",
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.header_mutation_pb2",
    "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
)
for _module in _MODULES:
    importlib.import_module(_module)

_POOL = descriptor_pool.Default()
log = logging.getLogger(__name__)


def message_class(type_url: str) -> type[Message]:
    """The generated class of a type URL (KeyError when no module above defines it)."""
    name = type_url.rpartition("/")[2]
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name))


#: what encoding a resource Envoy's API cannot hold raises (ParseError names the field)
Unencodable = (json_format.ParseError, ValueError, TypeError, KeyError)


def _encode(type_url: str, fields: dict[str, Any]) -> bytes:
    """A message of `type_url` from its JSON form; one of `Unencodable` if it is none."""
    message = json_format.ParseDict(fields, message_class(type_url)())
    return message.SerializeToString(deterministic=True)  # map order too: stable versions


#: small messages' bytes by their JSON form's repr (`_encode_small`), the least recently used
#: forgotten beyond this many
SMALL_MEMO = 512
#: what counts as small: the repr's length, in characters
SMALL = 2048
_small: OrderedDict[tuple[str, str], bytes] = OrderedDict()


def _encode_small(type_url: str, fields: dict[str, Any]) -> bytes:
    """`_encode`, remembered for the small parts every change encodes anew although they do
    not change: a route table's own fields (its name, its headers), a shard's front host
    without its domains (its one route). The JSON mapping costs ~0.4 ms a message whatever
    its size, a tenth of a route change's time in kubelbd; the repr, microseconds. Equal
    reprs are equal JSON forms, so equal bytes; a large message is encoded every time (its
    repr would be a large key to keep)."""
    text = repr(fields)
    if len(text) > SMALL:
        return _encode(type_url, fields)
    key = (type_url, text)
    known = _small.get(key)
    if known is not None:
        _small.move_to_end(key)
        return known
    out = _small[key] = _encode(type_url, fields)
    if len(_small) > SMALL_MEMO:
        _small.popitem(last=False)
    return out


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field `number` of a message, holding `payload` (a string, bytes or a message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_RouteConfiguration = message_class(ROUTE_CONFIG)
_VIRTUAL_HOSTS = _RouteConfiguration.DESCRIPTOR.fields_by_name["virtual_hosts"].number
_DiscoveryResponse = message_class("envoy.service.discovery.v3.DiscoveryResponse")
_RESOURCES = _DiscoveryResponse.DESCRIPTOR.fields_by_name["resources"].number


class Remembered:
    """Objects' bytes, remembered by identity from one call to the next: the renderer never
    mutates what it returns, so an unchanged resource (or a route table's unchanged host,
    in a table that is new on every change of one of its hosts) is the same object, and its
    bytes are reused. Only the last call's objects are kept; holding each keeps its id from
    being reused by another object."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Any, bytes]] = {}

    def encode(
        self,
        items: list[dict[str, Any]],
        encode: Callable[[dict[str, Any]], bytes],
        what: str,
        where: str = "",
    ) -> list[bytes]:
        """Each item's bytes (`encode`'s). One that cannot be encoded is left out and logged
        (`where` it was, its type, or `what` it is without one, and its name): a gap in the
        checks before this (tenant data reaches here checked) costs that one, not the file
        every tenant's change is in, nor the process."""
        return list(map(_second, self.pairs(items, encode, what, where)))

    def pairs(
        self,
        items: list[dict[str, Any]],
        encode: Callable[[dict[str, Any]], bytes],
        what: str,
        where: str = "",
    ) -> list[tuple[dict[str, Any], bytes]]:
        """As `encode`, each with its item: what a resource served on its own is named by."""
        # Looked up by id in C (map), not item by item in Python: a shard's table at 10,000
        # routes is 625 hosts on every change of one. An id found is the item itself: the
        # object remembered under it is held, so no other object can have its id meanwhile.
        ids = list(map(id, items))
        pieces: list[tuple[Any, bytes] | None] = list(map(self._known.get, ids))
        if None in pieces:
            for i, piece in enumerate(pieces):
                if piece is not None:
                    continue
                item = items[i]
                try:
                    pieces[i] = (item, encode(item))
                except Unencodable as e:
                    name = str(item.get("name", ""))[:256]
                    log.error("%s%s %r left out: %s", where, _kind(item) or what, name, e)
            if None in pieces:  # left out
                kept = [(k, p) for k, p in zip(ids, pieces, strict=True) if p is not None]
                ids, pieces = [k for k, _ in kept], [p for _, p in kept]
        done = cast(list[tuple[Any, bytes]], pieces)
        self._known = dict(zip(ids, done, strict=True))
        return done


_second = itemgetter(1)


def _kind(item: dict[str, Any]) -> str:
    return str(item.get("@type", "")).rpartition(".")[2]


_VIRTUAL_HOST = "envoy.config.route.v3.VirtualHost"
_VirtualHost = message_class(_VIRTUAL_HOST)
_ROUTES = _VirtualHost.DESCRIPTOR.fields_by_name["routes"].number
_ROUTE = "envoy.config.route.v3.Route"
_Route = message_class(_ROUTE)
_ROUTE_FIELDS = {f.name: f.number for f in _Route.DESCRIPTOR.fields}
_ROUTE_NAME = _ROUTE_FIELDS["name"]


def _direct(message: type[Message], **fields: Any) -> bytes:
    """Fields set on a message of their own, not through the JSON mapping (~10 µs a string
    there): a name, a host's domains. TypeError (Unencodable) unless each is of its field's
    type."""
    data: bytes = cast(Any, message)(**fields).SerializeToString(deterministic=True)
    return data


def _virtual_host(host: dict[str, Any]) -> bytes:
    """A route table's host. Its name and domains are set on a message of their own, not
    through the JSON mapping: a shard's front host lists every host of the shard (about 190
    at 3,000 routes), and the mapping takes ~10 µs a string. Its routes go one by one
    (`_route`), and the rest (a retry policy, a filter's config: the same on most hosts) has
    often been encoded before (`_encode_small`). Messages concatenate, and these are fields
    1-2, 3, then the others: the very bytes of the whole host through the mapping."""
    domains = host.get("domains", [])
    if not isinstance(domains, list):
        raise TypeError(f"virtual host domains: a list, not {type(domains).__name__}")
    routes = host.get("routes", [])
    if not isinstance(routes, list):
        raise TypeError(f"virtual host routes: a list, not {type(routes).__name__}")
    head = _direct(_VirtualHost, name=host.get("name", ""), domains=domains)
    rest = {k: v for k, v in host.items() if k not in ("name", "domains", "routes")}
    body = head + b"".join(map(_route, routes)) + _encode_small(_VIRTUAL_HOST, rest)
    return length_delimited(_VIRTUAL_HOSTS, body)


def _route(route: dict[str, Any]) -> bytes:
    """One route of a host, as field `routes` of it. Its name (the Route record's, unique)
    is set on a message of its own; without it, what a route matches and where it sends is
    often what another route's is (a Service's cluster, a path), and is encoded once
    (`_encode_small`): a new host's one route took the JSON mapping ~0.2 ms a change. The
    fields before the name's number, the name, the fields after: the whole route's bytes. A
    field Route does not have goes with the first part, whose mapping names it."""
    if not isinstance(route, dict):
        raise TypeError(f"route: a mapping, not {type(route).__name__}")
    below = {k: v for k, v in route.items() if _ROUTE_FIELDS.get(k, 0) < _ROUTE_NAME}
    above = {k: v for k, v in route.items() if _ROUTE_FIELDS.get(k, 0) > _ROUTE_NAME}
    body = _encode_small(_ROUTE, below) + _direct(_Route, name=route.get("name", ""))
    if above:
        body += _encode_small(_ROUTE, above)
    return length_delimited(_ROUTES, body)


def resource(res: dict[str, Any], hosts: Remembered | None = None) -> bytes:
    """One resource (its `@type` and fields) as a google.protobuf.Any. A route table's
    virtual hosts go through `hosts` when given: messages concatenate, and a repeated field
    may come in any number of pieces, so the table is its other fields then its hosts."""
    type_url = res["@type"]
    fields = {k: v for k, v in res.items() if k != "@type"}
    if type_url == ROUTE_CONFIG and hosts is not None:
        body = _route_config(fields, hosts)
    elif type_url == SCOPED_ROUTE and "route_configuration" in fields:
        # A scope's inline table likewise: its own fields, then the table's.
        table = _route_config(dict(fields.pop("route_configuration")), hosts or Remembered())
        body = _encode_small(type_url, fields) + length_delimited(_INLINE_TABLE, table)
    else:
        body = _encode(type_url, fields)
    return any_pb2.Any(type_url=type_url, value=body).SerializeToString()


def _route_config(fields: dict[str, Any], hosts: Remembered) -> bytes:
    """A route table: its name (field 1; a host scope's own, so unique) set on a message of
    its own, its other fields (the same on every scope) remembered, then its hosts."""
    fields.pop("@type", None)  # a scope's inline table is a message, not an Any
    vhosts = fields.pop("virtual_hosts", [])
    return (
        _direct(_RouteConfiguration, name=fields.pop("name", ""))
        + _encode_small(ROUTE_CONFIG, fields)
        + b"".join(hosts.encode(vhosts, _virtual_host, "virtual host"))
    )


_INLINE_TABLE = message_class(SCOPED_ROUTE).DESCRIPTOR.fields_by_name["route_configuration"].number


def discovery_response(version: str, resources: list[bytes]) -> bytes:
    """A DiscoveryResponse (what a file holds) of encoded Anys (`resource`)."""
    head = _DiscoveryResponse(version_info=version).SerializeToString()
    return head + b"".join(length_delimited(_RESOURCES, r) for r in resources)


def read_file(data: bytes) -> dict[str, Any]:
    """A file's DiscoveryResponse in its JSON form (Envoy's field names), for reading back."""
    message = _DiscoveryResponse.FromString(data)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def version_of_file(data: bytes) -> str:
    """The version_info of a file's DiscoveryResponse (DecodeError if it is not one)."""
    message: Any = _DiscoveryResponse.FromString(data)
    return str(message.version_info)
