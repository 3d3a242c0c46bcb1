"""ACME DNS-01: the answers as TXT records at `_acme-challenge.<name>`, published by RFC 2136
into the zone kubelbd publishes hosts into, with the same server, key and algorithm.

DNS-01 is the only challenge a CA offers for a wildcard identifier (RFC 8555 8.4), so a
wildcard certificate needs it. The CA is told to validate only once the primary itself
answers every value (a direct query, polled with a deadline): telling it earlier would spend
a failed authorization. Whatever happens, exactly the values added are removed afterwards;
other values at the same name (another order's, another client's) stay, which is also how a
wildcard and its base name, both answered at `_acme-challenge.<base>`, coexist.

The same client tells whether a host kubelbd publishes already resolves at the server, which
an HTTP-01 validation needs (the CA looks the host up before it fetches the answer).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import anyio

from ..dns.records import below, canonical
from ..dns.rfc2136 import RFC2136, Done

log = logging.getLogger(__name__)

LABEL = "_acme-challenge"
#: short: a resolver that cached an earlier attempt's answer would show the CA a stale value
TTL = 10
#: how long the primary may take to answer what was added, or a host to be published
PROPAGATION = 60.0
POLL = 0.2


class DNS01Error(RuntimeError):
    """The answers could not be published, or did not show at the server in time."""


def challenge_name(identifier: str) -> str:
    """Where the answer for an identifier goes: `_acme-challenge.<name>`, without `*.`."""
    return f"{LABEL}.{canonical(identifier).removeprefix('*.')}"


class DNS01:
    def __init__(self, client: RFC2136, timeout: float = PROPAGATION) -> None:
        self.client = client
        self.timeout = timeout

    @property
    def zone(self) -> str:
        return self.client.zone

    def serves(self, identifier: str) -> bool:
        """Whether this zone can hold the answer for `identifier` (a host or `*.host`)."""
        return below(challenge_name(identifier), self.zone)

    def publishes(self, host: str) -> bool:
        """Whether `host` is one kubelbd publishes (a name below the zone)."""
        return below(canonical(host), self.zone)

    @asynccontextmanager
    async def answers(self, values: Mapping[str, Sequence[str]]) -> AsyncIterator[None]:
        """The TXT `values` per challenge name published, and answered by the server, for the
        length of the block; exactly these removed afterwards, also on failure or
        cancellation. A name is removed from even when its update failed: an update that timed
        out may still have been applied, and a delete of a value not there changes nothing."""
        tried: dict[str, Sequence[str]] = {}
        try:
            for name, texts in values.items():
                tried[name] = texts
                outcome = await self.client.add_txt(name, texts, TTL)
                if not isinstance(outcome, Done):
                    raise DNS01Error(f"publishing {name} TXT: {_detail(outcome)}")
            await self._until(lambda: self._present(values), "the DNS-01 answers")
            yield
        finally:
            with anyio.CancelScope(shield=True):
                for name, texts in tried.items():
                    outcome = await self.client.remove_txt(name, texts)
                    if not isinstance(outcome, Done):
                        log.warning("acme: removing %s TXT: %s", name, _detail(outcome))

    async def published(self, hosts: Sequence[str]) -> None:
        """Until every host resolves at the server (an address or a CNAME): kubelbd publishes
        a host once Envoy serves it, and the CA must not look it up before."""
        await self._until(lambda: self._resolve(hosts), f"{', '.join(hosts)} to resolve")

    async def _present(self, values: Mapping[str, Sequence[str]]) -> bool:
        for name, texts in values.items():
            got = await self.client.lookup(name, "TXT")
            if not isinstance(got, tuple) or not set(texts) <= set(got):
                return False
        return True

    async def _resolve(self, hosts: Sequence[str]) -> bool:
        for host in hosts:
            if not any([await self._answered(host, rtype) for rtype in ("A", "AAAA")]):
                return False
        return True

    async def _answered(self, name: str, rtype: str) -> bool:
        got = await self.client.lookup(name, rtype)
        return isinstance(got, tuple) and bool(got)

    async def _until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = anyio.current_time() + self.timeout
        while not await check():
            if anyio.current_time() >= deadline:
                server = f"{self.client.address}:{self.client.port}"
                raise DNS01Error(f"{server} did not answer {what} within {self.timeout:g} s")
            await anyio.sleep(POLL)


def _detail(outcome: object) -> str:
    return str(getattr(outcome, "detail", outcome))
