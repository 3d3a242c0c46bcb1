"""kubernetes-asyncio, for exactly what it is good at: kubeconfigs and the TLS session.

It parses kubeconfigs (certificates, tokens, exec plugins, in-cluster service accounts) and
builds an aiohttp connector with the right TLS context. It does whatever a kubeconfig asks:
a tenant's is checked and rebuilt first (kubeconfig.py). Everything else of it is bypassed
(see client.py). What we take from it goes beyond its documented API, so every such use is
here and nowhere else, and tests/test_kube_transport.py fails when an upgrade moves one:

- `ApiClient.rest_client.pool_manager.connector`: the connector with the cluster's TLS context;
- `ApiClient.rest_client.server_hostname`: the kubeconfig's tls-server-name, for SNI;
- `Configuration.auth_settings()`: the bearer token, refreshed by the loader (exec, files);
- `kube_config._temp_files`: the loader's module-level cache of the temp files it writes
  certificate data to, keyed by content, which must forget a client's files once deleted;
- asyncio's `SSLProtocol.max_size` (not kubernetes-asyncio's, but beyond a documented API
  too): the read buffer every TLS connection allocates, lowered (`TLS_READ_BUFFER`);
- the modules' layout (`_light_import`): kubelbd loads the loader, `Configuration` and
  `ApiClient` without the package's `__init__`, which imports every generated model and API
  class (850 modules, 36 MiB of RSS in every kubelbd process, half a second at start) that
  nothing here uses.

The supported range of kubernetes-asyncio is pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio.sslproto
import importlib.util
import os
import shutil
import sys
import types
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
import anyio

from ..objects import Obj
from .keydir import private_dir


def _light_import() -> None:
    """Make `kubernetes_asyncio.client` a bare package holding only `Configuration` and
    `ApiClient` (and their modules), unless the real one is already imported: its
    `__init__` imports every generated model and API class, which kubelbd never uses
    (client.py speaks JSON to the API server itself), and they are a third of a kubelbd
    process's memory at rest. The generated models' package, which `api_client` imports
    for its deserializer (never called here), is bare too."""
    if "kubernetes_asyncio.client" in sys.modules:
        return
    spec = importlib.util.find_spec("kubernetes_asyncio")
    assert spec is not None and spec.submodule_search_locations, "kubernetes-asyncio missing"
    root = spec.submodule_search_locations[0]
    for name, path in (
        ("kubernetes_asyncio", root),
        ("kubernetes_asyncio.client", os.path.join(root, "client")),
        ("kubernetes_asyncio.client.models", os.path.join(root, "client", "models")),
    ):
        bare = types.ModuleType(name)
        bare.__path__ = [path]
        sys.modules.setdefault(name, bare)
    client = sys.modules["kubernetes_asyncio.client"]
    configuration = importlib.import_module("kubernetes_asyncio.client.configuration")
    api_client = importlib.import_module("kubernetes_asyncio.client.api_client")
    client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
    client.ApiClient = api_client.ApiClient  # type: ignore[attr-defined]


_light_import()

from kubernetes_asyncio.client.api_client import ApiClient  # noqa: E402
from kubernetes_asyncio.client.configuration import Configuration  # noqa: E402
from kubernetes_asyncio.config import incluster_config, kube_config  # noqa: E402

CONNECTION_POOL_SIZE = 32

#: the read buffer of each TLS connection: asyncio allocates 256 KiB for every one, and
#: kubelbd keeps one connection open per watch (HTTP/1.1: about 18 per tenant), which made
#: 4-5 MiB per tenant of buffers that a watch's events (a few KiB) never fill. One TLS
#: record's worth (16 KiB at most): at 64 KiB, the buffers were still 11.8 MiB of kubelbd's
#: heap with 10 tenants (188 connections); a list of megabytes takes more reads, each a few
#: microseconds
TLS_READ_BUFFER = 16 * 1024
asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


class KubeconfigError(Exception):
    """A kubeconfig that cannot be turned into a client (unparsable, incomplete)."""


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, NO_PROXY...), or None."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme) or None


class Transport:
    """One API server's address, TLS connector and credentials."""

    def __init__(self, api: ApiClient, tmpdir: str | None = None) -> None:
        self._api = api
        self._tmpdir = tmpdir
        self.host: str = api.configuration.host or ""
        rest = api.rest_client
        connector = rest.pool_manager.connector
        assert connector is not None, "kubernetes-asyncio's session has no connector"
        self.connector: aiohttp.BaseConnector = connector
        self.server_hostname: str | None = rest.server_hostname or None
        # The kubeconfig's proxy-url, else the environment's, decided once: aiohttp asked
        # for proxy variables and ~/.netrc on every request otherwise (see client.py).
        self.proxy: str | None = api.configuration.proxy or _env_proxy(self.host)

    @classmethod
    async def from_kubeconfig(cls, config: Obj) -> Transport:
        """Certificate data is written by the loader to a private temp dir, removed on close
        (or, should the process die first, by the next kubelbd process: keydir.py)."""
        configuration = Configuration()
        tmpdir = await anyio.to_thread.run_sync(private_dir)
        try:
            try:
                loader = kube_config.KubeConfigLoader(
                    config_dict=config, config_base_path=None, temp_file_path=tmpdir
                )
                await loader.load_and_set(configuration)
            except Exception as e:  # the loader raises assorted types for bad input
                raise KubeconfigError(f"kubeconfig cannot be loaded: {e}") from e
            configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
            try:
                # Builds an aiohttp session, which must happen on the loop; it reads the small
                # certificate files the loader just wrote, once per cluster connection.
                api = ApiClient(configuration)
            except Exception as e:  # bad certificate or key data surfaces here, from ssl
                raise KubeconfigError(f"kubeconfig credentials are unusable: {e}") from e
        except KubeconfigError:
            # Key material must not outlive a client that was never made.
            await _remove(tmpdir)
            raise
        return cls(api, tmpdir)

    @classmethod
    def in_cluster(cls) -> Transport:
        """The API server this pod runs under, via its service account."""
        configuration = Configuration()
        incluster_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return cls(ApiClient(configuration))

    async def headers(self) -> dict[str, str]:
        """Authorization, with a token the loader keeps fresh."""
        auth: dict[str, Any] = await self._api.configuration.auth_settings()
        if "BearerToken" in auth:
            return {"Authorization": str(auth["BearerToken"]["value"])}
        return {}

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._api.close()
            if self._tmpdir:
                await _remove(self._tmpdir)


async def _remove(directory: str) -> None:
    forget_temp_files(directory)
    await anyio.to_thread.run_sync(shutil.rmtree, directory, True)


def temp_file_cache() -> dict[str, str]:
    """The loader's cache of certificate temp files: content → path."""
    cache: dict[str, str] = kube_config._temp_files
    return cache


def forget_temp_files(directory: str) -> None:
    """kubernetes-asyncio caches the temp files it writes certificates to, by content, in a
    module global; once we delete a client's directory, those entries must go too, or the next
    client for the same cluster is handed paths that no longer exist."""
    cache = temp_file_cache()
    for content, path in list(cache.items()):
        if path.startswith(directory + os.sep):
            del cache[content]
