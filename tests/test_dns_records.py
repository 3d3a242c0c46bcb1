"""kubelbd.dns.records: ownership names and texts in external-dns's registry format, and the
plan from what is wanted and what a zone transfer says kubelbd owns."""

from __future__ import annotations

import pytest

from kubelbd.dns.records import (
    Create,
    Delete,
    Endpoint,
    Key,
    OwnedRecord,
    RType,
    Update,
    owned_key,
    owner_name,
    owner_text,
    parse_owner_text,
    plan,
)

ZONE = "example.test"
RESOURCE = "route/tenant-alpha/default.shop"


def ep(name: str, *targets: str, rtype: RType = "A", ttl: int = 30) -> Endpoint:
    return Endpoint(name, rtype, targets, ttl, RESOURCE)


def owned(name: str, *targets: str, rtype: RType = "A", ttl: int = 30) -> OwnedRecord:
    return OwnedRecord(name, rtype, targets, ttl, RESOURCE)


@pytest.mark.parametrize(
    ("name", "rtype", "txt"),
    [
        ("shop.example.test", "A", "a-shop.example.test"),
        ("shop.example.test", "AAAA", "aaaa-shop.example.test"),
        ("shop.example.test", "CNAME", "cname-shop.example.test"),
        ("Shop.Example.Test.", "A", "a-shop.example.test"),
        # external-dns without --txt-wildcard-replacement: no host anyone asks for, so the
        # TXT never stops the wildcard answering for a real one-label host.
        ("*.x.example.test", "A", "a-*.x.example.test"),
    ],
)
def test_owner_name_is_external_dns_new_format_sibling(name: str, rtype: RType, txt: str) -> None:
    assert owner_name(name, rtype) == txt
    assert owned_key(txt) == (name.rstrip(".").lower(), rtype)


@pytest.mark.parametrize(
    "txt", ["shop.example.test", "mx-shop.example.test", "a-.example.test", "txt-a.example.test"]
)
def test_owned_key_ignores_names_of_no_published_type(txt: str) -> None:
    assert owned_key(txt) is None


def test_owner_text_is_external_dns_registry_format() -> None:
    text = owner_text("kubelbd-mgmt", RESOURCE)
    assert text == (
        "heritage=external-dns,external-dns/owner=kubelbd-mgmt,"
        "external-dns/resource=route/tenant-alpha/default.shop"
    )
    assert parse_owner_text(text) == ("kubelbd-mgmt", RESOURCE)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        # external-dns writes it quoted, and may carry labels kubelbd does not use.
        (
            '"heritage=external-dns,external-dns/owner=ext,external-dns/resource=ingress/a/b"',
            ("ext", "ingress/a/b"),
        ),
        ("heritage=external-dns,external-dns/owner=ext", ("ext", "")),
        ("heritage=external-dns,external-dns/owner=ext,junk,external-dns/x=y", ("ext", "")),
        ("heritage=someone-else,external-dns/owner=ext", None),
        ("external-dns/owner=ext,external-dns/resource=a/b/c", None),
        ("heritage=external-dns,external-dns/resource=a/b/c", None),
        ("v=spf1 -all", None),
    ],
)
def test_parse_owner_text(text: str, parsed: tuple[str, str] | None) -> None:
    assert parse_owner_text(text) == parsed


def test_plan_creates_updates_deletes_deletes_first() -> None:
    result = plan(
        ZONE,
        [
            ep("new.example.test", "10.0.0.1"),
            ep("same.example.test", "10.0.0.2"),
            ep("moved.example.test", "10.0.0.4", "10.0.0.3"),
            ep("switch.example.test", "shop.example.test", rtype="CNAME"),
        ],
        {
            ("same.example.test", "A"): owned("same.example.test", "10.0.0.2"),
            ("moved.example.test", "A"): owned("moved.example.test", "10.0.0.3"),
            ("switch.example.test", "A"): owned("switch.example.test", "10.0.0.5"),
            ("gone.example.test", "A"): owned("gone.example.test", "10.0.0.6"),
        },
    )
    assert result.refused == []
    assert result.changes == [
        Delete(owned("gone.example.test", "10.0.0.6")),
        Delete(owned("switch.example.test", "10.0.0.5")),
        Update(
            ep("moved.example.test", "10.0.0.3", "10.0.0.4"),
            owned("moved.example.test", "10.0.0.3"),
        ),
        Create(ep("new.example.test", "10.0.0.1")),
        Create(ep("switch.example.test", "shop.example.test", rtype="CNAME")),
    ]


