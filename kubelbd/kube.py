"""A thin JSON client for the Kubernetes API, built on kubernetes-asyncio's transport.

kubernetes-asyncio parses kubeconfigs (certificates, tokens, exec plugins) and owns the TLS
session; we use it for exactly that. Its generated models are bypassed: every object stays a
plain dict decoded by orjson, because deserialising thousands of watch events into model
classes costs more than the whole rest of a reconcile, and the translation stages want dicts.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import anyio
import orjson
import yaml
from aiohttp.http_exceptions import HttpProcessingError
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.config import incluster_config, kube_config

Obj = dict[str, Any]

FIELD_MANAGER = "kubelbd"

#: Server-side watch timeout range; spreading it avoids every watch reconnecting at once.
WATCH_TIMEOUT_RANGE = (240, 360)
#: etcd stores objects up to 1.5 MiB; their JSON in a watch event stays well below this.
MAX_WATCH_EVENT_BYTES = 16 * 1024 * 1024


class ApiError(Exception):
    """A non-2xx answer from the API server, with the Status it carried."""

    def __init__(self, status: int, reason: str, message: str, body: Obj | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


class KubeconfigError(Exception):
    """A kubeconfig that cannot be turned into a client (unparsable, incomplete)."""


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: enough to build any URL for it."""

    group_version: str
    plural: str
    namespaced: bool = True

    def path(
        self,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)

    @property
    def api_version(self) -> str:
        return self.group_version


