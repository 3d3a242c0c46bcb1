"""Publishing to any authoritative server by RFC 2136 dynamic update, signed with TSIG.

Every change is one update message whose prerequisites say what kubelbd must find first: the
server applies the whole message or none of it, so kubelbd never overwrites or removes a
record it does not own, even when its last zone transfer is out of date or an external-dns
writes the same zone at the same time. What the server answers is an `Outcome`, never an
exception: a prerequisite that fails is `NotOurs`, a server that will not do it `Refused`, one
that cannot be reached (or fails) `Unreachable`.

Messages go over TCP (updates, transfers and queries alike): a signed update carrying a long
ownership text gains nothing from UDP's retries and truncation.

ACME DNS-01 answers (`add_txt`, `remove_txt`, `lookup`) are TXT values at
`_acme-challenge.<name>`, not records kubelbd owns in the registry's sense: each value is
random and kubelbd's alone, so they are added to and removed from the record set value by
value, and whatever else is there (another client's answer for the same name) stays.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import dns.xfr
import dns.zone
from dns.rdtypes.ANY.TXT import TXT

from .records import (
    Change,
    Create,
    Endpoint,
    Key,
    OwnedRecord,
    RType,
    Update,
    canonical,
    normal_targets,
    owned_key,
    owner_name,
    owner_text,
    parse_owner_text,
)


@dataclass(frozen=True)
class Done:
    """The server applied the change."""


@dataclass(frozen=True)
class NotOurs:
    """A prerequisite failed: the name is someone else's (or no longer ours); nothing changed."""

    detail: str


@dataclass(frozen=True)
class Refused:
    """The server will not do it (unsigned or wrongly signed, not allowed, not its zone, or a
    message it cannot take): trying again changes nothing until the configuration does."""

    detail: str


@dataclass(frozen=True)
class Unreachable:
    """No answer within the timeout, no connection, or a server failure: try again later."""

    detail: str


Outcome = Done | NotOurs | Refused | Unreachable

#: a zone transfer may take this many times an update's timeout
TRANSFER_TIMEOUTS = 6

_NOT_OURS = {dns.rcode.YXDOMAIN, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.NXRRSET}
_TXT_CHUNK = 255  # bytes in one TXT character-string
_TRANSIENT = (TimeoutError, OSError, EOFError, dns.exception.Timeout)


