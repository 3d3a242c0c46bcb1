"""What kubelbd wants in DNS, what it owns there, and the changes between the two (pure).

Ownership is external-dns's TXT registry, so that kubelbd and an external-dns can share a
zone: next to every record it publishes, kubelbd keeps a TXT record at the sibling name
external-dns uses for new-format records (the record type as a prefix on the first label:
`a-shop.example.test` for `shop.example.test`) holding
`heritage=external-dns,external-dns/owner=<owner id>,external-dns/resource=<resource>`.
A name whose TXT names another owner, or that has no TXT at all, is never kubelbd's.

The sibling form, not a TXT at the record's own name (which a CNAME cannot share) nor at a
child name (`_own.shop`, which turns `shop` into an empty non-terminal that a wildcard no
longer answers for), as BIND showed.

A wildcard `*.x.example.test` keeps its TXT at `a-*.x.example.test`: external-dns's own name
for it when run without `--txt-wildcard-replacement` (its default), so an external-dns sharing
the zone reads it as it would its own. A replacement word (`a-any.x.example.test`) would be a
one-label host under the wildcard, and a name holding only a TXT stops the wildcard answering
for it; nobody asks for `a-*.x`. BIND takes the name in dynamic updates and zone transfers
(tests/test_dns_rfc2136.py).

Names here are lower case, absolute, without the final dot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from kubelbd.records.problems import Problem

RType = Literal["A", "AAAA", "CNAME"]
RTYPES: tuple[RType, ...] = get_args(RType)
Key = tuple[str, RType]
"""A record set kubelbd publishes: (name, type)."""

HERITAGE = "external-dns"
_MAX_LABEL = 63
_MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A record set kubelbd wants published. `resource` is external-dns's
    `<kind>/<namespace>/<name>`, written into the ownership TXT so an operator looking at the
    zone sees which object a name is for."""

    name: str
    rtype: RType
    targets: tuple[str, ...]
    ttl: int
    resource: str


@dataclass(frozen=True)
class OwnedRecord:
    """A record set a zone transfer shows kubelbd owns: its ownership TXT names kubelbd's owner
    id. `targets` is empty when the TXT is there and the record is not (someone removed it by
    hand): it is still kubelbd's, to publish again or to remove with its TXT."""

    name: str
    rtype: RType
    targets: tuple[str, ...]
    ttl: int
    resource: str


@dataclass(frozen=True)
class Create:
    """Publish a record set and its ownership TXT, only where neither exists yet. `beside`:
    the types kubelbd has at the name by then (an A beside its AAAA); without any, the name
    must hold nothing at all, so that no record is ever added beside someone else's (an A
    next to another owner's AAAA or MX would take that name's IPv4 clients)."""

    endpoint: Endpoint
    beside: frozenset[RType] = frozenset()


@dataclass(frozen=True)
class Update:
    """Replace an owned record set; `current` is what the zone holds, whose exact ownership TXT
    the update requires (and replaces, when the resource changed)."""

    endpoint: Endpoint
    current: OwnedRecord


@dataclass(frozen=True)
class Delete:
    """Remove an owned record set and its ownership TXT, only while that TXT is exactly ours."""

    record: OwnedRecord


Change = Create | Update | Delete


@dataclass(frozen=True)
class Refusal:
    """A wanted record set kubelbd will not publish, and why."""

    endpoint: Endpoint
    problem: Problem


@dataclass(frozen=True)
class Plan:
    """The changes, in the order to apply them (deletes, updates, creates: a name that changes
    type is freed before it is taken again), and the wanted record sets refused."""

    changes: list[Change]
    refused: list[Refusal]


def canonical(name: str) -> str:
    """A name as this module keeps it: lower case, without the final dot."""
    return name.rstrip(".").lower()


def below(name: str, zone: str) -> bool:
    """Whether `name` is a name strictly below `zone` (both canonical): one kubelbd may write."""
    return name != zone and name.endswith("." + zone)


