"""Tenant certificates: what kubelbd serves is what Envoy takes, and odd input is a problem.

A certificate kubelbd accepts goes into Envoy's configuration, where a key BoringSSL cannot use
makes Envoy reject it: so for every kind of key and PEM layout below, kubelbd's verdict
(`ir.tls.inspect`) must be Envoy's own (`envoy --mode validate` on the rendered listener).
And whatever a Secret holds, `inspect` answers with a Problem, never an exception.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.settings import Settings
from kubelbd.ir import tls
from kubelbd.ir.http import Delta, build
from kubelbd.records.problems import Problem

from .test_properties import envoy_validate, needs_envoy, static_bootstrap

HOST = "a.example.com"
PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
PublicKey = (
    rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
    | dsa.DSAPublicKey
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(public: PublicKey, signer: PrivateKey, host: str = HOST, ca: bool = False) -> bytes:
    """A certificate for `public`, signed by `signer` (self-signed when it is its key)."""
    now = dt.datetime.now(dt.UTC)
    self_signed = signer.public_key() == public
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(_name(host if self_signed else "issuer"))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False
        )
    edwards = isinstance(signer, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return builder.sign(signer, None if edwards else hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM
    )


def _pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _self_signed(key: PrivateKey) -> tuple[bytes, bytes]:
    return _cert(key.public_key(), key), _pem(key)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _inconsistent_rsa() -> tuple[bytes, bytes]:
    """An RSA key whose public part matches its certificate, but whose CRT numbers do not
    belong to it: BoringSSL checks them when it loads the key."""
    good = rsa.generate_private_key(65537, 2048)
    n = good.private_numbers()
    bad = rsa.RSAPrivateNumbers(
        n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    return _cert(good.public_key(), good), _pem(bad)


def _rsa_pss() -> tuple[bytes, bytes]:
    """An RSA-PSS key (the cryptography library cannot make one, and loads it as plain RSA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        key, crt = Path(tmp) / "key.pem", Path(tmp) / "crt.pem"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", key],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["openssl", "req", "-new", "-x509", "-key", key, "-subj", f"/CN={HOST}",
             "-addext", f"subjectAltName=DNS:{HOST}", "-days", "1", "-out", crt],
            check=True, capture_output=True,
        )  # fmt: skip
        return crt.read_bytes(), key.read_bytes()


def _chain_through(intermediate_key: PrivateKey) -> tuple[bytes, bytes]:
    leaf = _p256()
    leaf_cert = _cert(leaf.public_key(), intermediate_key)
    return leaf_cert + _cert(intermediate_key.public_key(), intermediate_key, ca=True), _pem(leaf)


def _leaf_signed_by(signer: PrivateKey) -> tuple[bytes, bytes]:
    key = _p256()
    return _cert(key.public_key(), signer), _pem(key)


def _layout(change: Callable[[bytes, bytes, ec.EllipticCurvePrivateKey], tuple[bytes, bytes]]):  # type: ignore[no-untyped-def]
    def make() -> tuple[bytes, bytes]:
        key = _p256()
        return change(*_self_signed(key), key)

    return make