class RFC2136:
    """One zone on one server, written as `owner`. `server` is `address:port` with an IP
    address (`[v6]:port` for IPv6); `timeout` bounds each update, and TRANSFER_TIMEOUTS of
    it a zone transfer (a large zone takes longer than one update)."""

    def __init__(
        self,
        server: str,
        zone: str,
        key_name: str,
        key_secret: str,
        algorithm: str,
        owner: str,
        timeout: float,
    ) -> None:
        if not owner or any(c in owner for c in ',="'):
            raise ValueError(f'owner id {owner!r}: must be non-empty, without , = or "')
        self.address, self.port = _split_server(server)
        self.zone = canonical(zone)
        self.origin = dns.name.from_text(self.zone)
        self.key = dns.tsig.Key(key_name, key_secret, algorithm)
        self.owner = owner
        self.timeout = timeout

    async def apply(self, change: Change) -> Outcome:
        """Apply one change as one atomic update with prerequisites."""
        message = self._update()
        try:
            if isinstance(change, Create):
                self._create(message, change.endpoint, change.beside)
            elif isinstance(change, Update):
                self._replace(message, change.endpoint, change.current)
            else:
                self._delete(message, change.record)
        except (dns.exception.DNSException, ValueError) as e:
            # A name the wire format cannot hold (records.plan refuses those it knows of):
            # this change is refused, never the loop that applies every other.
            return Refused(f"cannot build the update: {e}")
        return await self._send(message)

    async def floor(self) -> Outcome:
        """One signed update that changes nothing (its only prerequisite: the zone's SOA
        exists): the round trip every change costs at least, for the benchmark."""
        message = self._update()
        message.present(self.origin, dns.rdatatype.SOA)
        return await self._send(message)

    async def add_txt(self, name: str, values: Sequence[str], ttl: int) -> Outcome:
        """Add `values` to the TXT record set at `name`, keeping the values already there (a
        wildcard and its base name are answered at one name). Only where `name` is no CNAME:
        a server ignores a TXT added beside one, and reports success."""
        owner = dns.name.from_text(name)
        message = self._update()
        message.absent(owner, dns.rdatatype.CNAME)
        message.add(owner, ttl, *(_txt_rdata(v.encode()) for v in values))
        return await self._send(message)

    async def remove_txt(self, name: str, values: Sequence[str]) -> Outcome:
        """Remove exactly `values` from the TXT record set at `name`; the others stay (RFC 2136
        ignores the delete of a value that is not there)."""
        message = self._update()
        message.delete(dns.name.from_text(name), *(_txt_rdata(v.encode()) for v in values))
        return await self._send(message)

    async def lookup(self, name: str, rtype: str) -> tuple[str, ...] | Refused | Unreachable:
        """What the server itself answers for `name` and `rtype` (a direct query: no resolver,
        no cache in between): TXT values joined, other types as rdata text; a CNAME in the
        answer counts as an answer too. Empty when the name or the type is not there."""
        query = dns.message.make_query(name, rtype)
        try:
            with anyio.fail_after(self.timeout):
                response = await dns.asyncquery.tcp(
                    query, self.address, timeout=self.timeout, port=self.port
                )
        except _TRANSIENT as e:
            return Unreachable(f"{self.address}:{self.port}: {e!r}")
        except dns.exception.DNSException as e:
            return Refused(f"{e!r}")
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return ()
        if rcode != dns.rcode.NOERROR:
            outcome = _by_rcode(rcode, f"query {name} {rtype}")
            assert isinstance(outcome, (Refused, Unreachable))
            return outcome
        return tuple(
            _joined(rd) if isinstance(rd, TXT) else rd.to_text()
            for rrset in response.answer
            for rd in rrset
        )

    async def owned(self) -> dict[Key, OwnedRecord] | Refused | Unreachable:
        """Every record set the zone holds under kubelbd's owner id, by a signed zone transfer
        (AXFR). Only an ownership TXT that is exactly one text naming this owner counts, as
        only that passes the prerequisites of an update or a delete."""
        zone = dns.zone.Zone(self.origin)
        query, _ = dns.xfr.make_query(zone, serial=None, keyring=self.key)
        try:
            lifetime = self.timeout * TRANSFER_TIMEOUTS
            with anyio.fail_after(lifetime):
                await dns.asyncquery.inbound_xfr(
                    self.address, zone, query, port=self.port, lifetime=lifetime
                )
        except dns.xfr.TransferError as e:
            detail = f"zone transfer: {dns.rcode.to_text(e.rcode)}"
            return Unreachable(detail) if e.rcode == dns.rcode.SERVFAIL else Refused(detail)
        except dns.tsig.PeerError as e:
            return Refused(f"zone transfer: the server rejected the signature: {e!r}")
        except _TRANSIENT as e:
            return Unreachable(f"zone transfer from {self.address}:{self.port}: {e!r}")
        except dns.exception.DNSException as e:
            return Refused(f"zone transfer: {e!r}")
        # Reading every name of the zone takes a while at thousands of names: not on the
        # event loop, which serves route changes meanwhile.
        return await anyio.to_thread.run_sync(self._ours, zone)

    def _ours(self, zone: dns.zone.Zone) -> dict[Key, OwnedRecord]:
        out: dict[Key, OwnedRecord] = {}
        for relative, node in zone.nodes.items():
            txt = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT)
            key = owned_key(relative.derelativize(self.origin).to_text(omit_final_dot=True))
            if txt is None or key is None or len(txt) != 1:
                continue
            parsed = parse_owner_text(_joined(next(iter(txt))))
            if parsed is None or parsed[0] != self.owner:
                continue
            name, rtype = key
            records = zone.get_rdataset(dns.name.from_text(name), rtype)
            targets = [rd.to_text(origin=self.origin, relativize=False) for rd in records or ()]
            out[key] = OwnedRecord(
                name, rtype, _targets(rtype, targets), records.ttl if records else 0, parsed[1]
            )
        return out

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.origin, keyring=self.key)

    def _create(
        self, message: dns.update.UpdateMessage, endpoint: Endpoint, beside: frozenset[RType]
    ) -> None:
        """Only where the name holds nothing (or, `beside` kubelbd's own record sets of other
        types, no record set of this type and no CNAME, with kubelbd's ownership TXTs of those
        present), and the ownership TXT's name neither a TXT nor a CNAME: a server ignores an
        added record that would share its name with a CNAME, and reports success."""
        name = dns.name.from_text(endpoint.name)
        owner = dns.name.from_text(owner_name(endpoint.name, endpoint.rtype))
        if not beside or endpoint.rtype == "CNAME":
            message.absent(name)
        else:
            message.absent(name, endpoint.rtype)
            message.absent(name, dns.rdatatype.CNAME)
            for rtype in sorted(beside):
                message.present(dns.name.from_text(owner_name(endpoint.name, rtype)), "TXT")
        message.absent(owner, dns.rdatatype.TXT)
        message.absent(owner, dns.rdatatype.CNAME)
        message.add(name, endpoint.ttl, endpoint.rtype, *_texts(endpoint))
        message.add(owner, endpoint.ttl, self._txt(endpoint.resource))

    def _replace(
        self, message: dns.update.UpdateMessage, endpoint: Endpoint, current: OwnedRecord
    ) -> None:
        """Only while the ownership TXT is exactly the one the zone transfer showed."""
        name = dns.name.from_text(endpoint.name)
        owner = dns.name.from_text(owner_name(endpoint.name, endpoint.rtype))
        message.present(owner, self._txt(current.resource))
        message.replace(name, endpoint.ttl, endpoint.rtype, *_texts(endpoint))
        if (endpoint.resource, endpoint.ttl) != (current.resource, current.ttl):
            message.replace(owner, endpoint.ttl, self._txt(endpoint.resource))

    def _delete(self, message: dns.update.UpdateMessage, record: OwnedRecord) -> None:
        """Only while the ownership TXT is exactly ours; the record set and the TXT together."""
        name = dns.name.from_text(record.name)
        owner = dns.name.from_text(owner_name(record.name, record.rtype))
        message.present(owner, self._txt(record.resource))
        message.delete(name, record.rtype)
        message.delete(owner, dns.rdatatype.TXT)

    def _txt(self, resource: str) -> TXT:
        """The ownership TXT as one rdata (a prerequisite compares it byte for byte, and
        dnspython gives a prerequisite rdata TTL 0, which BIND requires), in character-strings
        of at most 255 bytes."""
        return _txt_rdata(owner_text(self.owner, resource).encode())

    async def _send(self, message: dns.update.UpdateMessage) -> Outcome:
        try:
            with anyio.fail_after(self.timeout):
                response = await dns.asyncquery.tcp(
                    message, self.address, timeout=self.timeout, port=self.port
                )
        except dns.tsig.PeerError as e:
            return Refused(f"the server rejected the signature: {e!r}")
        except _TRANSIENT as e:
            return Unreachable(f"{self.address}:{self.port}: {e!r}")
        except dns.exception.DNSException as e:
            return Refused(f"{e!r}")
        return _by_rcode(response.rcode(), "update")