def owner_name(name: str, rtype: RType) -> str:
    """The ownership TXT's name for a record set: external-dns's new-format sibling."""
    first, _, rest = canonical(name).partition(".")
    sibling = f"{rtype.lower()}-{first}"
    return f"{sibling}.{rest}" if rest else sibling


def owned_key(txt_name: str) -> Key | None:
    """The record set an ownership TXT's name is for, or None for a TXT name of no record type
    kubelbd publishes. The inverse of `owner_name`."""
    first, _, rest = canonical(txt_name).partition(".")
    prefix, dash, label = first.partition("-")
    rtype = prefix.upper()
    if not dash or not label or rtype not in RTYPES:
        return None
    name = f"{label}.{rest}" if rest else label
    return name, rtype


def owner_text(owner: str, resource: str) -> str:
    """external-dns's registry text, labels in its (sorted) order."""
    return f"heritage={HERITAGE},{HERITAGE}/owner={owner},{HERITAGE}/resource={resource}"


def parse_owner_text(text: str) -> tuple[str, str] | None:
    """(owner, resource) from a registry text as external-dns reads it (quotes dropped, tokens
    that are not `key=value` skipped, other labels ignored); None unless its heritage is
    external-dns and it names an owner. The resource is "" when the text has none."""
    labels: dict[str, str] = {}
    heritage = False
    for token in text.strip('"').split(","):
        parts = token.split("=")
        if len(parts) != 2:
            continue
        key, value = parts
        if key == "heritage":
            if value != HERITAGE:
                return None
            heritage = True
        elif key.startswith(HERITAGE + "/"):
            labels[key.removeprefix(HERITAGE + "/")] = value
    owner = labels.get("owner")
    if not heritage or not owner:
        return None
    return owner, labels.get("resource", "")


def normal_targets(rtype: RType, targets: Iterable[str]) -> tuple[str, ...]:
    """Targets in one order and spelling, so that what a zone transfer returns compares equal
    to what is wanted (IPv6 compressed, names canonical). Raises ValueError for a target that
    is no address of the type (or, for a CNAME, no name)."""
    if rtype == "A":
        out = {str(ipaddress.IPv4Address(t)) for t in targets}
    elif rtype == "AAAA":
        out = {str(ipaddress.IPv6Address(t)) for t in targets}
    else:
        out = {canonical(t) for t in targets}
        if len(out) != 1 or _name_problem(next(iter(out)), wildcard=False):
            raise ValueError(f"a CNAME has one target name, not {sorted(out)}")
    return tuple(sorted(out))


def plan(zone: str, desired: Iterable[Endpoint], owned: Mapping[Key, OwnedRecord]) -> Plan:
    """The changes that make what kubelbd owns in `zone` what it wants there.

    `owned` comes from a zone transfer and holds only kubelbd's own record sets, so a name held
    by anyone else looks free here and is planned as a create: the create's prerequisites make
    the server refuse it (`NotOurs`), and nothing is overwritten. What kubelbd owns and no
    longer wants is deleted, whether it went away just now or while kubelbd was down."""
    zone = canonical(zone)
    wanted: dict[Key, Endpoint] = {}
    types_at: dict[str, set[RType]] = {}  # the types wanted at each name, so far
    refused: list[Refusal] = []
    for endpoint in desired:
        endpoint, problem = _checked(zone, endpoint, wanted, types_at)
        if problem is None:
            wanted[endpoint.name, endpoint.rtype] = endpoint
            types_at.setdefault(endpoint.name, set()).add(endpoint.rtype)
        else:
            refused.append(Refusal(endpoint, problem))
    deletes: list[Change] = [Delete(r) for k, r in sorted(owned.items()) if k not in wanted]
    updates: list[Change] = []
    creates: list[Change] = []
    ours: dict[str, set[RType]] = {}  # kubelbd's types at each name once applied, so far
    for name, rtype in owned:
        if (name, rtype) in wanted:
            ours.setdefault(name, set()).add(rtype)
    for key, endpoint in sorted(wanted.items()):
        current = owned.get(key)
        if current is None:
            creates.append(Create(endpoint, frozenset(ours.get(key[0], ()))))
            ours.setdefault(key[0], set()).add(key[1])
        elif (current.targets, current.ttl, current.resource) != (
            endpoint.targets,
            endpoint.ttl,
            endpoint.resource,
        ):
            updates.append(Update(endpoint, current))
    return Plan(deletes + updates + creates, refused)


