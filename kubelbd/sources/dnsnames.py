"""The DNS annotations every source kind reads (pure): names, automatic names and TTLs.

- `kubelb.io/hostname` or external-dns's `external-dns.alpha.kubernetes.io/hostname` (a
  comma-separated list, as external-dns reads it) names a LoadBalancer Service;
  `kubelb.io/hostname: auto` asks for an automatic name under the tenant's own domain
  (`--dns-base-domain`), on a Service or an Ingress (an Ingress's names are its hosts:
  external-dns's annotation on one is left to an external-dns of the tenant's own);
- `kubelb.io/dns-ttl` or `external-dns.alpha.kubernetes.io/ttl` sets the TTL, in seconds
  or as a Go duration (`90s`, `5m`, `1h`), as external-dns accepts it.

An automatic name is readable and the same every time: `<name>-<namespace>.<tenant>.<base>`,
one label below the tenant's domain so that a wildcard certificate for `*.<tenant>.<base>`
covers it; a label that would pass 63 bytes is cut and given a hash of the whole, so two
long names never share one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..records.policy import Policy
from ..records.problems import Problem
from ..records.types import DNSOptions

HOSTNAME_ANNOTATIONS = ("kubelb.io/hostname", "external-dns.alpha.kubernetes.io/hostname")
TTL_ANNOTATIONS = ("kubelb.io/dns-ttl", "external-dns.alpha.kubernetes.io/ttl")
AUTO = "auto"
#: a TTL above a day is a mistake more often than a wish; DNS allows 2^31-1
MAX_TTL = 86400
#: names one object may have: each is a record set in a zone others share too
MAX_NAMES = 16

NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$"
)
_SECONDS = re.compile(r"^[0-9]{1,10}$")
_DURATION = re.compile(r"^(?:([0-9]{1,5})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,10})s)?$")
#: problems one annotation may cause before the rest are summed up in one
MAX_PROBLEMS = 8
#: an automatic name's first label: 63 bytes less the longest ownership prefix (`cname-`),
#: so that its ownership TXT's label fits too
_MAX_LABEL = 57


@dataclass(frozen=True)
class DNSAnnotations:
    """What an object's DNS annotations ask for, checked against the tenant's policy."""

    hostnames: list[str] = field(default_factory=list)
    auto: bool = False  # `auto` was asked for, and the tenant has a domain for it
    ttl: int | None = None
    problems: list[Problem] = field(default_factory=list)

    def options(self) -> DNSOptions:
        """The record's `dns` (empty: nothing to say)."""
        out: DNSOptions = {}
        if self.hostnames:
            out["hostnames"] = list(self.hostnames)
        if self.ttl is not None:
            out["ttl"] = self.ttl
        return out


def not_allowed(host: str) -> Problem:
    """A host the tenant may not have ("": the catch-all)."""
    what = f"host {host[:253]!r}" if host else "a rule for every host (no host, defaultBackend)"
    return Problem("HostNotAllowed", f"{what} is outside the tenant's allowed domains")


def auto_name(namespace: str, name: str, domain: str) -> str:
    """The automatic name of object `namespace/name` under `domain` (see the module)."""
    label = f"{name}-{namespace}".replace(".", "-").lower()
    if len(label) > _MAX_LABEL:
        digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
        label = f"{label[: _MAX_LABEL - 9].rstrip('-')}-{digest}"
    return f"{label}.{domain}"


def ttl_of(annotations: Mapping[str, str]) -> tuple[int | None, list[Problem]]:
    for key in TTL_ANNOTATIONS:
        raw = annotations.get(key)
        if raw is None:
            continue
        value = raw.strip()
        # ASCII digits only, and few: str.isdigit() takes "²", and int() of thousands of
        # digits raises.
        seconds: int | None = int(value) if _SECONDS.fullmatch(value) else None
        match = _DURATION.fullmatch(value) if seconds is None and value else None
        if match is not None and any(match.groups()):
            h, m, s = (int(g or 0) for g in match.groups())
            seconds = h * 3600 + m * 60 + s
        if seconds is None or seconds > MAX_TTL:
            return None, [
                Problem("InvalidAnnotation", f"{key}: {raw[:64]!r} is not a TTL of 0-{MAX_TTL} s")
            ]
        return seconds, []
    return None, []


def read(
    annotations: Mapping[str, str], policy: Policy, namespace: str, name: str, names: bool
) -> DNSAnnotations:
    """The object's DNS annotations. `names`: whether its kind takes names from annotations
    (a Service does; an Ingress's names are its rules' hosts, so it only takes `auto`)."""
    ttl, problems = ttl_of(annotations)
    wanted: list[str] = []
    auto = False
    found: list[Problem] = []
    # An Ingress's names are its hosts: external-dns's annotation is left to an external-dns
    # of the tenant's own, as it would be without kubelbd.
    for key in HOSTNAME_ANNOTATIONS if names else HOSTNAME_ANNOTATIONS[:1]:
        raw = annotations.get(key)
        if raw is None:
            continue
        for item in dict.fromkeys(v.strip().lower().rstrip(".") for v in raw.split(",")):
            if not item:
                continue
            if item == AUTO and key == HOSTNAME_ANNOTATIONS[0]:
                if policy.auto_domain:
                    auto = True
                    wanted.append(auto_name(namespace, name, policy.auto_domain))
                else:
                    found.append(Problem("NoBaseDomain", f"{key}: auto needs a --dns-base-domain"))
            elif not names:
                found.append(
                    Problem("InvalidAnnotation", f"{key}: only 'auto' is read on this kind")
                )
            elif not NAME.fullmatch(item):
                found.append(Problem("InvalidHost", f"{key}: {item[:253]!r} is not a DNS name"))
            elif not policy.allows_host(item):
                found.append(not_allowed(item))
            elif item in wanted:
                continue
            elif len(wanted) >= MAX_NAMES:
                message = f"{key}: more than {MAX_NAMES} names; {item[:253]!r} and later ignored"
                found.append(Problem("TooManyNames", message))
                break
            else:
                wanted.append(item)
    if len(found) > MAX_PROBLEMS:
        more = len(found) - MAX_PROBLEMS + 1
        found = found[: MAX_PROBLEMS - 1]
        found.append(Problem("InvalidAnnotation", f"{more} more names refused"))
    return DNSAnnotations(wanted, auto, ttl, problems + found)
