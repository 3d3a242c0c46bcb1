"""Hypothesis strategies for Route and Tenant records, shaped like what kubelbd/ingress.py emits.

The vocabulary is deliberately small so that the interesting cases happen often: several
tenants claiming the same host, exact hosts under another tenant's wildcard, host-less rules
and defaultBackends competing for the catch-all, identical paths shadowing each other, and
creation timestamps that tie (ownership then falls back to tenant and route name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from kubelbd.records import parse
from kubelbd.records.types import RouteRecord, TenantRecord
from kubelbd.sources import common, ingress

TENANTS = ("alpha", "beta", "gamma")
NAMESPACES = ("default", "prod")
INGRESSES = ("web", "shop", "api")
#: every route id a generated record can have: <tenant>/<namespace>.<ingress>
ROUTE_IDS = tuple(
    (tenant, namespace, name)
    for tenant in TENANTS
    for namespace in NAMESPACES
    for name in INGRESSES
)

ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.1.7", "fd00::1")
SERVICES = ("web", "api")
NODE_PORTS = (30080, 30081)
#: few distinct values, so that ties happen; "" is what translate() writes when it is missing
TIMESTAMPS = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "")
CLAIM_TIMES = ("2026-01-01T00:00:00.000001Z", "2026-01-02T00:00:00.000000Z", "", "", "")

DOMAINS = ("example.com", "shop.example.com")
LABELS = ("a", "b", "www", "x-1")
#: exact hosts: a.example.com (under *.example.com), a.shop.example.com (under
#: *.shop.example.com), shop.example.com (itself under *.example.com), example.com (no parent)
EXACT_HOSTS = tuple(f"{label}.{domain}" for domain in DOMAINS for label in LABELS) + DOMAINS
WILDCARD_HOSTS = tuple(f"*.{domain}" for domain in DOMAINS)
HOSTS = (*EXACT_HOSTS, *WILDCARD_HOSTS, "")

PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")
SEGMENTS = ("a", "b", "api", "v1", "a.b", "%2F", "~x", "caf\u00e9")


#: characters a path may hold besides letters: sub-delims, percent, non-ASCII, a C1 control
ODD_CHARS = "-._~!$&'()*+,;=:@%\u00e9\u6f22\u0080\U0001f600"


def _odd_segment(text: str) -> bool:
    # fullmatch, not match: with match() the `$` of _PATH_CHARS also accepts "/a\n"
    return bool(common.PATH_CHARS.fullmatch("/" + text))


#: segments made of those, rarely equal to one another
odd_segments = st.text(st.sampled_from(ODD_CHARS + "ab"), min_size=1, max_size=4).filter(
    _odd_segment
)
segments = st.one_of(st.sampled_from(SEGMENTS), st.sampled_from(SEGMENTS), odd_segments)


@st.composite
def paths(draw: st.DrawFn) -> dict[str, Any]:
    """One path entry, normalized the way ingress.translate() does it (trailing slashes)."""
    path_type = draw(st.sampled_from(PATH_TYPES))
    parts = draw(st.lists(segments, max_size=3))
    raw = "/" + "/".join(parts)
    if parts and draw(st.booleans()):  # type: ignore[arg-type]
        raw += "/"
    assert common.PATH_CHARS.fullmatch(raw), raw
    return {
        "path": common.normalize_path(raw, path_type),
        "pathType": path_type,
        # Mostly one backend, as an Ingress has; now and then several, weighted.
        "backends": draw(st.one_of(st.lists(backends(), min_size=1, max_size=1),
                                   st.lists(weighted_backends(), min_size=2, max_size=3))),
    }  # fmt: skip


@st.composite
def backends(draw: st.DrawFn) -> dict[str, Any]:
    """A resolved backend (with a nodePort) or, one time in three, an unresolvable one."""
    service = draw(st.sampled_from(SERVICES))
    node_port = draw(st.sampled_from((*NODE_PORTS, None)))
    if node_port is None:
        return {"service": service, "port": "80", "problem": f"Service {service} not found"}
    return {"service": service, "port": "80", "nodePort": node_port}


@st.composite
def weighted_backends(draw: st.DrawFn) -> dict[str, Any]:
    """A backend with a weight (0 takes no requests)."""
    return {**draw(backends()), "weight": draw(st.sampled_from((0, 1, 3)))}


rules = st.builds(
    lambda host, ps: {"host": host, "paths": ps},
    st.sampled_from(HOSTS),
    st.lists(paths(), min_size=1, max_size=3),
)


@st.composite
def route_specs(draw: st.DrawFn, namespace: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {
            "kind": "Ingress",
            "namespace": namespace,
            "name": name,
            "uid": f"uid-{namespace}-{name}",
            "generation": 1,
            "creationTimestamp": draw(st.sampled_from(TIMESTAMPS)),
        },
        "rules": draw(st.lists(rules, max_size=3)),
    }
    if draw(st.integers(0, 3)) == 0:
        spec["defaultBackend"] = draw(backends())
    # When kubelbd saw each host claimed (to the microsecond, as the tenant side writes it);
    # a host without one counts from when the record was stored.
    hosts = {r["host"] for r in spec["rules"]} | ({""} if "defaultBackend" in spec else set())
    claims = {h: t for h in sorted(hosts) if (t := draw(st.sampled_from(CLAIM_TIMES)))}
    if claims:
        spec["claims"] = claims
    return spec


@st.composite
def route_records(
    draw: st.DrawFn, ids: st.SearchStrategy[tuple[str, str, str]] | None = None
) -> RouteRecord:
    """A Route record; `ids` picks (tenant, namespace, ingress name), by default any of them."""
    tenant, namespace, name = draw(ids if ids is not None else st.sampled_from(ROUTE_IDS))
    spec = parse.route_spec(draw(route_specs(namespace, name)))
    recorded = draw(st.sampled_from(TIMESTAMPS))
    return RouteRecord(
        tenant, ingress.route_name(namespace, name), spec, draw(st.integers(1, 3)), recorded
    )


@st.composite
def tenant_sets(draw: st.DrawFn, names: tuple[str, ...] = TENANTS) -> list[TenantRecord]:
    """Tenant records; now and then a tenant whose routes exist has no record (being removed)."""
    present = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    return [
        TenantRecord(name, tuple(draw(st.lists(st.sampled_from(ADDRESSES), unique=True))))
        for name in sorted(present)
    ]


@st.composite
def fleets(
    draw: st.DrawFn, max_routes: int = 8, tenants: tuple[str, ...] = TENANTS
) -> tuple[list[RouteRecord], list[TenantRecord]]:
    """Routes (unique ids) and the tenant records, all of tenants `tenants`."""
    ids = st.sampled_from([i for i in ROUTE_IDS if i[0] in tenants])
    routes = draw(st.lists(route_records(ids), max_size=max_routes, unique_by=lambda r: r.id))
    return routes, draw(tenant_sets(tenants))


@dataclass(frozen=True)
class Batch:
    """One Model.apply call."""

    upserts: tuple[RouteRecord, ...]
    deletes: tuple[str, ...]
    tenants: tuple[TenantRecord, ...] | None  # None: leave the tenant set as it is

    def __repr__(self) -> str:  # keeps falsifying examples readable
        ups = [(r.id, r.spec) for r in self.upserts]
        return f"Batch(upserts={ups!r}, deletes={self.deletes!r}, tenants={self.tenants!r})"


@st.composite
def batch_sequences(draw: st.DrawFn, max_batches: int = 8) -> list[Batch]:
    """Batches of changes over a small pool of route ids, so that the same route is created,
    changed, deleted and recreated along the way."""
    pool = draw(st.lists(st.sampled_from(ROUTE_IDS), min_size=1, max_size=5, unique=True))
    ids = st.sampled_from(pool)
    route_ids = st.sampled_from([f"{t}/{ingress.route_name(ns, n)}" for t, ns, n in pool])
    batch = st.builds(
        Batch,
        upserts=st.lists(route_records(ids), max_size=3).map(tuple),
        deletes=st.lists(route_ids, max_size=2).map(tuple),
        tenants=st.none() | tenant_sets().map(tuple),
    )
    return draw(st.lists(batch, min_size=1, max_size=max_batches))
