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
  certificate data to, keyed by content, which must forget a client's files once deleted.

The supported range of kubernetes-asyncio is pinned in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
import anyio
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.config import incluster_config, kube_config

from ..objects import Obj

CONNECTION_POOL_SIZE = 32


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

    def __init__(self, api: k8s_client.ApiClient, tmpdir: str | None = None) -> None:
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
        """Certificate data is written by the loader to a private temp dir, removed on close."""
        configuration = k8s_client.Configuration()
        tmpdir = await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "kubelbd-kc-")
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
                api = k8s_client.ApiClient(configuration)
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
        configuration = k8s_client.Configuration()
        incluster_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return cls(k8s_client.ApiClient(configuration))

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
