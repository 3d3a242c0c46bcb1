"""What kubelbd takes from kubernetes-asyncio beyond its documented API, pinned down.

kubelbd/kube/transport.py is the one module that reaches into kubernetes-asyncio's
internals (see its docstring). Each test here exercises one of them on the installed
version, so an upgrade that moves one fails here, by name, before it fails in a cluster.
pyproject.toml pins the range these tests were last run against.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import importlib.metadata
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubefleet import certs

from kubelbd.kube.transport import TLS_READ_BUFFER, KubeconfigError, Transport, temp_file_cache


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(**user: Any) -> dict[str, Any]:
    ca = certs.new_ca("transport-test-ca")
    client = certs.issue(ca, "kubelbd", orgs=("tenants",))
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": b64(ca.cert_pem()),
                    "tls-server-name": "api.tenant.test",
                },
            }
        ],
        "users": [
            {
                "name": "u",
                "user": user
                or {
                    "client-certificate-data": b64(client.cert_pem()),
                    "client-key-data": b64(client.key_pem()),
                    "token": "secret-token",
                },
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }


def existing(paths: Iterable[str]) -> list[str]:
    """Those of `paths` that exist (a few stat calls: fine inside a test's event loop)."""
    return [p for p in paths if os.path.exists(p)]


def test_the_installed_version_is_within_the_pinned_range() -> None:
    version = importlib.metadata.version("kubernetes-asyncio")
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    pin = re.search(r'"kubernetes-asyncio>=(\d+),<(\d+)"', pyproject)
    assert pin is not None, "pyproject.toml must pin kubernetes-asyncio to a range"
    major = int(version.split(".")[0])
    assert int(pin.group(1)) <= major < int(pin.group(2)), version


async def test_connector_server_name_token_and_certificate_files() -> None:
    transport = await Transport.from_kubeconfig(kubeconfig())
    try:
        # ApiClient.rest_client.pool_manager.connector: the TLS context lives there.
        assert isinstance(transport.connector, aiohttp.TCPConnector)
        assert not transport.connector.closed
        # ApiClient.rest_client.server_hostname: the kubeconfig's tls-server-name, for SNI.
        assert transport.server_hostname == "api.tenant.test"
        # Configuration.auth_settings(): the bearer token.
        assert await transport.headers() == {"Authorization": "Bearer secret-token"}
        assert transport.host == "https://127.0.0.1:6443"
        # kube_config._temp_files: certificate data the loader wrote, by content.
        ours = existing(temp_file_cache().values())
        assert ours, "the loader no longer records its certificate temp files"
        folders = {os.path.dirname(p) for p in ours}
    finally:
        await transport.aclose()
    assert existing(folders) == [], "key material outlived its client"
    assert not any(os.path.dirname(p) in folders for p in temp_file_cache().values())


async def test_no_token_means_no_authorization_header() -> None:
    ca = certs.new_ca("c2")
    client = certs.issue(ca, "kubelbd")
    config = kubeconfig(
        **{"client-certificate-data": b64(client.cert_pem()),
           "client-key-data": b64(client.key_pem())}
    )  # fmt: skip
    transport = await Transport.from_kubeconfig(config)
    try:
        assert await transport.headers() == {}
        assert transport.server_hostname == "api.tenant.test"
    finally:
        await transport.aclose()


async def test_unusable_credentials_are_a_kubeconfig_error_and_leave_no_files() -> None:
    before = set(temp_file_cache().values())
    config = kubeconfig(
        **{"client-certificate-data": b64(b"not a certificate"), "client-key-data": b64(b"x")}
    )
    with pytest.raises(KubeconfigError):
        await Transport.from_kubeconfig(config)
    leaked = existing(set(temp_file_cache().values()) - before)
    assert leaked == []


def test_kubelbd_imports_none_of_the_generated_models_or_apis() -> None:
    """transport._light_import: the loader, Configuration and ApiClient, without the package's
    __init__ (every generated model and API class: 850 modules and 36 MiB in every kubelbd
    process). Run in a fresh interpreter, since this one may have imported anything."""
    code = (
        "import sys, kubelbd.app\n"
        "from kubelbd.kube.transport import ApiClient, Configuration, kube_config\n"
        "loaded = [m for m in sys.modules if m.startswith('kubernetes_asyncio.client.')]\n"
        "print(len(loaded), any('.models.' in m or '.api.' in m for m in loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out[1] == "False", out
    assert int(out[0]) <= 8, out


async def test_tls_connections_read_into_a_small_buffer() -> None:
    """asyncio gives every TLS connection a 256 KiB read buffer; kubelbd holds one connection
    per watch, so transport.py lowers it (`SSLProtocol.max_size`). An upgrade that renames the
    attribute or sizes the buffer otherwise fails here."""
    loop = asyncio.get_running_loop()
    proto = asyncio.sslproto.SSLProtocol(
        loop, asyncio.Protocol(), ssl.create_default_context(), loop.create_future()
    )
    buffer: bytearray = getattr(proto, "_ssl_buffer")  # noqa: B009 (private, pinned here)
    assert len(buffer) == TLS_READ_BUFFER < 256 * 1024