NAMESPACES = Resource("v1", "namespaces", namespaced=False)
NODES = Resource("v1", "nodes", namespaced=False)
PODS = Resource("v1", "pods")
SERVICES = Resource("v1", "services")
SECRETS = Resource("v1", "secrets")
EVENTS = Resource("v1", "events")
SERVICE_ACCOUNTS = Resource("v1", "serviceaccounts")
ENDPOINT_SLICES = Resource("discovery.k8s.io/v1", "endpointslices")
LEASES = Resource("coordination.k8s.io/v1", "leases")
INGRESSES = Resource("networking.k8s.io/v1", "ingresses")
INGRESS_CLASSES = Resource("networking.k8s.io/v1", "ingressclasses", namespaced=False)
DEPLOYMENTS = Resource("apps/v1", "deployments")
CRDS = Resource("apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)


def load_kubeconfig_file(path: str | os.PathLike[str]) -> Obj:
    with open(path, "rb") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise KubeconfigError(f"{path}: not a kubeconfig document")
    return cast(Obj, data)


def parse_kubeconfig(raw: bytes | str) -> Obj:
    """Parse kubeconfig text, raising KubeconfigError with a readable cause."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise KubeconfigError(f"kubeconfig is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not data.get("clusters") or not data.get("users"):
        raise KubeconfigError("kubeconfig has no clusters or users")
    return cast(Obj, data)


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, NO_PROXY...), or None."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme) or None


class Kube:
    """One API server, one connection pool. Close it with `aclose()`."""

    def __init__(
        self, api: k8s_client.ApiClient, name: str = "", tmpdir: str | None = None
    ) -> None:
        self._api = api
        self._tmpdir = tmpdir
        self.name = name
        self.host: str = api.configuration.host or ""
        # kubernetes-asyncio's session trusts the environment, so aiohttp looks up proxy
        # variables and ~/.netrc on every request, in a worker thread: measured at a fifth
        # of kubelbd's busy time and a thread round trip on each API call. The proxy (the
        # kubeconfig's proxy-url, else the environment's) is decided once, here.
        pool = api.rest_client.pool_manager
        self._session = aiohttp.ClientSession(
            connector=pool.connector, connector_owner=False, trust_env=False
        )
        self._proxy = api.configuration.proxy or _env_proxy(self.host)

    @classmethod
    async def from_kubeconfig(cls, config: Obj, name: str = "") -> Kube:
        """Build a client; certificate data is written to a private temp dir by the loader."""
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
            configuration.connection_pool_maxsize = 32
            try:
                # Builds an aiohttp session, which must happen on the loop; it reads the small
                # certificate files the loader just wrote, once per cluster connection.
                api = k8s_client.ApiClient(configuration)
            except Exception as e:  # bad certificate or key data surfaces here, from ssl
                raise KubeconfigError(f"kubeconfig credentials are unusable: {e}") from e
        except KubeconfigError:
            # Key material must not outlive a client that was never made.
            _forget_temp_files(tmpdir)
            await anyio.to_thread.run_sync(shutil.rmtree, tmpdir, True)
            raise
        return cls(api, name, tmpdir)

    @classmethod
    async def in_cluster(cls, name: str = "") -> Kube:
        """The API server this pod runs under, via its service account."""
        configuration = k8s_client.Configuration()
        incluster_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return cls(k8s_client.ApiClient(configuration), name)

    @classmethod
    async def from_file(cls, path: str | os.PathLike[str], name: str = "") -> Kube:
        config = await anyio.to_thread.run_sync(load_kubeconfig_file, path)
        return await cls.from_kubeconfig(config, name)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._session.close()
            await self._api.close()
            if self._tmpdir:
                _forget_temp_files(self._tmpdir)
                await anyio.to_thread.run_sync(shutil.rmtree, self._tmpdir, True)

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _open(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | float | None = 30,
    ) -> Any:
        query = [(k, _query_value(v)) for k, v in (params or {}).items() if v is not None]
        headers = {"Accept": "application/json", "Content-Type": content_type}
        auth = await self._api.configuration.auth_settings()
        if "BearerToken" in auth:
            headers["Authorization"] = auth["BearerToken"]["value"]
        payload = orjson.dumps(body) if body is not None and not isinstance(body, bytes) else body
        rest = self._api.rest_client
        extra: dict[str, Any] = {}
        if rest.server_hostname:
            extra["server_hostname"] = rest.server_hostname
        if not isinstance(timeout, aiohttp.ClientTimeout):
            timeout = aiohttp.ClientTimeout(total=timeout)
        if self._session.closed:
            # A tenant client closed by a kubeconfig change, still held by someone: an error
            # to retry, not a crash.
            raise ConnectionError(f"{self.name or self.host}: {method} {path}: client closed")
        try:
            resp = await self._session.request(
                method,
                self.host + path,
                params=query,
                headers=headers,
                data=payload,
                timeout=timeout,
                proxy=self._proxy,
                **extra,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ConnectionError(f"{self.name or self.host}: {method} {path}: {e}") from e
        if resp.status >= 300:
            data = await resp.read()
            resp.release()
            raise _api_error(resp.status, resp.reason or "", data)
        return resp

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = 30,
    ) -> Obj:
        resp = await self._open(method, path, params, body, content_type, timeout)
        try:
            data = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ConnectionError(f"{self.name or self.host}: {method} {path}: {e}") from e
        finally:
            resp.release()
        return cast(Obj, orjson.loads(data)) if data else {}

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return await self.request("GET", res.path(namespace, name))

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> Obj | None:
        try:
            return await self.get(res, name, namespace)
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def list(
        self, res: Resource, namespace: str | None = None, **params: Any
    ) -> tuple[list[Obj], str]:
        """Every item (following `continue`), and the list's resourceVersion."""
        items: list[Obj] = []
        query: dict[str, Any] = {"limit": 500, **params}
        while True:
            page = await self.request("GET", res.path(namespace), query)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, meta.get("resourceVersion", "")
            query["continue"] = meta["continue"]

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        ns = namespace or obj.get("metadata", {}).get("namespace")
        return await self.request("POST", res.path(ns), {"fieldManager": FIELD_MANAGER}, obj)

    async def replace(self, res: Resource, obj: Obj, subresource: str | None = None) -> Obj:
        meta = obj["metadata"]
        return await self.request(
            "PUT",
            res.path(meta.get("namespace"), meta["name"], subresource),
            {"fieldManager": FIELD_MANAGER},
            obj,
        )

    async def apply(
        self,
        res: Resource,
        obj: Obj,
        subresource: str | None = None,
        field_manager: str = FIELD_MANAGER,
    ) -> Obj:
        """Server-side apply: create or converge the fields this manager owns, in one call."""
        meta = obj["metadata"]
        return await self.request(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"], subresource),
            {"fieldManager": field_manager, "force": "true"},
            obj,
            content_type="application/apply-patch+yaml",
        )

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> Obj:
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[patch_type]
        return await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            {"fieldManager": FIELD_MANAGER},
            patch,
            content_type=content_type,
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        preconditions: Obj | None = None,
        missing_ok: bool = True,
    ) -> None:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if preconditions:
            body["preconditions"] = preconditions
        try:
            await self.request("DELETE", res.path(namespace, name), body=body)
        except ApiError as e:
            if not (missing_ok and e.not_found):
                raise

    async def watch(
        self,
        res: Resource,
        resource_version: str,
        namespace: str | None = None,
        **params: Any,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Yield (type, object) from one watch request, bookmarks included, until it ends."""
        timeout_s = random.randint(*WATCH_TIMEOUT_RANGE)
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_s,
            **params,
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30)
        resp = await self._open("GET", res.path(namespace), query, timeout=timeout)
        try:
            while True:
                # One event per line. aiohttp's line iterator refuses lines over 128 KiB, and
                # a tenant's Ingress or Secret may legitimately be larger: read up to etcd's
                # own object limit, with room for the JSON around it.
                line = await resp.content.readuntil(b"\n", max_size=MAX_WATCH_EVENT_BYTES)
                if not line:
                    return  # the server ended the watch (timeoutSeconds)
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind = event.get("type", "")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    raise _status_error(obj)
                yield kind, obj
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ConnectionError(f"{self.name or self.host}: watch {res.plural}: {e}") from e
        except (HttpProcessingError, orjson.JSONDecodeError) as e:
            # A line cut short by a dropped connection, or beyond any sane size: rewatch.
            raise ConnectionError(
                f"{self.name or self.host}: watch {res.plural}: unreadable event: {e}"
            ) from e
        finally:
            resp.release()


def _forget_temp_files(directory: str) -> None:
    """kubernetes-asyncio caches the temp files it writes certificates to, by content, in a
    module global; once we delete a client's directory, those entries must go too, or the next
    client for the same cluster is handed paths that no longer exist."""
    cache: dict[str, str] = kube_config._temp_files
    for content, path in list(cache.items()):
        if path.startswith(directory + os.sep):
            del cache[content]


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _api_error(status: int, reason: str, data: bytes) -> ApiError:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ApiError(status, reason, data.decode(errors="replace")[:500])
    if isinstance(body, dict):
        return ApiError(status, body.get("reason") or reason, body.get("message", ""), body)
    return ApiError(status, reason, str(body)[:500])


def _status_error(status: Obj) -> ApiError:
    return ApiError(
        int(status.get("code") or 500),
        status.get("reason") or "Error",
        status.get("message") or "watch error",
        status,
    )


def meta(obj: Obj) -> Obj:
    return cast(Obj, obj.setdefault("metadata", {}))


def key(obj: Obj) -> str:
    """namespace/name (or name for cluster-scoped objects): the cache key everywhere."""
    m = obj.get("metadata") or {}
    ns = m.get("namespace")
    return f"{ns}/{m['name']}" if ns else str(m["name"])