def _checked(
    zone: str,
    endpoint: Endpoint,
    wanted: Mapping[Key, Endpoint],
    types_at: Mapping[str, set[RType]],
) -> tuple[Endpoint, Problem | None]:
    """The endpoint in canonical form, and why it cannot be published, if it cannot."""
    checked, problem = _checked_alone(zone, endpoint)
    if problem is not None:
        return checked, problem
    name = checked.name
    if (name, endpoint.rtype) in wanted:
        return endpoint, Problem("Duplicate", f"{endpoint.rtype} {name} is wanted twice")
    others = types_at.get(name, set())
    if others and (endpoint.rtype == "CNAME" or "CNAME" in others):
        return endpoint, Problem(
            "CNAMEConflict", f"{name}: a CNAME cannot share its name with {sorted(others)}"
        )
    return checked, None


@lru_cache(maxsize=65536)
def _checked_alone(zone: str, endpoint: Endpoint) -> tuple[Endpoint, Problem | None]:
    """`_checked`, as far as the endpoint alone goes (its name, targets, TTL). Kept: every
    pass plans every name kubelbd publishes, and this took 90 ms of the event loop's time at
    3,000 names, on every change."""
    name = canonical(endpoint.name)
    if not below(name, zone):
        return endpoint, Problem("OutsideZone", f"{name} is not a name below the zone {zone}")
    problem = _name_problem(name, wildcard=True)
    if problem:
        return endpoint, Problem("InvalidName", problem)
    if len(owner_name(name, endpoint.rtype)) > _MAX_NAME:
        return endpoint, Problem(
            "NameTooLong",
            f"the ownership TXT of {name} would be longer than {_MAX_NAME} bytes "
            f"({endpoint.rtype.lower()}- is prepended to it)",
        )
    if len(owner_name(name, endpoint.rtype).partition(".")[0]) > _MAX_LABEL:
        return endpoint, Problem(
            "NameTooLong",
            f"the ownership TXT of {name} would need a first label longer than {_MAX_LABEL} "
            f"bytes ({endpoint.rtype.lower()}- is prepended to it)",
        )
    try:
        targets = normal_targets(endpoint.rtype, endpoint.targets)
    except ValueError as e:
        return endpoint, Problem("InvalidTarget", f"{endpoint.rtype} {name}: {e}")
    if not targets:
        return endpoint, Problem("InvalidTarget", f"{endpoint.rtype} {name} has no target")
    if not 0 <= endpoint.ttl <= 2**31 - 1:
        return endpoint, Problem("InvalidTTL", f"{name}: TTL {endpoint.ttl}")
    return Endpoint(name, endpoint.rtype, targets, endpoint.ttl, endpoint.resource), None


def _name_problem(name: str, *, wildcard: bool) -> str | None:
    """Why `name` (canonical) is no host name kubelbd can publish, or None. A wildcard is `*`
    as the whole first label only."""
    labels = name.split(".")
    if len(name) > _MAX_NAME:
        return f"{name} is longer than {_MAX_NAME} bytes"
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and wildcard and len(labels) > 1:
            continue
        if not label or len(label) > _MAX_LABEL or not all(c.isalnum() or c in "-_" for c in label):
            return f"{name}: label {label!r} is not a host name's"
        if not label.isascii():
            return f"{name}: label {label!r} is not ASCII (use its punycode form)"
    return None
