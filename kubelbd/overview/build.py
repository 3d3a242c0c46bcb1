"""Records → the overview: tenants with their health, routes with hosts, state and
certificates, load balancers, and every refusal the records carry, newest first.

Nothing is decided again here: who owns a host, what is served and what is refused are what
the data plane and the tenant side wrote into the records' status. This only reads them,
and the certificates' expiry from the certificates themselves."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections import Counter
from collections.abc import Iterable
from typing import Any

from cryptography import x509

from ..ir.http import display_host
from ..ir.status import PROGRESS_REASONS
from ..ir.tls import tls_secret_of
from ..objects import Obj
from ..records import parse
from ..records.names import TLS_SOURCE_LABEL, copy_name, secret_id, tenant_of
from ..records.types import RouteRecord
from .envoy_facts import envoy_facts
from .model import (
    CertificateView,
    Check,
    LoadBalancerView,
    Overview,
    Refusal,
    RouteView,
    TenantView,
    healthy,
)
from .snapshot import Snapshot


def overview(snap: Snapshot, now: dt.datetime) -> Overview:
    certificates = {
        secret_id(t, str(s["metadata"].get("name", ""))): s
        for s in snap.certificates
        if (t := tenant_of(s)) is not None
    }
    routes = sorted(
        (v for o in snap.routes if (v := route_view(o, certificates, now)) is not None),
        key=lambda r: (r.tenant, r.name),
    )
    lbs = sorted(
        (b for o in snap.load_balancers if (b := lb_view(o)) is not None),
        key=lambda b: (b.tenant, b.name),
    )
    tenants = tenant_views(snap.tenants, routes, lbs)
    return Overview(
        generated=now,
        tenants=tenants,
        routes=tuple(routes),
        load_balancers=tuple(lbs),
        refusals=refusals(tenants, routes, lbs),
        envoy=envoy_facts(snap.envoy_configs) if snap.envoy_asked else None,
    )


def checks(status: Any) -> tuple[Check, ...]:
    """The conditions in a record's status (whatever of them has the shape of one)."""
    conds = status.get("conditions") if isinstance(status, dict) else None
    return tuple(
        Check(
            str(c.get("type", "")),
            str(c.get("status", "Unknown")),
            str(c.get("reason", "")),
            str(c.get("message", "")),
            str(c.get("lastTransitionTime", "")),
        )
        for c in (conds if isinstance(conds, list) else [])
        if isinstance(c, dict) and c.get("type")
    )


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _source(spec: Any) -> str:
    src = spec.get("source") if isinstance(spec, dict) else None
    if not isinstance(src, dict):
        return ""
    return f"{src.get('kind', '')} {src.get('namespace', '')}/{src.get('name', '')}"


def _state(checks_: tuple[Check, ...], served: bool = True) -> str:
    """Serving (programmed, nothing refused), Degraded (programmed, something refused),
    Pending (Envoy has not applied it yet, or no status yet) or NotServed."""
    programmed = next((c for c in checks_ if c.type == "Programmed"), None)
    if programmed is None or programmed.ok is None:
        return "Pending"
    if not programmed.ok or not served:
        return "NotServed"
    return "Serving" if all(c.ok is not False for c in checks_) else "Degraded"


def route_hosts(route: RouteRecord) -> tuple[str, ...]:
    hosts = [display_host(r["host"]) for r in route.spec["rules"]]
    if "defaultBackend" in route.spec:
        hosts.append(display_host(""))
    return tuple(dict.fromkeys(hosts))


def route_view(obj: Obj, certificates: dict[str, Obj], now: dt.datetime) -> RouteView | None:
    """The Route in `obj` (None: in no tenant's namespace, so nobody's and never served)."""
    tenant = tenant_of(obj)
    if tenant is None:
        return None
    status = obj.get("status") or {}
    got = checks(status)
    try:
        record = parse.route_record(obj)
    except parse.RecordError as e:
        invalid = Check("Valid", "False", "InvalidRecord", str(e), "")
        return RouteView(tenant, _name(obj), _source(obj.get("spec")), (), (), "Invalid",
                         (invalid, *got), ())  # fmt: skip
    assert record is not None  # tenant_of said it is a tenant's
    served = tuple(h for h in str(status.get("hosts") or "").split(",") if h)
    certs = tuple(
        certificate_view(record, entry, certificates.get(tls_secret_of(record, entry)), now)
        for entry in record.spec.get("tls") or ()
    )
    return RouteView(
        tenant, record.name, _source(record.spec), route_hosts(record), served,
        _state(got, bool(served)), got, certs,
    )  # fmt: skip


