"""kubelbd's ACME client: HTTP-01 answered by Envoy itself, DNS-01 for wildcards.

HTTP-01 answers are put into the HTTP front table as direct responses (for any host, ahead of
the HTTPS redirect), and only once Envoy reports that configuration applied is the CA told to
validate; when kubelbd publishes DNS, only once the host resolves at the DNS server too (the
CA looks it up first).

DNS-01 (kubelbd.certs.dns01) answers a wildcard identifier, for which CAs offer nothing
else, and the wildcard's base name when the same order has it: both are answered at
`_acme-challenge.<base>`, so that name is written anyway, and the order then needs only the
DNS server. Every other host keeps HTTP-01, which proves the path clients will take (Envoy
serving the name) and needs no record beside the host: a `_acme-challenge.<host>` would make
`<host>` an empty non-terminal that a wildcard record no longer answers for.

The `acme` package (certbot's protocol library) speaks the protocol; it is synchronous, so
every call runs in a worker thread. The account key lives in a Secret in kubelbd's namespace.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..envoy.scopes import CHALLENGE_HOST
from ..ir.tls import Wanted
from ..kube import Kube
from ..objects import SECRETS, Obj
from ..records.names import TLS_LABEL, TLS_SOURCE_LABEL, labels, namespace_of
from ..records.problems import Problem
from .dns01 import DNS01, challenge_name

#: answers to publish (token → key authorization); True once Envoy applied them
PublishChallenges = Callable[[dict[str, str]], Awaitable[bool]]


@dataclass(frozen=True)
class ACMESettings:
    directory: str = ""
    email: str = ""
    ca_bundle: str | None = None  # to trust the ACME server's own TLS certificate
    renew_fraction: float = 1 / 3
    namespace: str = "kubelb"  # where the account key is kept
    account_secret: str = "kubelbd-acme-account"


def issued_secret(w: Wanted, fullchain: bytes, key: bytes, directory: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": w.secret_name,
            "namespace": namespace_of(w.tenant),
            "labels": labels(w.tenant) | {TLS_LABEL: "true", TLS_SOURCE_LABEL: "acme"},
            "annotations": {"kubelb.io/acme-directory": directory},
        },
        "data": {
            "tls.crt": base64.b64encode(fullchain).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dns01_problem(hosts: tuple[str, ...], dns01: DNS01 | None) -> Problem | None:
    """Why kubelbd cannot have a certificate for `hosts` issued at all, or None: a wildcard
    needs DNS-01, so DNS publishing, into a zone that holds its `_acme-challenge` name. Known
    before any order: asking the CA again would change nothing until the operator does."""
    wildcards = [h for h in hosts if h.startswith("*.")]
    if not wildcards:
        return None
    if dns01 is None:
        return Problem(
            "NeedsDNS01",
            f"{', '.join(wildcards)}: a wildcard certificate needs ACME DNS-01, and kubelbd "
            "updates no DNS server itself (it needs --dns-server for DNS-01; through "
            "external-dns, --dns-provider=dnsendpoint, it has none)",
        )
    outside = [h for h in wildcards if not dns01.serves(h)]
    if outside:
        return Problem(
            "NeedsDNS01",
            f"{', '.join(outside)}: a wildcard certificate needs ACME DNS-01, and "
            f"{', '.join(challenge_name(h) for h in outside)} is outside the zone "
            f"{dns01.zone} kubelbd publishes into",
        )
    return None


class ACMEClient:
    def __init__(
        self,
        mgmt: Kube,
        settings: ACMESettings,
        publish: PublishChallenges,
        dns01: DNS01 | None = None,
    ) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self._publish = publish
        self.dns01 = dns01
        self._client: Any = None

    async def order(self, hosts: tuple[str, ...]) -> tuple[bytes, bytes]:
        """A certificate for `hosts`: (full chain PEM, private key PEM)."""
        from acme import challenges, crypto_util, messages

        problem = dns01_problem(hosts, self.dns01)
        if problem is not None:
            raise RuntimeError(problem.message)
        acme = await self._account()
        key_pem = _pem(ec.generate_private_key(ec.SECP256R1()))
        csr = crypto_util.make_csr(key_pem, list(hosts))
        order = await anyio.to_thread.run_sync(acme.new_order, csr)
        by_dns = {h.removeprefix("*.") for h in hosts if h.startswith("*.")}
        answers = []
        published: dict[str, str] = {}  # HTTP-01: token -> key authorization
        http_hosts: list[str] = []
        txt: dict[str, list[str]] = defaultdict(list)  # DNS-01: name -> values
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                # The CA reused an authorization it validated before (RFC 8555 7.1.4; Let's
                # Encrypt does for 30 days): answering its challenge again is refused.
                continue
            name = authz.body.identifier.value
            over_dns = bool(authz.body.wildcard) or name in by_dns
            kind = challenges.DNS01 if over_dns else challenges.HTTP01
            chall = next((c for c in authz.body.challenges if isinstance(c.chall, kind)), None)
            if chall is None:
                raise RuntimeError(f"no {kind.typ} challenge offered for {name}")
            response, validation = chall.response_and_validation(acme.net.key)
            if over_dns:
                txt[chall.chall.validation_domain_name(name)].append(validation)
            else:
                token = chall.chall.encode("token")
                published[token] = validation
                published[CHALLENGE_HOST + token] = name  # its scope answers it too
                http_hosts.append(name)
            answers.append((chall, response))
        async with AsyncExitStack() as cleanup:
            if txt:
                assert self.dns01 is not None  # dns01_problem said so
                await cleanup.enter_async_context(self.dns01.answers(txt))
            if published:
                if self.dns01 is not None:
                    await self.dns01.published([h for h in http_hosts if self.dns01.publishes(h)])
                cleanup.push_async_callback(self._publish, {})
                if not await self._publish(published):
                    raise RuntimeError("Envoy did not apply the challenge answers in 30 s")
            for chall, response in answers:
                await anyio.to_thread.run_sync(acme.answer_challenge, chall, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=90)
            done = await anyio.to_thread.run_sync(acme.poll_and_finalize, order, deadline)
        return done.fullchain_pem.encode(), key_pem

    async def _account(self) -> Any:
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
            # RSA key generation takes tens of milliseconds: not on the event loop.
            private = await anyio.to_thread.run_sync(
                lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
            )
            pem = _pem(private)
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