#: kind -> (tls.crt and tls.key, whether Envoy serves with them)
CASES: dict[str, tuple[Callable[[], tuple[bytes, bytes]], bool]] = {
    "ecdsa-p256": (lambda: _self_signed(_p256()), True),
    "ecdsa-p384": (lambda: _self_signed(ec.generate_private_key(ec.SECP384R1())), True),
    "ecdsa-p521": (lambda: _self_signed(ec.generate_private_key(ec.SECP521R1())), True),
    "ed25519": (lambda: _self_signed(ed25519.Ed25519PrivateKey.generate()), True),
    "rsa-2048": (lambda: _self_signed(rsa.generate_private_key(65537, 2048)), True),
    "rsa-2048-e3": (lambda: _self_signed(rsa.generate_private_key(3, 2048)), True),
    "ecdsa-p224": (lambda: _self_signed(ec.generate_private_key(ec.SECP224R1())), False),
    "ecdsa-secp256k1": (lambda: _self_signed(ec.generate_private_key(ec.SECP256K1())), False),
    "ecdsa-brainpoolP256r1": (
        lambda: _self_signed(ec.generate_private_key(ec.BrainpoolP256R1())),
        False,
    ),
    "ed448": (lambda: _self_signed(ed448.Ed448PrivateKey.generate()), False),
    "rsa-1024": (lambda: _self_signed(rsa.generate_private_key(65537, 1024)), False),
    "dsa": (lambda: _self_signed(dsa.generate_private_key(1024)), False),
    "rsa-pss": (_rsa_pss, False),
    "rsa-inconsistent-crt-numbers": (_inconsistent_rsa, False),
    # Only the serving certificate's key matters to Envoy, not those of its issuers.
    "intermediate-on-secp256k1": (
        lambda: _chain_through(ec.generate_private_key(ec.SECP256K1())),
        True,
    ),
    "signed-by-ed448": (lambda: _leaf_signed_by(ed448.Ed448PrivateKey.generate()), True),
    # PEM as tools write it.
    "bag-attributes": (
        _layout(lambda c, k, _: (b"Bag Attributes\n    friendlyName: a\n" + c, k)),
        True,
    ),
    "crlf": (_layout(lambda c, k, _: (c.replace(b"\n", b"\r\n"), k.replace(b"\n", b"\r\n"))), True),
    "key-in-tls.crt-too": (_layout(lambda c, k, _: (k + c, k)), True),
    "right-key-then-another": (_layout(lambda c, k, _: (c, k + _pem(_p256()))), True),
    "another-key-first": (_layout(lambda c, k, _: (c, _pem(_p256()) + k)), False),
    "key-of-another-certificate": (_layout(lambda c, k, _: (c, _pem(_p256()))), False),
    "encrypted-key": (_layout(lambda c, k, key: (c, _pem(key, password=b"secret"))), False),
    "certificate-then-garbage-certificate": (
        _layout(
            lambda c, k, _: (
                c + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                k,
            )
        ),
        False,
    ),
}


def _envoy_takes(data: tls.CertificateData) -> bool:
    """Whether Envoy accepts the HTTPS listener kubelbd renders with this certificate."""
    settings = Settings(
        config_dir="/config", http_address="127.0.0.1", http_port=18080, https_port=18443, shards=1
    )
    renderer = Renderer(settings)
    ir = build([], [])
    files = renderer.update(ir, Delta.of_all(ir))
    plan = tls.TLSPlan(hosts={HOST: tls.TLSHost(HOST, data.name, True)}, secrets={data.name: data})
    files.update(renderer.update_tls(plan, {}, catch_all=False))
    result = envoy_validate(static_bootstrap(files, {data.name: data}))
    failure = "Failed to load" in result.stderr + result.stdout
    assert result.returncode == 0 or failure, result.stderr[-2000:]  # no other reason
    return result.returncode == 0


@needs_envoy
@pytest.mark.parametrize("kind", sorted(CASES))
def test_kubelbd_serves_a_certificate_exactly_when_envoy_takes_it(kind: str) -> None:
    make, envoy_takes = CASES[kind]
    cert_pem, key_pem = make()
    data = tls.CertificateData("alpha/default.site-tls", cert_pem, key_pem)
    verdict = tls.inspect(data)
    assert _envoy_takes(data) is envoy_takes
    assert isinstance(verdict, tls.Certificate) is envoy_takes, verdict
    if not envoy_takes:
        assert isinstance(verdict, Problem) and data.name in verdict.message


def _huge_rsa_certificate() -> bytes:
    """A certificate for a 16384-bit RSA key (made up: no private key is needed to refuse it)."""
    modulus = int.from_bytes(os.urandom(2048), "big") | (1 << 16383) | 1
    return _cert(rsa.RSAPublicNumbers(65537, modulus).public_key(), _p256())


