"""kubelbd.certs.dns01 against a real BIND 9 (tests/bind_server.py): DNS-01 answers published
by RFC 2136, answered by the server before the block runs, and exactly those removed after it
(also when it fails); values of others at the same name kept; a host waited for until it
resolves. And the issuers' verdict on a wildcard kubelbd cannot have issued."""

from __future__ import annotations

import re
from collections.abc import Iterator

import anyio
import dns.asyncquery
import dns.update
import pytest

from kubelbd.certs import acme as acme_module
from kubelbd.certs.acme import ACMESettings, dns01_problem
from kubelbd.certs.dns01 import DNS01, DNS01Error, challenge_name
from kubelbd.certs.issuers import Issuers
from kubelbd.dns.records import Create, Endpoint
from kubelbd.dns.rfc2136 import RFC2136, Done
from kubelbd.ir.tls import Wanted
from kubelbd.objects import NAMESPACES
from kubelbd.records.names import labels
from tests.bind_server import Bind, bind_server

from .fakekube import FakeKube
from .orchestration import namespace, running, until

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    with bind_server(tmp_path_factory.mktemp("named")) as server:
        yield server


def client(bind: Bind, secret: str = "") -> RFC2136:
    return RFC2136(
        bind.server, bind.zone, bind.key_name, secret or bind.key_secret, bind.algorithm,
        "kubelbd-test", TIMEOUT,
    )  # fmt: skip


async def txt(bind: Bind, name: str) -> set[str]:
    got = await client(bind).lookup(name, "TXT")
    assert isinstance(got, tuple), got
    return set(got)


def test_the_answer_goes_to_the_base_name() -> None:
    assert challenge_name("*.Alpha.example.test.") == "_acme-challenge.alpha.example.test"
    assert challenge_name("alpha.example.test") == "_acme-challenge.alpha.example.test"


async def test_answers_are_served_inside_the_block_and_only_ours_removed(bind: Bind) -> None:
    name = "_acme-challenge.shared.example.test"
    other = await client(bind).add_txt(name, ["another client's answer"], 30)
    assert other == Done()
    solver = DNS01(client(bind), timeout=10)
    # A wildcard and its base name: two values at one name, side by side.
    async with solver.answers({name: ["wildcard-answer", "base-answer"]}):
        assert await txt(bind, name) == {
            "another client's answer", "wildcard-answer", "base-answer"
        }  # fmt: skip
    assert await txt(bind, name) == {"another client's answer"}


async def test_two_orders_at_one_name_do_not_remove_each_other(bind: Bind) -> None:
    name = "_acme-challenge.twice.example.test"
    solver = DNS01(client(bind), timeout=10)
    async with solver.answers({name: ["first"]}):
        async with solver.answers({name: ["second"]}):
            assert await txt(bind, name) == {"first", "second"}
        assert await txt(bind, name) == {"first"}
    assert await txt(bind, name) == set()


async def test_a_failure_inside_the_block_still_removes_the_answers(bind: Bind) -> None:
    name = "_acme-challenge.fails.example.test"
    solver = DNS01(client(bind), timeout=10)
    with pytest.raises(RuntimeError, match="the CA said no"):
        async with solver.answers({name: ["v"]}):
            assert await txt(bind, name) == {"v"}
            raise RuntimeError("the CA said no")
    assert await txt(bind, name) == set()


async def test_cancelled_inside_the_block_still_removes_the_answers(bind: Bind) -> None:
    name = "_acme-challenge.cancelled.example.test"
    solver = DNS01(client(bind), timeout=10)
    inside = anyio.Event()

    async def order() -> None:
        async with solver.answers({name: ["v"]}):
            inside.set()
            await anyio.Event().wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(order)
        await inside.wait()
        tg.cancel_scope.cancel()
    assert await txt(bind, name) == set()


async def test_an_update_the_server_refuses_is_an_error_and_leaves_nothing(bind: Bind) -> None:
    name = "_acme-challenge.refused.example.test"
    wrong = "c2VjcmV0IHRoYXQgdGhlIHNlcnZlciBkb2VzIG5vdCBrbm93IGF0IGFsbA=="
    solver = DNS01(client(bind, secret=wrong), timeout=10)
    with pytest.raises(DNS01Error, match=re.escape(f"publishing {name} TXT")):
        async with solver.answers({name: ["v"]}):
            raise AssertionError("never reached")
    assert await txt(bind, name) == set()


