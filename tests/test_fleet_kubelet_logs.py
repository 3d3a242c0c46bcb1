"""The node emulator's kubelet endpoint that the API server proxies `kubectl logs` (GET
pods/<name>/log) to: /containerLogs/<ns>/<pod>/<container> over TLS, clients of the cluster
CA only, with the kubelet's log options applied to the CRI lines echobasic.py captures.

It listens on 127.250.9.1, outside every address the fleet uses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubefleet import certs
from kubefleet.nodeemu import echobasic, logserver


def test_cri_lines_are_filtered_like_the_kubelets_log_options() -> None:
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    cri = b"".join(
        echobasic.cri_line("stdout", f"line {i}\n".encode(), t0 + dt.timedelta(seconds=i))
        for i in range(5)
    )
    render = logserver.render
    assert render(cri, logserver.LogOptions()) == b"line 0\nline 1\nline 2\nline 3\nline 4\n"
    since = logserver.LogOptions.parse({"sinceTime": "2026-01-01T12:00:03Z"})
    assert render(cri, since) == b"line 3\nline 4\n"
    nanos = logserver.LogOptions.parse({"sinceTime": "2026-01-01T12:00:02.500000001Z"})
    assert render(cri, nanos) == b"line 3\nline 4\n"  # nanoseconds parse (to microseconds)
    ago = logserver.LogOptions.parse({"sinceSeconds": "2"}, now=t0 + dt.timedelta(seconds=4))
    assert render(cri, ago) == b"line 2\nline 3\nline 4\n"
    assert render(cri, logserver.LogOptions(tail_lines=1)) == b"line 4\n"
    assert render(cri, logserver.LogOptions(limit_bytes=8)) == b"line 0\nl"
    stamped = render(cri, logserver.LogOptions(timestamps=True, tail_lines=1))
    assert stamped == b"2026-01-01T12:00:04.000000Z line 4\n"
    with pytest.raises(ValueError):
        logserver.LogOptions.parse({"tailLines": "many"})


@pytest.fixture(scope="module")
def kubelet_pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    d = tmp_path_factory.mktemp("pki")
    ca = certs.new_ca("test-ca")
    ca.write(d, "ca")
    certs.issue(ca, "system:node:node-1", ("system:nodes",), ips=("127.250.9.1",),
                server=True).write(d, "kubelet")  # fmt: skip
    certs.issue(ca, "kube-apiserver-kubelet-client", ("system:masters",)).write(d, "client")
    certs.issue(certs.new_ca("other-ca"), "intruder").write(d, "intruder")
    yield {n: d / n for n in os.listdir(d)}


@pytest.fixture
async def kubelet_server(
    kubelet_pki: dict[str, Path], tmp_path: Path
) -> AsyncIterator[tuple[str, list[tuple[str, str, str]]]]:
    log_file = tmp_path / "echo.log"
    log_file.write_bytes(
        echobasic.cri_line("stdout", b"hello") + echobasic.cri_line("stderr", b"oops")
    )
    asked: list[tuple[str, str, str]] = []

    def lookup(ns: str, pod: str, container: str) -> Path | None:
        asked.append((ns, pod, container))
        if (ns, pod) == ("conf", "echo-1") and container == "echo":
            return log_file
        if (ns, pod) == ("conf", "quiet") and container == "c":
            return tmp_path / "never-written.log"
        return None

    ctx = logserver.server_context(
        kubelet_pki["kubelet.crt"], kubelet_pki["kubelet.key"], kubelet_pki["ca.crt"]
    )
    server = logserver.KubeletServer(lookup, "127.250.9.1", 0, ctx)
    port = await server.start()
    try:
        yield f"https://127.250.9.1:{port}", asked
    finally:
        await server.close()


def _client_ctx(pki: dict[str, Path], who: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    if who is not None:
        ctx.load_cert_chain(str(pki[f"{who}.crt"]), str(pki[f"{who}.key"]))
    return ctx


async def test_the_log_endpoint_serves_a_containers_log_over_tls(
    kubelet_server: Any, kubelet_pki: dict[str, Path]
) -> None:
    url, asked = kubelet_server
    async with aiohttp.ClientSession() as s:
        get = _getter(s, _client_ctx(kubelet_pki))
        assert await get(f"{url}/containerLogs/conf/echo-1/echo") == (200, "hello\noops\n")
        assert asked[-1] == ("conf", "echo-1", "echo")
        assert await get(f"{url}/containerLogs/conf/echo-1/echo?tailLines=1") == (200, "oops\n")
        assert await get(f"{url}/containerLogs/conf/quiet/c") == (200, "")
        status, _ = await get(f"{url}/containerLogs/conf/nobody/echo")
        assert status == 404
        status, _ = await get(f"{url}/containerLogs/conf/echo-1/other")
        assert status == 404
        status, _ = await get(f"{url}/containerLogs/conf/echo-1")
        assert status == 404
        status, _ = await get(f"{url}/containerLogs/conf/echo-1/echo?sinceSeconds=soon")
        assert status == 400


async def test_the_log_endpoint_follows_until_the_pod_goes(
    kubelet_server: Any, kubelet_pki: dict[str, Path], tmp_path: Path
) -> None:
    url, _ = kubelet_server
    log_file = tmp_path / "echo.log"
    async with aiohttp.ClientSession() as s:
        ctx = _client_ctx(kubelet_pki)
        async with s.get(f"{url}/containerLogs/conf/echo-1/echo?follow=true", ssl=ctx) as r:
            assert await r.content.readline() == b"hello\n"
            assert await r.content.readline() == b"oops\n"
            with log_file.open("ab") as f:
                f.write(echobasic.cri_line("stdout", b"later"))
            line = await asyncio.wait_for(r.content.readline(), 5)
            assert line == b"later\n"
            log_file.unlink()  # the pod is gone with its directory
            assert await asyncio.wait_for(r.content.read(), 5) == b""


async def test_only_clients_of_the_cluster_ca_get_logs(
    kubelet_server: Any, kubelet_pki: dict[str, Path]
) -> None:
    url, _ = kubelet_server
    for who in (None, "intruder"):
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(
                    f"{url}/containerLogs/conf/echo-1/echo", ssl=_client_ctx(kubelet_pki, who)
                ) as r:
                    await r.read()


def _getter(s: aiohttp.ClientSession, ctx: ssl.SSLContext) -> Any:
    async def get(url: str) -> tuple[int, str]:
        async with s.get(url, ssl=ctx) as r:
            return r.status, await r.text()

    return get
