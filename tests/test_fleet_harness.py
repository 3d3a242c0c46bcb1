"""Parts of the fleet harness: addressing, PROXY v2 decoding, percentiles, the node proxy's
relay."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
from benchlib.stats import percentile
from kubefleet.layout import Layout, pod_listen_ip, tenant_name
from kubefleet.nodeemu.echo import PP2_SIGNATURE, _canonical, parse_proxy_v2
from kubefleet.nodeemu.proxy import relay_tcp


def test_layout_addresses_follow_the_documented_scheme() -> None:
    lay = Layout(3, 16400, Path("/x"))
    assert [c.name for c in lay.clusters] == ["mgmt", "alpha", "beta", "gamma"]
    alpha = lay.cluster("alpha")
    assert alpha.apiserver_port == 16411
    assert [n.ip for n in alpha.nodes] == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    assert [n.ip for n in lay.cluster("beta").nodes] == ["127.0.2.1", "127.0.2.2", "127.0.2.3"]
    assert lay.cluster("gamma").nodes[0].pod_cidr == "10.103.1.0/24"
    assert lay.cluster("mgmt").nodes == ()
    with pytest.raises(KeyError):
        lay.cluster("omega")
    assert tenant_name(30) == "tenant30"


def test_pod_ips_map_onto_loopback() -> None:
    assert pod_listen_ip("10.101.2.7") == "127.101.2.7"
    with pytest.raises(ValueError):
        pod_listen_ip("192.168.1.1")


def test_proxy_v2_ipv4_header_is_decoded() -> None:
    addrs = bytes([127, 0, 0, 9, 127, 0, 200, 1]) + struct.pack("!HH", 40000, 443)
    header = PP2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs
    assert parse_proxy_v2(header) == {
        "version": 2,
        "command": "PROXY",
        "source": "127.0.0.9:40000",
        "destination": "127.0.200.1:443",
        "transport": "TCP",
    }


def test_header_names_are_canonicalised_like_go() -> None:
    assert _canonical("x-forwarded-for") == "X-Forwarded-For"
    assert _canonical("HOST") == "Host"


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


async def test_the_node_proxy_dials_the_next_endpoint_when_one_refuses() -> None:
    """With iptables a refusing endpoint is a failed connect for the client, which it
    retries elsewhere; the user-space proxy has accepted already, so it dials the next."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"pong:" + await reader.readexactly(4))
        await writer.drain()
        writer.close()

    with socket.socket() as s:  # a port nothing listens on: connects to it are refused
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()
    live = await asyncio.start_server(answer, "127.0.0.1", 0)
    served = live.sockets[0].getsockname()[:2]

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await relay_tcp(reader, writer, refused, served)

    front = await asyncio.start_server(relay, "127.0.0.1", 0)
    async with live, front:
        reader, writer = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
        writer.write(b"ping")
        async with asyncio.timeout(5):
            assert await reader.read() == b"pong:ping"
        writer.close()
