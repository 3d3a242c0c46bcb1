"""hack/bench dns: an Ingress written in a tenant → its name answered by the fleet's DNS server.

For each scale (hosts already published, across the tenants, all under the fleet's zone) it
makes `--changes` changes: a new Ingress (existing backend), timed from the write until the
fleet's BIND answers its A record (queried over TCP every ~2 ms). Untimed after each: the
Ingress's delete until the name is gone, so the next change starts from quiet.

The floor, sampled after every change in the same run: one signed RFC 2136 update that
changes nothing (kubelbd.dns.rfc2136's `floor`), the round trip every published name costs at
least. What lies between the two: the tenant watch, the record, the render, Envoy applying it
(a name is published only once Envoy serves it), the status pass that hands the served hosts
to the publisher, and the update itself.
"""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
from kubefleet import dns as fleet_dns
from kubefleet.layout import Layout

from kubelbd.dns.rfc2136 import RFC2136, Done
from kubelbd.objects import INGRESSES

from .convergence import SETTLE, Bench, Series, ingress

DOMAIN = f"bench.{fleet_dns.ZONE}"


class Resolver:
    def __init__(self, layout: Layout) -> None:
        self.port = layout.dns_port

    async def answers(self, name: str) -> bool:
        query = dns.message.make_query(name, dns.rdatatype.A)
        reply = await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=2)
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    async def until(self, name: str, present: bool, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while True:
            if await self.answers(name) == present:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never {'answered' if present else 'went'}")
            await asyncio.sleep(0.002)


def publisher(layout: Layout) -> RFC2136:
    secret = fleet_dns.secret_file(layout).read_text().strip()
    return RFC2136(
        f"127.0.0.1:{layout.dns_port}", fleet_dns.ZONE, fleet_dns.TSIG_NAME, secret,
        fleet_dns.TSIG_ALGORITHM, "bench-floor", 5,
    )  # fmt: skip


async def run(layout: Layout, scales: list[int], changes: int) -> None:
    bench = Bench(layout, changes, domain=DOMAIN)
    resolver = Resolver(layout)
    floor_client = publisher(layout)
    await bench.open()
    rows: list[str] = []
    try:
        for scale in scales:
            await bench.fill(scale)
            # Every host present is published before the changes are timed (in order: the
            # last one made stands for the others).
            await resolver.until(last_host(bench), True, timeout=600)
            print(f"-- {bench.present} hosts published", flush=True)
            live = Series(f"{bench.present} hosts, Ingress write → name answered")
            floor = Series(f"floor: one RFC 2136 update round trip ({bench.present} hosts)")
            for n in range(changes):
                await asyncio.sleep(SETTLE)
                live.values.append(await change(bench, resolver, n))
                await asyncio.sleep(SETTLE)
                start = time.monotonic()
                outcome = await floor_client.floor()
                assert isinstance(outcome, Done), outcome
                floor.values.append(time.monotonic() - start)
            for row in (live.row(), floor.row()):
                print(row, flush=True)
                rows.append(row)
    finally:
        await bench.close()
    print("\n| series | n | median ms | p99 ms | min ms | max ms |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


def last_host(bench: Bench) -> str:
    """The host Bench.fill made last (fill<i> is the i-th host present; the first ones are
    the tenants' pins)."""
    i = bench.present - 1
    if i < len(bench.tenants):
        return f"pin.{bench.tenants[i]}.{DOMAIN}"
    return f"fill{i}.{bench.tenants[i % len(bench.tenants)]}.{DOMAIN}"


async def change(bench: Bench, resolver: Resolver, n: int) -> float:
    tenant = bench.tenants[n % len(bench.tenants)]
    kube = bench.kube[tenant]
    name = f"d{bench.present}-{n}"
    host = f"{name}.{tenant}.{DOMAIN}"
    start = time.monotonic()
    await kube.create(INGRESSES, ingress(name, host, "echo"), bench.ns)
    end = await resolver.until(host, True)
    await bench.addressed(kube, name)
    await kube.delete(INGRESSES, name, bench.ns)
    await resolver.until(host, False)
    return end - start
