"""kubelbd's ACME client: HTTP-01 answered by Envoy itself.

The challenge answers are put into the HTTP front table as direct responses (for any host,
ahead of the HTTPS redirect), and only once Envoy reports that configuration applied is the
CA told to validate. The `acme` package (certbot's protocol library) speaks the protocol; it
is synchronous, so every call runs in a worker thread. The account key lives in a Secret in
kubelbd's namespace.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..ir.tls import Wanted
from ..kube import Kube
from ..objects import SECRETS, Obj
from ..records.names import TLS_LABEL, TLS_SOURCE_LABEL, labels, namespace_of

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


class ACMEClient:
    def __init__(self, mgmt: Kube, settings: ACMESettings, publish: PublishChallenges) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self._publish = publish
        self._client: Any = None

    async def order(self, hosts: tuple[str, ...]) -> tuple[bytes, bytes]:
        """A certificate for `hosts`: (full chain PEM, private key PEM)."""
        from acme import challenges, crypto_util, messages

        acme = await self._account()
        key_pem = _pem(ec.generate_private_key(ec.SECP256R1()))
        csr = crypto_util.make_csr(key_pem, list(hosts))
        order = await anyio.to_thread.run_sync(acme.new_order, csr)
        answers = []
        published: dict[str, str] = {}
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                # The CA reused an authorization it validated before (RFC 8555 7.1.4; Let's
                # Encrypt does for 30 days): answering its challenge again is refused.
                continue
            for chall in authz.body.challenges:
                if isinstance(chall.chall, challenges.HTTP01):
                    response, validation = chall.response_and_validation(acme.net.key)
                    published[chall.chall.encode("token")] = validation
                    answers.append((chall, response))
                    break
            else:
                raise RuntimeError(f"no http-01 challenge offered for {authz.body.identifier}")
        try:
            if answers and not await self._publish(published):
                raise RuntimeError("Envoy did not apply the challenge answers in 30 s")
            for chall, response in answers:
                await anyio.to_thread.run_sync(acme.answer_challenge, chall, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=90)
            done = await anyio.to_thread.run_sync(acme.poll_and_finalize, order, deadline)
        finally:
            if answers:
                await self._publish({})
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