def _chain(length: int) -> bytes:
    issuer = _p256()
    return _self_signed(_p256())[0] + _cert(issuer.public_key(), issuer, ca=True) * (length - 1)


def _der() -> bytes:
    pem = _self_signed(_p256())[0]
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


ODD: dict[str, tuple[Callable[[], tuple[bytes, bytes]], str, str]] = {
    "empty": (lambda: (b"", b""), "InvalidCertificate", "does not parse"),
    "garbage": (lambda: (b"\x00\xffgarbage", b"garbage"), "InvalidCertificate", "does not parse"),
    "garbage-pem": (
        lambda: (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", b""),
        "InvalidCertificate",
        "does not parse",
    ),
    "der-certificate": (lambda: (_der(), b""), "InvalidCertificate", "does not parse"),
    "no-key": (lambda: (_self_signed(_p256())[0], b""), "InvalidCertificate", "private key"),
    "one-mebibyte": (
        lambda: (os.urandom(1 << 20), os.urandom(1 << 20)),
        "InvalidCertificate",
        "at most",
    ),
    "huge-key-file": (
        lambda: (_self_signed(_p256())[0], b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 20000),
        "InvalidCertificate",
        "tls.key holds",
    ),
    "chain-of-eleven": (
        lambda: (_chain(11), b""),
        "InvalidCertificate",
        "a chain of 11 certificates",
    ),
    "chain-over-64-KiB": (lambda: (_chain(10) * 20, b""), "InvalidCertificate", "tls.crt holds"),
    "rsa-16384-bits": (
        lambda: (_huge_rsa_certificate(), _pem(_p256())),
        "UnsupportedKey",
        "RSA key of 16384 bits",
    ),
    "ed25519-key-for-an-ecdsa-certificate": (
        lambda: (_self_signed(_p256())[0], _pem(ed25519.Ed25519PrivateKey.generate())),
        "KeyMismatch",
        "does not match",
    ),
}


@pytest.mark.parametrize("case", sorted(ODD))
def test_odd_content_is_a_problem_of_its_secret(case: str) -> None:
    make, reason, says = ODD[case]
    cert_pem, key_pem = make()
    verdict = tls.inspect(tls.CertificateData("alpha/default.odd", cert_pem, key_pem))
    assert isinstance(verdict, Problem)
    assert (verdict.reason, says in verdict.message) == (reason, True), verdict.message
    assert verdict.message.startswith("alpha/default.odd: ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("secret", "defect"),
    [
        ({"data": {"tls.crt": "not base64!", "tls.key": ""}}, "tls.crt is not base64"),
        ({"data": {"tls.crt": _b64(b"x"), "tls.key": "é"}}, "tls.key is not base64"),
        ({"data": {"tls.crt": 12, "tls.key": None}}, "tls.crt is not base64"),
        ({"data": ["tls.crt"]}, "the Secret's data is not a map"),
        ({"data": "tls.crt"}, "the Secret's data is not a map"),
    ],
)
def test_a_secret_that_does_not_decode_is_a_problem(secret: dict[str, object], defect: str) -> None:
    data = tls.certificate_data("alpha/default.odd", secret)
    assert (data.cert_pem, data.key_pem, data.defect) == (b"", b"", defect)
    verdict = tls.inspect(data)
    assert verdict == Problem("InvalidCertificate", f"alpha/default.odd: {defect}")


def test_a_secret_decodes_to_its_certificate_and_key() -> None:
    cert_pem, key_pem = _self_signed(_p256())
    secret = {"data": {"tls.crt": _b64(cert_pem), "tls.key": _b64(key_pem)}}
    assert tls.certificate_data("alpha/x", secret) == tls.CertificateData(
        "alpha/x", cert_pem, key_pem
    )
    assert tls.certificate_data("alpha/x", {}) == tls.CertificateData("alpha/x", b"", b"")