def _by_rcode(rcode: dns.rcode.Rcode, what: str) -> Outcome:
    detail = f"{what}: {dns.rcode.to_text(rcode)}"
    if rcode == dns.rcode.NOERROR:
        return Done()
    if rcode in _NOT_OURS:
        return NotOurs(detail)
    if rcode == dns.rcode.SERVFAIL:
        return Unreachable(detail)
    return Refused(detail)


def _texts(endpoint: Endpoint) -> list[str]:
    """The targets as rdata text: a CNAME's target absolute (dnspython would otherwise read
    it relative to the zone)."""
    if endpoint.rtype == "CNAME":
        return [t + "." for t in endpoint.targets]
    return list(endpoint.targets)


def _targets(rtype: RType, targets: list[str]) -> tuple[str, ...]:
    """Targets as `plan` compares them; as the zone spells them if they are not what kubelbd
    would publish (then they differ from what is wanted, and are replaced)."""
    if not targets:
        return ()
    try:
        return normal_targets(rtype, targets)
    except ValueError:
        return tuple(sorted(targets))


def _txt_rdata(text: bytes) -> TXT:
    """One TXT rdata holding `text`, in character-strings of at most 255 bytes."""
    chunks = [text[i : i + _TXT_CHUNK] for i in range(0, len(text), _TXT_CHUNK)]
    return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)


def _joined(rdata: dns.rdata.Rdata) -> str:
    """A TXT's text, its character-strings joined (a long one is split into several)."""
    assert isinstance(rdata, TXT)
    return b"".join(rdata.strings).decode(errors="replace")


def _split_server(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"server {server!r}: expected address:port")
    host = host.removeprefix("[").removesuffix("]")
    ipaddress.ip_address(host)  # dnspython dials addresses, not names
    return host, int(port)
