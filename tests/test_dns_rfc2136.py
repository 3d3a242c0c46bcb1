"""kubelbd.dns.rfc2136 against a real BIND 9 (tests/bind_server.py): what the server does with
each change's prerequisites, what a zone transfer says kubelbd owns, and how failures come
back. Every test uses names of its own in the one zone."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.name
import dns.rdatatype
import dns.tsig
import dns.update
import pytest

from kubelbd.dns.records import (
    Create,
    Delete,
    Endpoint,
    OwnedRecord,
    RType,
    Update,
    owner_text,
    plan,
)
from kubelbd.dns.rfc2136 import RFC2136, TRANSFER_TIMEOUTS, Done, NotOurs, Refused, Unreachable
from tests.bind_server import Bind, bind_server

OWNER = "kubelbd-test"
RESOURCE = "route/tenant-alpha/default.shop"
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    with bind_server(tmp_path_factory.mktemp("named")) as server:
        yield server


def publisher(bind: Bind, owner: str = OWNER, **overrides: str) -> RFC2136:
    settings = {"server": bind.server, "key_name": bind.key_name, "key_secret": bind.key_secret}
    settings.update(overrides)
    return RFC2136(
        zone=bind.zone, algorithm=bind.algorithm, owner=owner, timeout=TIMEOUT, **settings
    )


def ep(name: str, *targets: str, rtype: RType = "A", resource: str = RESOURCE) -> Endpoint:
    return Endpoint(f"{name}.example.test", rtype, targets, 30, resource)


async def lookup(bind: Bind, name: str, rtype: str = "A") -> set[str]:
    """What the server answers for `name` (wildcards included), as text."""
    query = dns.message.make_query(name, rtype)
    response = await dns.asyncquery.udp(query, bind.address, timeout=TIMEOUT, port=bind.port)
    return {
        rd.to_text()
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.from_text(rtype)
        for rd in rrset
    }


async def by_hand(bind: Bind, build: dict[str, tuple[str, str]]) -> None:
    """Adds records as an operator would, with the zone's key and no ownership TXT:
    {name: (type, text)}."""
    key = dns.tsig.Key(bind.key_name, bind.key_secret, bind.algorithm)
    update = dns.update.UpdateMessage(bind.zone, keyring=key)
    for name, (rtype, text) in build.items():
        update.add(dns.name.from_text(name), 30, rtype, text)
    response = await dns.asyncquery.tcp(update, bind.address, timeout=TIMEOUT, port=bind.port)
    assert response.rcode() == 0


async def owned_by(pub: RFC2136, *names: str) -> dict[tuple[str, RType], OwnedRecord]:
    """What a zone transfer says `pub` owns; only at `names` (under the zone) if given, as
    the zone is shared by every test here."""
    owned = await pub.owned()
    assert isinstance(owned, dict), owned
    wanted = {f"{n}.example.test" for n in names}
    return {k: v for k, v in owned.items() if not names or k[0] in wanted}


async def test_create_publishes_the_record_and_its_ownership(bind: Bind) -> None:
    pub = publisher(bind)
    assert await pub.apply(Create(ep("shop", "10.0.0.1", "10.0.0.2"))) == Done()
    assert await lookup(bind, "shop.example.test") == {"10.0.0.1", "10.0.0.2"}
    assert await lookup(bind, "a-shop.example.test", "TXT") == {f'"{owner_text(OWNER, RESOURCE)}"'}
    assert (await owned_by(pub))["shop.example.test", "A"] == OwnedRecord(
        "shop.example.test", "A", ("10.0.0.1", "10.0.0.2"), 30, RESOURCE
    )


async def test_a_second_owner_cannot_take_a_name(bind: Bind) -> None:
    assert await publisher(bind, "other").apply(Create(ep("dup", "10.0.1.1"))) == Done()
    outcome = await publisher(bind).apply(Create(ep("dup", "10.0.1.2")))
    assert isinstance(outcome, NotOurs), outcome
    assert await lookup(bind, "dup.example.test") == {"10.0.1.1"}
    assert ("dup.example.test", "A") not in await owned_by(publisher(bind))
    assert ("dup.example.test", "A") in await owned_by(publisher(bind, "other"))


async def test_update_replaces_targets_and_the_resource(bind: Bind) -> None:
    pub = publisher(bind)
    assert await pub.apply(Create(ep("moving", "10.0.2.1"))) == Done()
    moved = ep("moving", "10.0.2.2", "10.0.2.3", resource="route/tenant-beta/x")
    changes = plan(bind.zone, [moved], await owned_by(pub, "moving")).changes
    assert [type(c) for c in changes] == [Update]
    assert await pub.apply(changes[0]) == Done()
    assert await lookup(bind, "moving.example.test") == {"10.0.2.2", "10.0.2.3"}
    assert (await owned_by(pub))["moving.example.test", "A"].resource == "route/tenant-beta/x"


async def test_delete_removes_the_record_and_its_ownership(bind: Bind) -> None:
    pub = publisher(bind)
    assert await pub.apply(Create(ep("going", "10.0.3.1"))) == Done()
    changes = plan(bind.zone, [], await owned_by(pub, "going")).changes
    assert await pub.apply(changes[0]) == Done()
    assert await lookup(bind, "going.example.test") == set()
    assert await lookup(bind, "a-going.example.test", "TXT") == set()
    assert ("going.example.test", "A") not in await owned_by(pub)


async def test_a_record_added_by_hand_is_never_touched(bind: Bind) -> None:
    await by_hand(bind, {"manual.example.test.": ("A", "10.0.4.1")})
    pub = publisher(bind)
    assert ("manual.example.test", "A") not in await owned_by(pub)
    assert isinstance(await pub.apply(Create(ep("manual", "10.0.4.2"))), NotOurs)
    # Were kubelbd to believe it owned the name, the prerequisites still hold it back.
    believed = OwnedRecord("manual.example.test", "A", ("10.0.4.1",), 30, RESOURCE)
    assert isinstance(await pub.apply(Delete(believed)), NotOurs)
    assert isinstance(await pub.apply(Update(ep("manual", "10.0.4.3"), believed)), NotOurs)
    assert await lookup(bind, "manual.example.test") == {"10.0.4.1"}


async def test_another_external_dns_owners_records_are_ignored(bind: Bind) -> None:
    await by_hand(
        bind,
        {
            "ext.example.test.": ("A", "10.0.5.1"),
            "a-ext.example.test.": ("TXT", f'"{owner_text("external-dns-1", "ingress/a/b")}"'),
        },
    )
    pub = publisher(bind)
    assert ("ext.example.test", "A") not in await owned_by(pub)
    assert isinstance(await pub.apply(Create(ep("ext", "10.0.5.2"))), NotOurs)
    believed = OwnedRecord("ext.example.test", "A", ("10.0.5.1",), 30, "ingress/a/b")
    assert isinstance(await pub.apply(Delete(believed)), NotOurs)
    assert await lookup(bind, "ext.example.test") == {"10.0.5.1"}


async def test_a_wildcard_answers_for_a_one_label_name(bind: Bind) -> None:
    pub = publisher(bind)
    assert await pub.apply(Create(ep("*.wild", "10.0.6.1"))) == Done()
    assert await lookup(bind, "anything.wild.example.test") == {"10.0.6.1"}
    assert await lookup(bind, "a-*.wild.example.test", "TXT") != set()
    record = (await owned_by(pub))["*.wild.example.test", "A"]
    assert await pub.apply(Delete(record)) == Done()
    assert await lookup(bind, "anything.wild.example.test") == set()


async def test_a_cname_and_an_address_never_share_a_name(bind: Bind) -> None:
    pub = publisher(bind)
    assert await pub.apply(Create(ep("alias", "shop.example.test", rtype="CNAME"))) == Done()
    # BIND would drop the A and answer NOERROR: the create's prerequisites make it NotOurs.
    assert isinstance(
        await publisher(bind, "other").apply(Create(ep("alias", "10.0.7.1"))), NotOurs
    )
    assert await pub.apply(Create(ep("addr", "10.0.7.2"))) == Done()
    assert isinstance(
        await publisher(bind, "other").apply(Create(ep("addr", "x.test", rtype="CNAME"))), NotOurs
    )
    assert (await owned_by(pub))["alias.example.test", "CNAME"].targets == ("shop.example.test",)


async def test_a_full_reconcile_switches_a_type_and_then_has_nothing_to_do(bind: Bind) -> None:
    pub = publisher(bind)
    assert await pub.apply(Create(ep("switch", "10.0.8.1"))) == Done()
    assert await pub.apply(Create(ep("stale", "10.0.8.2"))) == Done()
    desired = [ep("switch", "shop.example.test", rtype="CNAME")]
    changes = plan(bind.zone, desired, await owned_by(pub, "switch", "stale")).changes
    assert [type(c) for c in changes] == [Delete, Delete, Create]
    assert [await pub.apply(c) for c in changes] == [Done()] * 3
    assert await lookup(bind, "switch.example.test", "CNAME") == {"shop.example.test."}
    assert await lookup(bind, "stale.example.test") == set()
    assert plan(bind.zone, desired, await owned_by(pub, "switch", "stale")).changes == []


async def test_an_ownership_text_longer_than_one_txt_string(bind: Bind) -> None:
    pub = publisher(bind)
    resource = "route/tenant-alpha/" + "x" * 300
    assert await pub.apply(Create(ep("long", "10.0.9.1", resource=resource))) == Done()
    record = (await owned_by(pub))["long.example.test", "A"]
    assert record.resource == resource
    assert await pub.apply(Delete(record)) == Done()


@pytest.mark.parametrize(
    "key",
    [
        {"key_secret": base64.b64encode(b"k" * 32).decode()},
        {"key_name": "unknown-key"},
    ],
)
async def test_a_wrong_key_is_refused(bind: Bind, key: dict[str, str]) -> None:
    pub = publisher(bind, **key)
    assert isinstance(await pub.apply(Create(ep("wrongkey", "10.0.10.1"))), Refused)
    assert isinstance(await pub.owned(), Refused)
    assert await lookup(bind, "wrongkey.example.test") == set()


async def test_an_absent_server_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        pub = RFC2136(f"127.0.0.1:{port}", "example.test", "k", "a2V5", "hmac-sha256", OWNER, 1.0)
        assert isinstance(await pub.apply(Create(ep("x", "10.0.0.1"))), Unreachable)
        assert isinstance(await pub.owned(), Unreachable)


async def test_a_silent_server_is_unreachable_within_the_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()  # connections complete in the backlog and are never answered
        port = s.getsockname()[1]
        pub = RFC2136(f"127.0.0.1:{port}", "example.test", "k", "a2V5", "hmac-sha256", OWNER, 0.5)
        start = time.monotonic()
        assert isinstance(await pub.apply(Create(ep("x", "10.0.0.1"))), Unreachable)
        assert isinstance(await pub.owned(), Unreachable)
        # One update's timeout, and a zone transfer's (TRANSFER_TIMEOUTS of it).
        assert time.monotonic() - start < 0.5 + TRANSFER_TIMEOUTS * 0.5 + 0.5


async def test_a_stopped_server_is_unreachable(tmp_path: Path) -> None:
    with bind_server(tmp_path) as stopped:
        pub = publisher(stopped)
        assert await pub.floor() == Done()
    assert isinstance(await pub.floor(), Unreachable)


async def test_nothing_is_added_beside_another_owners_records(bind: Bind) -> None:
    """A name holding only someone else's AAAA (or MX, TXT) gets no A from kubelbd: that would
    take the name's IPv4 clients."""
    await by_hand(bind, {"v6only.example.test.": ("AAAA", "2001:db8::7")})
    outcome = await publisher(bind).apply(Create(ep("v6only", "10.0.7.1")))
    assert isinstance(outcome, NotOurs), outcome
    assert await lookup(bind, "v6only.example.test") == set()


async def test_kubelbd_publishes_both_address_types_at_one_name(bind: Bind) -> None:
    pub = publisher(bind)
    a, aaaa = ep("both", "10.0.8.1"), ep("both", "2001:db8::8", rtype="AAAA")
    for change in plan("example.test", [a, aaaa], await owned_by(pub, "both")).changes:
        assert await pub.apply(change) == Done(), change
    assert await lookup(bind, "both.example.test", "AAAA") == {"2001:db8::8"}
    assert await lookup(bind, "both.example.test") == {"10.0.8.1"}


async def test_a_name_the_wire_format_cannot_hold_is_refused_not_raised(bind: Bind) -> None:
    long = ".".join(["x" * 62] * 4) + ".example.test"  # beyond 255 bytes with "a-"
    outcome = await publisher(bind).apply(Create(Endpoint(long, "A", ("10.0.9.1",), 30, "r")))
    assert isinstance(outcome, Refused), outcome
