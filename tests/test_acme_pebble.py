"""kubelbd's ACME client against a real Pebble that resolves through a real BIND 9 (no fleet:
both started here on free loopback ports). A wildcard and its base name are issued by DNS-01
(the answers published into BIND, gone afterwards); an HTTP-01 host is validated only after it
resolves at BIND, so issuance follows publication."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import pytest
from aiohttp import web
from cryptography import x509

from kubelbd.certs.acme import ACMEClient, ACMESettings, PublishChallenges
from kubelbd.certs.dns01 import DNS01
from kubelbd.dns.records import Create, Endpoint
from kubelbd.dns.rfc2136 import RFC2136, Done
from kubelbd.objects import NAMESPACES, SECRETS
from tests.bind_server import Bind, bind_server
from tests.pebble_server import Pebble, pebble_server

from .fakekube import FakeKube
from .orchestration import namespace, until

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    with bind_server(tmp_path_factory.mktemp("named")) as server:
        yield server


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, bind: Bind) -> Iterator[Pebble]:
    with pebble_server(tmp_path_factory.mktemp("pebble"), bind.server) as server:
        yield server


def rfc2136(bind: Bind) -> RFC2136:
    return RFC2136(
        bind.server, bind.zone, bind.key_name, bind.key_secret, bind.algorithm,
        "kubelbd-test", TIMEOUT,
    )  # fmt: skip


@dataclass
class Envoy:
    """Plays Envoy's HTTP listener for HTTP-01: serves the answers kubelbd publishes."""

    answers: dict[str, str] = field(default_factory=dict)
    #: for each publish of answers: whether the host resolved at BIND right then
    resolved_when_published: list[bool] = field(default_factory=list)


async def client(
    pebble: Pebble, publish: PublishChallenges | None = None, dns01: DNS01 | None = None
) -> tuple[ACMEClient, FakeKube]:
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace("kubelb"))
    settings = ACMESettings(directory=pebble.directory, ca_bundle=pebble.ca_bundle)

    async def no_http01(challenges: dict[str, str]) -> bool:
        assert not challenges, f"HTTP-01 answers published: {challenges}"
        return True

    return ACMEClient(mgmt, settings, publish or no_http01, dns01), mgmt


def sans(fullchain: bytes) -> set[str]:
    leaf = x509.load_pem_x509_certificates(fullchain)[0]
    ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName))


async def test_a_wildcard_and_its_base_name_are_issued_by_dns01(bind: Bind, pebble: Pebble) -> None:
    dns01 = DNS01(rfc2136(bind))
    acme, mgmt = await client(pebble, dns01=dns01)
    fullchain, key = await acme.order(("*.alpha.example.test", "alpha.example.test"))
    assert sans(fullchain) == {"*.alpha.example.test", "alpha.example.test"}
    assert b"PRIVATE KEY" in key
    # Both answers shared _acme-challenge.alpha.example.test; neither is left behind.
    assert await dns01.client.lookup("_acme-challenge.alpha.example.test", "TXT") == ()
    # The account key went to the management cluster, for the next order and replica.
    assert mgmt.stored(SECRETS, "kubelbd-acme-account", "kubelb") is not None


async def test_without_dns_a_wildcard_is_refused_before_any_order(pebble: Pebble) -> None:
    acme, mgmt = await client(pebble)
    with pytest.raises(RuntimeError, match="needs --dns-server for DNS-01"):
        await acme.order(("*.beta.example.test",))
    assert mgmt.stored(SECRETS, "kubelbd-acme-account", "kubelb") is None  # never asked


@pytest.fixture
async def envoy(pebble: Pebble) -> AsyncIterator[Envoy]:
    out = Envoy()

    async def answer(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if token not in out.answers:
            return web.Response(status=404)
        return web.Response(text=out.answers[token])

    app = web.Application()
    app.router.add_get("/.well-known/acme-challenge/{token}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", pebble.http_port).start()
    try:
        yield out
    finally:
        await runner.cleanup()


async def test_http01_waits_until_the_host_is_published(
    bind: Bind, pebble: Pebble, envoy: Envoy, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = "shop.example.test"
    dns01 = DNS01(rfc2136(bind))

    async def publish(challenges: dict[str, str]) -> bool:
        if challenges:
            envoy.resolved_when_published.append(
                await dns01.client.lookup(host, "A") == ("127.0.0.1",)
            )
        envoy.answers = dict(challenges)
        return True

    acme, _ = await client(pebble, publish, dns01)
    asked = anyio.Event()
    lookup = dns01.client.lookup

    async def watched(name: str, rtype: str) -> object:
        if name == host:
            asked.set()
        return await lookup(name, rtype)

    monkeypatch.setattr(dns01.client, "lookup", watched)
    issued: list[bytes] = []

    async def order() -> None:
        issued.append((await acme.order((host,)))[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(order)
        await asked.wait()  # the client looks the host up, and it is not there yet
        endpoint = Endpoint(host, "A", ("127.0.0.1",), 30, "route/tenant-alpha/default.shop")
        assert await rfc2136(bind).apply(Create(endpoint)) == Done()
        await until(lambda: issued, "the certificate", timeout=60)
    assert sans(issued[0]) == {host}
    assert envoy.resolved_when_published == [True]
    assert envoy.answers == {}  # withdrawn after the order
