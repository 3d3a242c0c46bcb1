"""TLS: is a certificate good for a host, which host is served with which one, and which
certificates kubelbd must have issued.

A host is served over HTTPS only with a certificate that parses, whose key matches, that is
valid now and that names the host. Anything else is a problem reported on the Route, and the
host is left out of the HTTPS listener (and out of the HTTP→HTTPS redirect, which would only
lead to a broken page): a bad certificate never reaches Envoy, and never affects another host.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..records.names import copy_name, secret_id
from ..records.problems import Problem
from ..records.types import RouteRecord, TLSEntry
from .http import IR


@dataclass(frozen=True)
class CertificateData:
    """A TLS Secret's content, as stored in the management cluster."""

    name: str  # secret id: <tenant>/<secret name>
    cert_pem: bytes
    key_pem: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.cert_pem + b"\0" + self.key_pem).hexdigest()[:16]


@dataclass(frozen=True)
class Certificate:
    names: tuple[str, ...]  # DNS SANs (or the CN when there are none), lower-case
    not_before: dt.datetime
    not_after: dt.datetime


def secret_data(secret: dict[str, object]) -> tuple[bytes, bytes]:
    data = secret.get("data") or {}
    assert isinstance(data, dict)
    return base64.b64decode(data.get("tls.crt", "")), base64.b64decode(data.get("tls.key", ""))


def inspect(data: CertificateData) -> Certificate | Problem:
    """The certificate's names and validity, or the problem that makes it unusable. Never
    raises: whatever a Secret holds (a key type the library does not support, an encoding it
    trips on) is a problem of that Secret, not of the process."""
    try:
        return _inspect(data)
    except Exception as e:  # the library raises many kinds for input it cannot use
        return Problem("InvalidCertificate", f"{data.name}: certificate cannot be used: {e}")


def _inspect(data: CertificateData) -> Certificate | Problem:
    try:
        chain = x509.load_pem_x509_certificates(data.cert_pem)
    except ValueError as e:
        return Problem("InvalidCertificate", f"{data.name}: certificate does not parse: {e}")
    if not chain:
        return Problem("InvalidCertificate", f"{data.name}: no certificate in tls.crt")
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(data.key_pem, password=None)
    except (ValueError, TypeError) as e:
        return Problem("InvalidCertificate", f"{data.name}: private key does not parse: {e}")
    pub = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if (
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != pub
    ):
        return Problem("KeyMismatch", f"{data.name}: private key does not match the certificate")
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = tuple(str(c.value).lower() for c in cns)
    return Certificate(names, leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def covers(cert: Certificate, host: str) -> bool:
    """RFC 6125: an exact name, or a wildcard standing for exactly the left-most label."""
    for name in cert.names:
        if name == host:
            return True
        if name.startswith("*.") and not host.startswith("*."):
            _, dot, rest = host.partition(".")
            if dot and name[2:] == rest:
                return True
    return False


def check(data: CertificateData | None, host: str, now: dt.datetime, secret: str) -> Problem | None:
    if data is None:
        return Problem("SecretNotFound", f"TLS Secret {secret} for {host} not found")
    cert = inspect(data)
    if isinstance(cert, Problem):
        return cert
    if now < cert.not_before:
        return Problem("CertificateNotYetValid", f"{data.name}: valid only from {cert.not_before}")
    if now >= cert.not_after:
        return Problem("CertificateExpired", f"{data.name}: expired on {cert.not_after}")
    if not covers(cert, host):
        return Problem("CertificateHostMismatch", f"{data.name}: certificate does not name {host}")
    return None


@dataclass(frozen=True)
class TLSHost:
    host: str
    secret: str  # secret id
    redirect: bool


@dataclass
class TLSPlan:
    hosts: dict[str, TLSHost] = field(default_factory=dict)
    secrets: dict[str, CertificateData] = field(default_factory=dict)  # only the ones served
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # route id -> problems


def tls_secret_of(route: RouteRecord, entry: TLSEntry) -> str:
    """The secret id a Route's tls entry points at: the management cluster copy (or issued
    certificate) `<tenant>/<namespace>.<secretName>`."""
    return secret_id(route.tenant, copy_name(route.namespace, entry["secretName"]))


def plan(
    ir: IR,
    routes: Iterable[RouteRecord],
    secrets: dict[str, CertificateData],
    now: dt.datetime,
    pending: dict[str, Problem] | None = None,
) -> TLSPlan:
    """Which owned hosts get HTTPS, with which certificate; problems per route. `pending`
    says, per secret id, why an issued certificate is not there yet (Issuing, Failed...)."""
    out = TLSPlan()
    for route in sorted(routes, key=lambda r: r.age_key):
        redirect = route.spec.get("options", {}).get("sslRedirect", "true") != "false"
        for entry in route.spec.get("tls", []):
            sid = tls_secret_of(route, entry)
            for host in entry["hosts"]:
                vh = ir.vhosts.get(host)
                if vh is None or vh.tenant != route.tenant or host in out.hosts:
                    continue  # not this tenant's host (conflict), or an older route's TLS wins
                problem = check(secrets.get(sid), host, now, sid.split("/", 1)[1])
                if problem is not None and pending and sid in pending:
                    problem = pending[sid]
                if problem is not None:
                    out.problems.setdefault(route.id, []).append(problem)
                    continue
                out.hosts[host] = TLSHost(host, sid, redirect)
                out.secrets[sid] = secrets[sid]
    return out


# ---- certificates kubelbd has issued ---------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """One certificate a Route needs from an issuer (kubelbd's ACME client, cert-manager)."""

    secret_id: str  # <tenant>/<namespace>.<secretName>
    hosts: tuple[str, ...]
    source: str  # acme | cert-manager
    issuer: tuple[str, str] = ("", "")  # cert-manager: (kind, name)

    @property
    def tenant(self) -> str:
        return self.secret_id.split("/", 1)[0]

    @property
    def secret_name(self) -> str:
        return self.secret_id.split("/", 1)[1]


def wanted(ir: IR, routes: Iterable[RouteRecord]) -> dict[str, Wanted]:
    """Issued certificates the routes need, for hosts their tenant owns only."""
    out: dict[str, Wanted] = {}
    for route in sorted(routes, key=lambda r: r.age_key):
        options = route.spec.get("options", {})
        for entry in route.spec.get("tls", []):
            source = entry["source"]
            if source == "tenant":
                continue
            hosts = tuple(
                sorted(
                    h
                    for h in entry["hosts"]
                    if (vh := ir.vhosts.get(h)) is not None and vh.tenant == route.tenant
                )
            )
            if not hosts:
                continue
            sid = tls_secret_of(route, entry)
            issuer = ("", "")
            if source == "cert-manager":
                if options.get("cert-manager.io/cluster-issuer"):
                    issuer = ("ClusterIssuer", options.get("cert-manager.io/cluster-issuer", ""))
                else:
                    issuer = ("Issuer", options.get("cert-manager.io/issuer", ""))
            prior = out.get(sid)
            merged = tuple(sorted(set(hosts) | set(prior.hosts if prior else ())))
            out[sid] = Wanted(sid, merged, source, issuer)
    return out


def renewal_time(
    data: CertificateData | None, hosts: tuple[str, ...], fraction: float
) -> dt.datetime | None:
    """When a certificate for `hosts` is due for renewal: once less than `fraction` of its
    lifetime is left. None: there is no usable one, it is due now."""
    if data is None:
        return None
    cert = inspect(data)
    if isinstance(cert, Problem) or not all(covers(cert, h) for h in hosts):
        return None
    life = cert.not_after - cert.not_before
    return cert.not_after - life * fraction