async def test_a_delegated_challenge_name_is_left_alone(bind: Bind) -> None:
    """A CNAME at the challenge name (delegated to another zone): a TXT beside it would be
    dropped by the server with a success answer; the update's prerequisite refuses it."""
    name = "_acme-challenge.delegated.example.test"
    op = client(bind)
    update = dns.update.UpdateMessage(bind.zone, keyring=op.key)
    update.add(f"{name}.", 30, "CNAME", "elsewhere.example.net.")
    response = await dns.asyncquery.tcp(update, bind.address, timeout=TIMEOUT, port=bind.port)
    assert response.rcode() == 0
    with pytest.raises(DNS01Error, match="YXRRSET"):
        async with DNS01(op, timeout=10).answers({name: ["v"]}):
            raise AssertionError("never reached")


async def test_a_host_is_waited_for_until_it_resolves(
    bind: Bind, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = "late.example.test"
    solver = DNS01(client(bind), timeout=10)
    misses: list[str] = []
    lookup = solver.client.lookup

    async def counted(name: str, rtype: str) -> object:
        got = await lookup(name, rtype)
        if got == ():
            misses.append(rtype)
        return got

    monkeypatch.setattr(solver.client, "lookup", counted)
    order: list[str] = []

    async def publish_later() -> None:
        await until(lambda: len(misses) >= 2, "A and AAAA looked up, and not there")
        endpoint = Endpoint(host, "A", ("127.0.0.1",), 30, "route/tenant-alpha/default.late")
        assert await client(bind).apply(Create(endpoint)) == Done()
        order.append("published")

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_later)
        await solver.published([host])
        order.append("resolved")
    assert order == ["published", "resolved"]


async def test_a_host_that_never_resolves_is_an_error(bind: Bind) -> None:
    solver = DNS01(client(bind), timeout=0.5)
    with pytest.raises(DNS01Error, match=r"never\.example\.test to resolve"):
        await solver.published(["never.example.test"])


async def test_answers_the_server_never_shows_are_an_error_and_removed(
    bind: Bind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts the update but answers something else (a stale secondary in
    front, a view): the CA is never told to validate, and the value is removed again."""
    name = "_acme-challenge.unseen.example.test"
    solver = DNS01(client(bind), timeout=0.5)

    async def nothing(name: str, rtype: str) -> tuple[str, ...]:
        return ()

    monkeypatch.setattr(solver.client, "lookup", nothing)
    with pytest.raises(DNS01Error, match="did not answer the DNS-01 answers"):
        async with solver.answers({name: ["v"]}):
            raise AssertionError("never reached")
    monkeypatch.undo()
    assert await txt(bind, name) == set()


def test_a_wildcard_needs_dns_publishing_into_its_zone(bind: Bind) -> None:
    solver = DNS01(client(bind))
    assert dns01_problem(("shop.example.test",), None) is None
    problem = dns01_problem(("*.alpha.example.test",), None)
    assert problem is not None and problem.reason == "NeedsDNS01"
    assert "--dns-server" in problem.message
    assert dns01_problem(("*.alpha.example.test", "alpha.example.test"), solver) is None
    assert dns01_problem(("*.example.test",), solver) is None  # _acme-challenge.example.test
    outside = dns01_problem(("*.alpha.other.test",), solver)
    assert outside is not None and "outside the zone example.test" in outside.message


async def test_issuers_show_a_wildcard_without_dns_and_order_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_order(self: object, hosts: tuple[str, ...]) -> tuple[bytes, bytes]:
        raise AssertionError(f"ordered {hosts}")

    async def never_published(challenges: dict[str, str]) -> bool:
        raise AssertionError("no HTTP-01 answer is wanted")

    monkeypatch.setattr(acme_module.ACMEClient, "order", no_order)
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace("tenant-a", labels("a")))
    settings = ACMESettings(directory="https://127.0.0.1:1/dir")
    iss = Issuers(mgmt, settings, dict, never_published, lambda: None)
    wanted = Wanted("a/default.wild-tls", ("*.a.example.test",), "acme")
    iss.update({wanted.secret_id: wanted})
    async with running(iss.run):
        await until(lambda: iss.passes >= 1, "a pass")
    problem = iss.pending()[wanted.secret_id]
    assert problem.reason == "NeedsDNS01", problem
    assert "needs --dns-server for DNS-01" in problem.message
    assert iss.progress[wanted.secret_id].retry_at == 0  # no retry timer: nothing to retry
