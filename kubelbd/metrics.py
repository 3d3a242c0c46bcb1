"""Every metric kubelbd exposes on /metrics, in one place (names `kubelbd_*`).

Two kinds, recorded two ways:

- state (routes, load balancers, certificates and their expiry, conflicts, refusals, per
  tenant) is computed when Prometheus scrapes, from a snapshot of what the data plane holds
  (`observe_state`): a gauge incremented in many places drifts, one read from the state
  cannot;
- events (publish time, watch-to-applied latency, failed API writes, Envoy's rejections,
  leadership) are recorded where they happen, with the functions below.

The registry is kubelbd's own, not prometheus_client's global one: only what this module
defines (and the process collector) is exposed, whatever else a library registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

# ---- events, recorded where they happen -------------------------------------------------------

PUBLISH_SECONDS = Histogram(
    "kubelbd_publish_duration_seconds",
    "Time to write the Envoy files one render changed (encode, write, fsync, rename).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
WATCH_TO_APPLIED_SECONDS = Histogram(
    "kubelbd_watch_to_applied_seconds",
    "From a record change reaching the data plane (from the tenant side or the record watch)"
    " to kubelbd seeing Envoy report the files holding it applied.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)
API_WRITE_FAILURES = Counter(
    "kubelbd_api_write_failures",
    "API writes (create, update, apply, patch, delete) that failed, by cluster, verb,"
    " resource and HTTP status (`connection` when no answer came).",
    ["cluster", "verb", "resource", "code"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "kubelbd_leader",
    "1 while this replica is the leader, 0 otherwise (0 until leadership is decided).",
    registry=REGISTRY,
)

GC_PAUSE_SECONDS = Histogram(
    "kubelbd_gc_pause_seconds",
    "Collections of the interpreter's oldest generation: each stops the event loop (every"
    " watch, write and renewal of the Lease) for as long as it takes.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)


def set_leader(leader: bool) -> None:
    LEADER.set(1 if leader else 0)


def gc_paused(seconds: float) -> None:
    GC_PAUSE_SECONDS.observe(seconds)


def publish_took(seconds: float) -> None:
    PUBLISH_SECONDS.observe(seconds)


def applied_after(kind: str, seconds: float) -> None:
    WATCH_TO_APPLIED_SECONDS.labels(kind=kind).observe(seconds)


def api_write_failed(cluster: str, verb: str, resource: str, code: str) -> None:
    API_WRITE_FAILURES.labels(cluster=cluster, verb=verb, resource=resource, code=code).inc()


# ---- Envoy's rejections, as Envoy last reported them -------------------------------------------


class _EnvoyRejections:
    """Envoy's own `update_rejected` counters, summed per xDS type, as last read from its
    admin interface: a copy of Envoy's counter (it starts again when Envoy does, which
    Prometheus' rate() takes as a reset)."""

    def __init__(self) -> None:
        self.by_type: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "kubelbd_envoy_update_rejected",
            "Configuration updates Envoy rejected, per xDS type (lds, cds, rds, srds, sds), as"
            " its admin interface last reported them.",
            labels=["type"],
        )
        for xds, count in sorted(self.by_type.items()):
            family.add_metric([xds], count)
        yield family


_REJECTIONS = _EnvoyRejections()
REGISTRY.register(_REJECTIONS)


def envoy_rejections(by_type: Mapping[str, int]) -> None:
    """Envoy's update_rejected counters as just read, per xDS type."""
    _REJECTIONS.by_type = dict(by_type)


# ---- state, computed at scrape time ------------------------------------------------------------


@dataclass(frozen=True)
class TenantState:
    routes: int = 0
    load_balancers: int = 0
    certificates: int = 0  # served
    conflicts: int = 0  # hosts its routes ask for that another tenant holds
    refusals: Mapping[str, int] = field(default_factory=dict)  # reason -> count


@dataclass(frozen=True)
class CertificateExpiry:
    tenant: str
    certificate: str  # the Secret's name in the tenant's namespace of the management cluster
    host: str
    not_after: float  # seconds since the epoch


@dataclass(frozen=True)
class Snapshot:
    tenants: Mapping[str, TenantState] = field(default_factory=dict)
    certificates: Sequence[CertificateExpiry] = ()


class _State:
    """Gauges read from the data plane's state when scraped (nothing while none runs)."""

    def __init__(self) -> None:
        self.source: Callable[[], Snapshot] | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.source() if self.source is not None else Snapshot()

        def per_tenant(name: str, doc: str, value: Callable[[TenantState], int]) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=["tenant"])
            for tenant, state in sorted(snap.tenants.items()):
                family.add_metric([tenant], value(state))
            return family

        yield per_tenant("kubelbd_routes", "Route records served.", lambda s: s.routes)
        yield per_tenant(
            "kubelbd_load_balancers", "LoadBalancer records served.", lambda s: s.load_balancers
        )
        yield per_tenant(
            "kubelbd_certificates", "Certificates served over HTTPS.", lambda s: s.certificates
        )
        yield per_tenant(
            "kubelbd_conflicts",
            "Hosts the tenant's routes ask for that another tenant holds.",
            lambda s: s.conflicts,
        )
        refusals = GaugeMetricFamily(
            "kubelbd_refusals",
            "Parts of the tenant's objects kubelbd refuses to serve, by reason (the problems"
            " the records' conditions name), and records refused as malformed (InvalidRecord).",
            labels=["tenant", "reason"],
        )
        for tenant, state in sorted(snap.tenants.items()):
            for reason, count in sorted(state.refusals.items()):
                refusals.add_metric([tenant, reason], count)
        yield refusals
        expiry = GaugeMetricFamily(
            "kubelbd_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (notAfter), per host it serves.",
            labels=["tenant", "certificate", "host"],
        )
        for c in snap.certificates:
            expiry.add_metric([c.tenant, c.certificate, c.host], c.not_after)
        yield expiry


_STATE = _State()
REGISTRY.register(_STATE)


@contextmanager
def observe_state(source: Callable[[], Snapshot]) -> Iterator[None]:
    """Scrapes read the state gauges from `source` while inside (the data plane, while it
    runs)."""
    _STATE.source = source
    try:
        yield
    finally:
        if _STATE.source is source:
            _STATE.source = None