def certificate_view(
    route: RouteRecord, entry: Any, secret: Obj | None, now: dt.datetime
) -> CertificateView:
    """A Route's tls entry and the certificate it names, as stored in the management cluster
    (`secret`: the copy or issued certificate; None when there is none yet)."""
    name = tls_secret_of(route, entry)
    source = str(((secret or {}).get("metadata") or {}).get("labels", {}).get(TLS_SOURCE_LABEL)
                 or entry["source"])  # fmt: skip
    hosts = tuple(entry["hosts"])
    if secret is None:
        missing = f"no Secret {copy_name(route.namespace, entry['secretName'])} (yet)"
        return CertificateView(name, source, hosts, (), None, None, missing)
    try:
        crt = base64.b64decode((secret.get("data") or {}).get("tls.crt") or "", validate=True)
        leaf = x509.load_pem_x509_certificates(crt)[0]
    except (binascii.Error, TypeError, ValueError, IndexError) as e:
        return CertificateView(name, source, hosts, (), None, None, f"unreadable: {e}")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    expires = leaf.not_valid_after_utc
    return CertificateView(name, source, hosts, names, expires, (expires - now).days, "")


def lb_view(obj: Obj) -> LoadBalancerView | None:
    tenant = tenant_of(obj)
    if tenant is None:
        return None
    status = obj.get("status") or {}
    got = checks(status)
    try:
        parse.lb_record(obj)
    except parse.RecordError as e:
        got = (Check("Valid", "False", "InvalidRecord", str(e), ""), *got)
    ingress = status.get("ingress") if isinstance(status, dict) else None
    address = ", ".join(
        str(i.get("ip") or i.get("hostname") or "")
        for i in (ingress if isinstance(ingress, list) else [])
        if isinstance(i, dict)
    ) or str(status.get("address") or "")
    return LoadBalancerView(
        tenant, _name(obj), _source(obj.get("spec")), address,
        str(status.get("portsSummary") or ""), _state(got), got,
    )  # fmt: skip


def tenant_views(
    tenants: Iterable[Obj], routes: list[RouteView], lbs: list[LoadBalancerView]
) -> tuple[TenantView, ...]:
    """Every tenant with a Tenant record, and any with records but none (no health then)."""
    route_count = Counter(r.tenant for r in routes)
    lb_count = Counter(b.tenant for b in lbs)
    out: dict[str, TenantView] = {}
    for obj in tenants:
        name = tenant_of(obj)
        if name is None:
            continue
        status = obj.get("status") or {}
        try:
            addresses = tuple(parse.tenant_nodes(obj).get("nodeAddresses") or ())
        except parse.RecordError:
            addresses = ()
        got = checks(status)
        out[name] = TenantView(
            name, healthy(got), got, addresses, str(status.get("lastError") or ""),
            route_count[name], lb_count[name],
        )  # fmt: skip
    for name in (route_count | lb_count).keys() - out.keys():
        out[name] = TenantView(name, False, (), (), "", route_count[name], lb_count[name])
    return tuple(out[n] for n in sorted(out))


def refusals(
    tenants: Iterable[TenantView], routes: Iterable[RouteView], lbs: Iterable[LoadBalancerView]
) -> tuple[Refusal, ...]:
    """Every condition that says no (waiting for an issuer is progress, not a refusal),
    newest first."""
    found = [
        Refusal(c.since, tenant, kind, name, c.type, c.reason, c.message)
        for tenant, kind, name, checks_ in (
            *((t.name, "Tenant", t.name, t.checks) for t in tenants),
            *((r.tenant, "Route", r.name, r.checks) for r in routes),
            *((b.tenant, "LoadBalancer", b.name, b.checks) for b in lbs),
        )
        for c in checks_
        if c.ok is False and c.reason not in PROGRESS_REASONS
    ]
    found.sort(key=lambda r: (r.tenant, r.kind, r.name, r.type))
    found.sort(key=lambda r: r.since, reverse=True)
    return tuple(found)
