"""When kubelbd first saw a Route claim each of its hosts, and a LoadBalancer each of its DNS
names: what ownership between tenants is decided by (ir/http.py, dns/desired.py), since a
tenant's own timestamps are whatever its admin wrote.

The tenant side stamps every translation before comparing or writing it: a host the record
held already keeps its time, a new one gets now. A record written before claims were kept
counts from when the management cluster stored it.
"""

from __future__ import annotations

from typing import cast

from .types import DNSOptions, LoadBalancerSpec, RouteSpec

#: the host of host-less rules and a defaultBackend: every host no one else claims
CATCH_ALL = ""


def claimed_hosts(spec: RouteSpec) -> set[str]:
    """Hosts a route asks for; a defaultBackend or a host-less rule claims the catch-all."""
    hosts = {r["host"] for r in spec["rules"]}
    if "defaultBackend" in spec:
        hosts.add(CATCH_ALL)
    return hosts


def with_claims(spec: RouteSpec, previous: RouteSpec | None, recorded: str, now: str) -> RouteSpec:
    """`spec` with its `claims`: each host's time from `previous` (the stored record), else
    `recorded` (when the stored record was made) if it claimed the host, else `now`."""
    before = dict(previous.get("claims") or {}) if previous else {}
    held = claimed_hosts(previous) if previous and "rules" in previous else set()
    claims = {
        h: before.get(h) or (recorded if h in held and recorded else now)
        for h in sorted(claimed_hosts(spec))
    }
    out = dict(spec)
    out.pop("claims", None)
    if claims:
        out["claims"] = claims
    return cast(RouteSpec, out)


def with_name_claims(
    spec: LoadBalancerSpec, previous: LoadBalancerSpec | None, recorded: str, now: str
) -> LoadBalancerSpec:
    """`spec` with `dns.claims`: when each DNS name was first asked for, kept as `with_claims`
    keeps a Route's hosts (a Service made years ago that asks for a name today asks today)."""
    names = spec.get("dns", {}).get("hostnames", [])
    if not names:
        return spec
    before_dns = previous.get("dns", {}) if previous else {}
    before = dict(before_dns.get("claims") or {})
    held = set(before_dns.get("hostnames") or [])
    claims = {n: before.get(n) or (recorded if n in held and recorded else now) for n in names}
    dns: DNSOptions = {**spec["dns"], "claims": dict(sorted(claims.items()))}
    return cast(LoadBalancerSpec, {**spec, "dns": dns})
