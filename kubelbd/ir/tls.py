"""TLS: is a certificate good for a host, which host is served with which one, and which
certificates kubelbd must have issued.

A host is served over HTTPS only with a certificate that parses, whose key matches, that is
valid now and that names the host. Anything else is a problem reported on the Route, and the
host is left out of the HTTPS listener (and out of the HTTP→HTTPS redirect, which would only
lead to a broken page): a bad certificate never reaches Envoy, and never affects another host.

"Parses" means for Envoy, not only for this library: a key Envoy's BoringSSL refuses (a
secp256k1 or brainpool curve, Ed448, RSA-PSS, RSA under 2048 bits) would have Envoy reject the
certificate, so it is refused here first (`SUPPORTED_KEYS`; tests/test_tls_keys.py holds the
two to the same verdict with `envoy --mode validate`). What a Secret holds is bounded too:
it is copied into Envoy's configuration and parsed again on every plan.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, PublicKeyAlgorithmOID

from ..records.names import copy_name, secret_id, secret_tenant
from ..records.problems import Problem
from ..records.types import RouteRecord, TLSEntry
from .http import IR

#: At most this much in tls.crt, in tls.key, and this many certificates in the chain.
MAX_CHAIN_BYTES = 64 * 1024
MAX_KEY_BYTES = 16 * 1024
MAX_CHAIN_LENGTH = 10
#: RSA key sizes served: Envoy refuses less than 2048 bits, and a key larger than 8192 bits
#: would cost every handshake dearly on a machine the tenants share.
RSA_BITS = (2048, 8192)
#: ECDSA curves BoringSSL serves with.
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")
SUPPORTED_KEYS = (
    f"RSA of {RSA_BITS[0]} to {RSA_BITS[1]} bits, ECDSA on P-256, P-384 or P-521, or Ed25519"
)


@dataclass(frozen=True)
class CertificateData:
    """A TLS Secret's content, as stored in the management cluster."""

    name: str  # secret id: <tenant>/<secret name>
    cert_pem: bytes
    key_pem: bytes
    #: why the Secret's content could not even be read (then both are empty)
    defect: str = ""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.cert_pem + b"\0" + self.key_pem).hexdigest()[:16]


@dataclass(frozen=True)
class Certificate:
    names: tuple[str, ...]  # DNS SANs (or the CN when there are none), lower-case
    not_before: dt.datetime
    not_after: dt.datetime


def certificate_data(name: str, secret: Mapping[str, object]) -> CertificateData:
    """A Secret's certificate and key. Never raises: content that cannot even be decoded is a
    defect, which `inspect` reports as the certificate's problem (and nothing of it is served,
    not even what the Secret held before)."""
    data = secret.get("data") or {}
    if not isinstance(data, Mapping):
        return CertificateData(name, b"", b"", "the Secret's data is not a map")
    decoded = []
    for key in ("tls.crt", "tls.key"):
        try:
            decoded.append(base64.b64decode(data.get(key) or b"", validate=True))
        except (binascii.Error, TypeError, ValueError):
            return CertificateData(name, b"", b"", f"{key} is not base64")
    return CertificateData(name, decoded[0], decoded[1])


def inspect(data: CertificateData) -> Certificate | Problem:
    """The certificate's names and validity, or the problem that makes it unusable. Never
    raises: whatever a Secret holds (a key type the library does not support, an encoding it
    trips on) is a problem of that Secret, not of the process."""
    try:
        return _inspect(data)
    except Exception as e:  # the library raises many kinds for input it cannot use
        return Problem("InvalidCertificate", f"{data.name}: certificate cannot be used: {e}")