def test_plan_updates_for_ttl_and_resource_and_compares_normal_forms() -> None:
    current = owned("v6.example.test", "2001:db8::1", rtype="AAAA")
    unchanged = Endpoint("V6.example.test.", "AAAA", ("2001:0db8:0:0::1",), 30, RESOURCE)
    assert plan(ZONE, [unchanged], {("v6.example.test", "AAAA"): current}).changes == []
    for changed in (
        Endpoint("v6.example.test", "AAAA", ("2001:db8::1",), 60, RESOURCE),
        Endpoint("v6.example.test", "AAAA", ("2001:db8::1",), 30, "route/tenant-beta/x"),
    ):
        result = plan(ZONE, [changed], {("v6.example.test", "AAAA"): current})
        assert result.changes == [Update(changed, current)]


def test_a_name_held_by_another_owner_is_planned_as_a_create() -> None:
    """The transfer's `owned` holds only kubelbd's names, so another owner's looks free: the
    create's prerequisites make the server refuse it (tests/test_dns_rfc2136.py)."""
    result = plan(ZONE, [ep("theirs.example.test", "10.0.0.1")], {})
    assert result.changes == [Create(ep("theirs.example.test", "10.0.0.1"))]


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        (ep("shop.other.test", "10.0.0.1"), "OutsideZone"),
        (ep("shopexample.test", "10.0.0.1"), "OutsideZone"),
        # The apex's ownership TXT (a-example.test) would be outside the zone.
        (ep("example.test", "10.0.0.1"), "OutsideZone"),
        # 62 bytes fit a label; with "a-" the TXT's first label has 64.
        (ep("x" * 62 + ".example.test", "10.0.0.1"), "NameTooLong"),
        # 252 bytes fit a name; with "a-" the TXT's name has 254 (the wire format's limit).
        (ep(".".join(["x" * 59] * 4) + ".example.test", "10.0.0.1"), "NameTooLong"),
        (ep("a.*.example.test", "10.0.0.1"), "InvalidName"),
        (ep("sh op.example.test", "10.0.0.1"), "InvalidName"),
        (ep("shop.example.test", "2001:db8::1"), "InvalidTarget"),
        (ep("shop.example.test"), "InvalidTarget"),
        (ep("shop.example.test", "a.test", "b.test", rtype="CNAME"), "InvalidTarget"),
        (ep("shop.example.test", "10.0.0.1", ttl=-1), "InvalidTTL"),
    ],
)
def test_plan_refuses_what_it_cannot_publish(endpoint: Endpoint, reason: str) -> None:
    result = plan(ZONE, [endpoint], {})
    assert result.changes == []
    assert [(r.endpoint, r.problem.reason) for r in result.refused] == [(endpoint, reason)]


def test_plan_refuses_a_second_record_set_and_a_cname_beside_another_type() -> None:
    first = ep("shop.example.test", "10.0.0.1")
    twice = ep("shop.example.test", "10.0.0.2")
    cname = ep("shop.example.test", "other.test", rtype="CNAME")
    result = plan(ZONE, [first, twice, cname], {})
    assert result.changes == [Create(first)]
    assert [r.problem.reason for r in result.refused] == ["Duplicate", "CNAMEConflict"]


def test_a_refused_endpoint_that_kubelbd_owns_is_deleted() -> None:
    """What kubelbd can no longer publish is not left behind under its name."""
    current = owned("shop.example.test", "10.0.0.1")
    result = plan(ZONE, [ep("shop.example.test")], {("shop.example.test", "A"): current})
    assert result.changes == [Delete(current)]


def test_a_create_beside_kubelbds_own_type_says_so_and_a_lone_one_does_not() -> None:
    """A lone create needs the name empty (nothing of anyone's there); an AAAA beside
    kubelbd's own A (owned, or created just before in the same plan) needs only its type free."""
    a, aaaa = (
        ep("dual.example.test", "10.0.0.1"),
        ep("dual.example.test", "2001:db8::1", rtype="AAAA"),
    )
    fresh = plan(ZONE, [a, aaaa], {})
    assert fresh.changes == [Create(a), Create(aaaa, frozenset({"A"}))]
    owned: dict[Key, OwnedRecord] = {
        ("dual.example.test", "A"): OwnedRecord(
            "dual.example.test", "A", ("10.0.0.1",), 30, RESOURCE
        )
    }
    assert plan(ZONE, [a, aaaa], owned).changes == [Create(aaaa, frozenset({"A"}))]
    # kubelbd's A going away: the AAAA is created alone.
    assert plan(ZONE, [aaaa], owned).changes[-1] == Create(aaaa)
