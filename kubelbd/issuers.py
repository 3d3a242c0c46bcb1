"""Certificates kubelbd does not get from the tenant: issued over ACME by kubelbd itself, or
requested from cert-manager running in the management cluster.

Both write a `kubernetes.io/tls` Secret named `<namespace>.<secretName>` into the tenant's
namespace of the management cluster, labelled `kubelb.io/tls=true`, which the data plane then
serves like a copied tenant Secret (and refuses like one, if it is bad).

ACME: HTTP-01 through Envoy itself. The challenge answers are put into the HTTP front table as
direct responses (for any host, ahead of the HTTPS redirect), and only once Envoy reports that
configuration applied is the CA told to validate. Certificates are renewed when less than a
third of their lifetime is left. The `acme` package (certbot's protocol library) speaks the
protocol; it is synchronous, so every call runs in a worker thread.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import records, tls
from .informer import Backoff
from .ingress import CERT_MANAGER_CLUSTER_ISSUER, CERT_MANAGER_ISSUER, Problem
from .ir import IR, RouteRecord
from .kube import SECRETS, ApiError, Kube, Obj, Resource
from .tenant_tls import SOURCE_LABEL, TLS_LABEL

log = logging.getLogger(__name__)

CERTIFICATES = Resource("cert-manager.io/v1", "certificates")


@dataclass(frozen=True)
class Wanted:
    """One certificate a Route needs from an issuer."""

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


def wanted(ir: IR, routes: list[RouteRecord]) -> dict[str, Wanted]:
    """Issued certificates the routes need, for hosts their tenant owns only."""
    out: dict[str, Wanted] = {}
    for route in sorted(routes, key=lambda r: r.age_key):
        options = route.spec.get("options") or {}
        for entry in route.spec.get("tls") or []:
            source = entry.get("source", "tenant")
            if source == "tenant":
                continue
            hosts = tuple(
                sorted(
                    h
                    for h in entry.get("hosts") or []
                    if (vh := ir.vhosts.get(h)) is not None and vh.tenant == route.tenant
                )
            )
            if not hosts:
                continue
            sid = tls.tls_secret_of(route, entry)
            issuer = ("", "")
            if source == "cert-manager":
                if options.get(CERT_MANAGER_CLUSTER_ISSUER):
                    issuer = ("ClusterIssuer", options[CERT_MANAGER_CLUSTER_ISSUER])
                else:
                    issuer = ("Issuer", options.get(CERT_MANAGER_ISSUER, ""))
            prior = out.get(sid)
            merged = tuple(sorted(set(hosts) | set(prior.hosts if prior else ())))
            out[sid] = Wanted(sid, merged, source, issuer)
    return out


def needs_issuing(
    data: tls.CertificateData | None, hosts: tuple[str, ...], now: dt.datetime, fraction: float
) -> bool:
    """No usable certificate for all the hosts, or less than `fraction` of its life left."""
    if data is None:
        return True
    cert = tls.inspect(data)
    if isinstance(cert, Problem):
        return True
    if not all(tls.covers(cert, h) for h in hosts):
        return True
    life = cert.not_after - cert.not_before
    return now >= cert.not_after - life * fraction


def certificate(w: Wanted) -> Obj:
    kind, name = w.issuer
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": w.secret_name,
            "namespace": records.namespace_of(w.tenant),
            "labels": records.labels(w.tenant),
        },
        "spec": {
            "secretName": w.secret_name,
            "dnsNames": list(w.hosts),
            "issuerRef": {"group": "cert-manager.io", "kind": kind, "name": name},
            # So that the Secret cert-manager writes is one the data plane watches.
            "secretTemplate": {
                "labels": records.labels(w.tenant)
                | {TLS_LABEL: "true", SOURCE_LABEL: "cert-manager"}
            },
        },
    }


def issued_secret(w: Wanted, fullchain: bytes, key: bytes, directory: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": w.secret_name,
            "namespace": records.namespace_of(w.tenant),
            "labels": records.labels(w.tenant) | {TLS_LABEL: "true", SOURCE_LABEL: "acme"},
            "annotations": {"kubelb.io/acme-directory": directory},
        },
        "data": {
            "tls.crt": base64.b64encode(fullchain).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


@dataclass(frozen=True)
class ACMESettings:
    directory: str = ""
    email: str = ""
    ca_bundle: str | None = None  # to trust the ACME server's own TLS certificate
    renew_fraction: float = 1 / 3
    namespace: str = "kubelb"  # where the account key is kept
    account_secret: str = "kubelbd-acme-account"


@dataclass
class Progress:
    problem: Problem | None = None  # shown on the Route while there is no good certificate
    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=5, maximum=300))


class Issuers:
    """Keeps the issued certificates the routes want: ACME orders and cert-manager requests."""

    def __init__(
        self,
        mgmt: Kube,
        settings: ACMESettings,
        certificates: Callable[[], dict[str, tls.CertificateData]],
        publish_challenges: Callable[[dict[str, str]], Awaitable[bool]],
        on_progress: Callable[[], None],
    ) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self._certificates = certificates
        self._publish_challenges = publish_challenges
        self._on_progress = on_progress
        self.wanted: dict[str, Wanted] = {}
        self.progress: dict[str, Progress] = {}
        self._challenges: dict[str, str] = {}
        self._cert_manager: dict[str, Wanted] = {}  # Certificates created
        self._client: Any = None
        self._wake = anyio.Event()

    def update(self, wanted_now: dict[str, Wanted]) -> None:
        if wanted_now != self.wanted:
            self.wanted = wanted_now
            self._wake.set()

    def pending(self) -> dict[str, Problem]:
        """Per secret id: what to show on the Route while its certificate is not there yet."""
        return {sid: p.problem for sid, p in self.progress.items() if p.problem is not None}

    async def run(self) -> None:
        while True:
            try:
                await self._pass()
            except (ApiError, ConnectionError) as e:
                log.warning("certificates: %s; retrying", e)
            with anyio.move_on_after(10):  # also re-check expiry now and then
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _pass(self) -> None:
        await self._sync_cert_manager()
        now = dt.datetime.now(dt.UTC)
        certs = self._certificates()
        for sid, w in sorted(self.wanted.items()):
            if w.source != "acme":
                continue
            progress = self.progress.setdefault(sid, Progress())
            if not needs_issuing(certs.get(sid), w.hosts, now, self.settings.renew_fraction):
                if progress.problem is not None:
                    progress.problem = None
                    self._on_progress()
                continue
            if anyio.current_time() < progress.retry_at:
                continue
            await self._issue(w, progress)
        for sid in [s for s in self.progress if s not in self.wanted]:
            del self.progress[sid]
        await self._collect_acme_secrets()

    # ---- ACME ----------------------------------------------------------------------------------

    async def _issue(self, w: Wanted, progress: Progress) -> None:
        if not self.settings.directory:
            progress.problem = Problem("NoACMEDirectory", "kubelbd has no --acme-directory")
            progress.retry_at = anyio.current_time() + 60
            self._on_progress()
            return
        progress.problem = Problem(
            "Issuing", f"requesting a certificate for {', '.join(w.hosts)} over ACME"
        )
        self._on_progress()
        try:
            fullchain, key = await self._order(w)
            await self.mgmt.apply(
                SECRETS, issued_secret(w, fullchain, key, self.settings.directory)
            )
            log.info("certificate %s issued for %s", w.secret_id, ", ".join(w.hosts))
            progress.problem = None
            progress.backoff.reset()
        except Exception as e:  # the protocol library raises many kinds; all mean "retry"
            log.warning("certificate %s: ACME issuance failed: %s", w.secret_id, e)
            progress.problem = Problem("IssuanceFailed", f"ACME: {e}")
            progress.retry_at = anyio.current_time() + progress.backoff.next()
        finally:
            self._challenges = {}
            await self._publish_challenges({})
        self._on_progress()

    async def _order(self, w: Wanted) -> tuple[bytes, bytes]:
        from acme import challenges, crypto_util, messages

        acme = await self._acme()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        csr = crypto_util.make_csr(key_pem, list(w.hosts))
        order = await anyio.to_thread.run_sync(acme.new_order, csr)
        answers = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                # The CA reused an authorization it validated before (RFC 8555 7.1.4; Let's
                # Encrypt does for 30 days): answering its challenge again is refused.
                continue
            for chall in authz.body.challenges:
                if isinstance(chall.chall, challenges.HTTP01):
                    response, validation = chall.response_and_validation(acme.net.key)
                    self._challenges[chall.chall.encode("token")] = validation
                    answers.append((chall, response))
                    break
            else:
                raise RuntimeError(f"no http-01 challenge offered for {authz.body.identifier}")
        if answers and not await self._publish_challenges(dict(self._challenges)):
            raise RuntimeError("Envoy did not apply the challenge answers in 30 s")
        for chall, response in answers:
            await anyio.to_thread.run_sync(acme.answer_challenge, chall, response)
        deadline = dt.datetime.now() + dt.timedelta(seconds=90)
        done = await anyio.to_thread.run_sync(acme.poll_and_finalize, order, deadline)
        return done.fullchain_pem.encode(), key_pem

    async def _acme(self) -> Any:
        """The ACME client, with its account: loaded from, or created into, a Secret."""
        if self._client is not None:
            return self._client
        from acme import client, errors, messages
        from josepy.jwk import JWKRSA

        existing = await self.mgmt.get_or_none(
            SECRETS, self.settings.account_secret, self.settings.namespace
        )
        if existing is not None:
            pem = base64.b64decode(existing["data"]["account.pem"])
            private = serialization.load_pem_private_key(pem, password=None)
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            await self.mgmt.create(
                SECRETS,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": self.settings.account_secret,
                        "namespace": self.settings.namespace,
                    },
                    "data": {"account.pem": base64.b64encode(pem).decode()},
                },
            )
        account_key = JWKRSA(key=private)
        verify: Any = self.settings.ca_bundle or True
        net = client.ClientNetwork(account_key, user_agent="kubelbd", verify_ssl=verify)

        def connect() -> Any:
            directory = client.ClientV2.get_directory(self.settings.directory, net)
            acme = client.ClientV2(directory, net)
            registration = messages.NewRegistration.from_data(
                email=self.settings.email or None, terms_of_service_agreed=True
            )
            try:
                acme.new_account(registration)
            except errors.ConflictError as e:  # the key already has an account: use it
                acme.net.account = messages.RegistrationResource(
                    uri=e.location, body=messages.Registration()
                )
            return acme

        self._client = await anyio.to_thread.run_sync(connect)
        return self._client

    async def _collect_acme_secrets(self) -> None:
        """Issued Secrets no Route wants any more."""
        items, _ = await self.mgmt.list(SECRETS, labelSelector=f"{SOURCE_LABEL}=acme")
        for s in items:
            tenant = records.tenant_of(s)
            sid = f"{tenant}/{s['metadata']['name']}"
            if tenant and sid not in self.wanted:
                await self.mgmt.delete(SECRETS, s["metadata"]["name"], s["metadata"]["namespace"])

    # ---- cert-manager --------------------------------------------------------------------------

    async def _sync_cert_manager(self) -> None:
        want = {sid: w for sid, w in self.wanted.items() if w.source == "cert-manager"}
        for sid, w in sorted(want.items()):
            if self._cert_manager.get(sid) == w:
                continue
            try:
                await self.mgmt.apply(CERTIFICATES, certificate(w))
            except ApiError as e:
                if e.not_found:  # the Certificate CRD is not installed
                    problem = Problem(
                        "CertManagerNotInstalled",
                        "cert-manager's Certificate kind is not served by the management cluster",
                    )
                    self.progress.setdefault(sid, Progress()).problem = problem
                    self._on_progress()
                    continue
                raise
            self._cert_manager[sid] = w
            progress = self.progress.setdefault(sid, Progress())
            progress.problem = Problem(
                "WaitingForCertManager", f"waiting for cert-manager to write Secret {w.secret_name}"
            )
            self._on_progress()
        for sid in [s for s in self._cert_manager if s not in want]:
            w = self._cert_manager.pop(sid)
            await self.mgmt.delete(CERTIFICATES, w.secret_name, records.namespace_of(w.tenant))