def _inspect(data: CertificateData) -> Certificate | Problem:
    if data.defect:
        return Problem("InvalidCertificate", f"{data.name}: {data.defect}")
    for what, size, limit in (
        ("tls.crt", len(data.cert_pem), MAX_CHAIN_BYTES),
        ("tls.key", len(data.key_pem), MAX_KEY_BYTES),
    ):
        if size > limit:
            return Problem(
                "InvalidCertificate", f"{data.name}: {what} holds {size} bytes, at most {limit}"
            )
    try:
        chain = x509.load_pem_x509_certificates(data.cert_pem)
    except ValueError as e:
        return Problem("InvalidCertificate", f"{data.name}: certificate does not parse: {e}")
    if not chain:
        return Problem("InvalidCertificate", f"{data.name}: no certificate in tls.crt")
    if len(chain) > MAX_CHAIN_LENGTH:
        return Problem(
            "InvalidCertificate",
            f"{data.name}: a chain of {len(chain)} certificates, at most {MAX_CHAIN_LENGTH}",
        )
    leaf = chain[0]
    unsupported = _unsupported_key(leaf)
    if unsupported:
        return Problem(
            "UnsupportedKey",
            f"{data.name}: the certificate has {unsupported}; Envoy takes {SUPPORTED_KEYS}",
        )
    try:
        # The RSA check this skips tests the primes (seconds for a large key, in the event
        # loop); `_consistent` does the arithmetic BoringSSL checks, in microseconds.
        key = serialization.load_pem_private_key(
            data.key_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
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
    if isinstance(key, rsa.RSAPrivateKey) and not _consistent(key):
        return Problem("InvalidCertificate", f"{data.name}: the RSA private key is inconsistent")
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = tuple(str(c.value).lower() for c in cns)
    return Certificate(names, leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def _unsupported_key(leaf: x509.Certificate) -> str:
    """What is wrong with the certificate's key for Envoy, or "" (see SUPPORTED_KEYS)."""
    kind = leaf.public_key_algorithm_oid
    if kind == PublicKeyAlgorithmOID.ED25519:
        return ""
    if kind == PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5:
        key = leaf.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        low, high = RSA_BITS
        return "" if low <= key.key_size <= high else f"an RSA key of {key.key_size} bits"
    if kind == PublicKeyAlgorithmOID.EC_PUBLIC_KEY:
        try:
            key = leaf.public_key()
        except (ValueError, TypeError):  # a curve this library does not know either
            return "an ECDSA key on an unknown curve"
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return "" if key.curve.name in EC_CURVES else f"an ECDSA key on {key.curve.name}"
    name = getattr(kind, "_name", "")
    return f"a key of type {name if name and name != 'Unknown OID' else kind.dotted_string}"


def _consistent(key: rsa.RSAPrivateKey) -> bool:
    """The RSA private key's numbers agree with each other (what BoringSSL checks when it
    loads a key, short of testing the primes)."""
    n = key.private_numbers()
    p, q, d, e = n.p, n.q, n.d, n.public_numbers.e
    return (
        p > 1
        and q > 1
        and p * q == n.public_numbers.n
        and d * e % math.lcm(p - 1, q - 1) == 1
        and n.dmp1 == d % (p - 1)
        and n.dmq1 == d % (q - 1)
        and n.iqmp * q % p == 1
    )


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
    cert = usable(data, now)
    if isinstance(cert, Problem):
        return cert
    if not covers(cert, host):
        return Problem("CertificateHostMismatch", f"{data.name}: certificate does not name {host}")
    return None


def usable(data: CertificateData, now: dt.datetime) -> Certificate | Problem:
    """The certificate, if Envoy can serve it now (whatever names it has), else why not."""
    cert = inspect(data)
    if isinstance(cert, Problem):
        return cert
    if now < cert.not_before:
        return Problem("CertificateNotYetValid", f"{data.name}: valid only from {cert.not_before}")
    if now >= cert.not_after:
        return Problem("CertificateExpired", f"{data.name}: expired on {cert.not_after}")
    return cert


@dataclass(frozen=True)
class TLSHost:
    host: str
    secret: str  # secret id
    redirect: bool
    #: the certificate this host was served with before `secret`, of the same tenant: the
    #: connections made with it may still ask for the host while Envoy drains them
    formerly: str = ""
    #: since when `secret` is kept although the route's own certificate is not there
    held_since: dt.datetime | None = None


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
    previous: TLSPlan | None = None,
) -> TLSPlan:
    """Which owned hosts get HTTPS, with which certificate; problems per route. `pending`
    says, per secret id, why an issued certificate is not there yet (Issuing, Failed...).

    `previous`, the plan before this one, makes a change of certificate make-before-break:
    - a host whose route names another certificate that is not there yet (a new Secret's
      copy not arrived: another watch, in no order; an issued one not issued yet) keeps the
      one it was served with, for at most HOLD, as long as that one is of the same tenant
      and still good for it; the route reports the problem all the same. Without this, a
      host switching Secrets lost HTTPS until the new copy arrived (the HTTPS listener
      itself, when it was the only TLS host). Never held over: a certificate that is there
      but bad, nor the same Secret deleted or replaced (the tenant meant the old one to go);
    - a host that moves to another certificate remembers the one before (`formerly`), so
      requests on connections made with it are still routed while Envoy drains them,
      rather than answered 421."""
    out = TLSPlan()
    before = previous.hosts if previous is not None else {}
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
                was = before.get(host)
                if was is not None and secret_tenant(was.secret) != route.tenant:
                    was = None  # another tenant's certificate: never carried over
                if problem is not None:
                    out.problems.setdefault(route.id, []).append(problem)
                    absent = secrets.get(sid) is None
                    if absent and previous is not None and was is not None and was.secret != sid:
                        kept = previous.secrets.get(was.secret)
                        held = _held(was, kept, now, redirect)
                        if held is not None and kept is not None:
                            out.hosts[host] = held
                            out.secrets[held.secret] = kept
                    continue
                formerly = ""
                if was is not None:
                    formerly = was.formerly if was.secret == sid else was.secret
                out.hosts[host] = TLSHost(host, sid, redirect, formerly)
                out.secrets[sid] = secrets[sid]
    return out


#: how long a host keeps its certificate while the one its route names is not there
HOLD = dt.timedelta(seconds=30)


def _held(
    was: TLSHost, data: CertificateData | None, now: dt.datetime, redirect: bool
) -> TLSHost | None:
    """`was` kept one more plan, if its certificate is still good and HOLD has not run out."""
    since = was.held_since or now
    if data is None or now - since > HOLD or check(data, was.host, now, "") is not None:
        return None
    return TLSHost(was.host, was.secret, redirect, was.formerly, since)


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
        return secret_tenant(self.secret_id)

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
                    and not _covers_anothers(ir, h, route.tenant)
                )
            )  # fmt: skip
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


def _covers_anothers(ir: IR, host: str, tenant: str) -> bool:
    """Whether wildcard `host` names a host another tenant serves: a CA's certificate for it
    would be valid for that tenant's name too, so none is ordered while one does."""
    if not host.startswith("*."):
        return False
    parent = host[1:]
    return any(
        vh.tenant != tenant and h.endswith(parent) and "." not in h[: -len(parent)]
        for h, vh in ir.vhosts.items()
        if h != host
    )


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
