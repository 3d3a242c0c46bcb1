"""A thin JSON client for the Kubernetes API.

kubernetes-asyncio parses kubeconfigs and owns the TLS session (transport.py); its generated
models are bypassed: every object stays a plain dict decoded by orjson, because deserialising
thousands of watch events into model classes costs more than the whole rest of a reconcile,
and the translation stages want dicts. Requests go through a session of our own that does not
consult the environment (proxy variables, ~/.netrc) on every call. Server-side apply is the
default write.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Self, cast

import aiohttp
import anyio
import orjson
import yaml
from aiohttp.http_exceptions import HttpProcessingError

from .. import metrics
from ..objects import Obj, Resource
from .transport import KubeconfigError, Transport

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


def timestamp() -> str:
    """Now, as the API writes times (lastTransitionTime, an Event's lastTimestamp)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def precise_timestamp() -> str:
    """Now, to the microsecond (RFC 3339, fixed width: such times order as strings); for the
    claims two tenants compete with, where seconds would tie."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def load_kubeconfig_file(path: str | os.PathLike[str]) -> Obj:
    with open(path, "rb") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise KubeconfigError(f"{path}: not a kubeconfig document")
    return cast(Obj, data)


class Kube:
    """One API server, one connection pool. Close it with `aclose()`."""

    def __init__(self, transport: Transport, name: str = "") -> None:
        self._transport = transport
        self.name = name
        self.host = transport.host
        self._session = aiohttp.ClientSession(
            connector=transport.connector, connector_owner=False, trust_env=False
        )

    @classmethod
    async def from_kubeconfig(cls, config: Obj, name: str = "") -> Self:
        """A client for `config` as it is: the loader does whatever it asks (runs its exec
        plugin, reads the files it names). A tenant's goes through parse_kubeconfig first."""
        return cls(await Transport.from_kubeconfig(config), name)

    @classmethod
    async def in_cluster(cls, name: str = "") -> Self:
        """The API server this pod runs under, via its service account."""
        return cls(Transport.in_cluster(), name)

    @classmethod
    async def from_file(cls, path: str | os.PathLike[str], name: str = "") -> Self:
        config = await anyio.to_thread.run_sync(load_kubeconfig_file, path)
        return await cls.from_kubeconfig(config, name)

    @classmethod
    async def management(cls, kubeconfig: str | None, name: str = "mgmt") -> Self:
        """The management cluster's API server: from `kubeconfig` when one is named (an
        operator's machine, the fleet), else this pod's service account. Every client of it
        is made here, so kubelbd and its CLI reach it the same way."""
        if kubeconfig:
            return await cls.from_file(kubeconfig, name)
        return await cls.in_cluster(name)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._session.close()
            await self._transport.aclose()

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
        headers.update(await self._transport.headers())
        payload = orjson.dumps(body) if body is not None and not isinstance(body, bytes) else body
        extra: dict[str, Any] = {}
        if self._transport.server_hostname:
            extra["server_hostname"] = self._transport.server_hostname
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
                proxy=self._transport.proxy,
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
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        keep: Callable[[Obj], Obj] | None = None,
        page: int = 500,
        **params: Any,
    ) -> tuple[list[Obj], str]:
        """Every item (following `continue`, `page` at a time), and the list's
        resourceVersion; `keep`: what to keep of each item, applied page by page, so what
        is not kept of a page is freed before the next is read (a kind whose objects may be
        large, up to the API server's 1.5 MiB, is listed in smaller pages and never held
        whole)."""
        items: list[Obj] = []
        query: dict[str, Any] = {"limit": page, **params}
        while True:
            got = await self.request("GET", res.path(namespace), query)
            found = got.get("items") or []
            items.extend(found if keep is None else (keep(o) for o in found))
            meta = got.get("metadata") or {}
            if not meta.get("continue"):
                return items, meta.get("resourceVersion", "")
            query["continue"] = meta["continue"]

    async def create(self, res: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        ns = namespace or obj.get("metadata", {}).get("namespace")
        return await self._write(
            "create", res, None, "POST", res.path(ns), {"fieldManager": FIELD_MANAGER}, obj
        )

    async def replace(self, res: Resource, obj: Obj, subresource: str | None = None) -> Obj:
        meta = obj["metadata"]
        return await self._write(
            "update",
            res,
            subresource,
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
        return await self._write(
            "apply",
            res,
            subresource,
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
        return await self._write(
            "patch",
            res,
            subresource,
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
            await self._write(
                "delete", res, None, "DELETE", res.path(namespace, name), body=body,
                gone_ok=missing_ok,
            )  # fmt: skip
        except ApiError as e:
            if not (missing_ok and e.not_found):
                raise

    async def _write(
        self,
        verb: str,
        res: Resource,
        subresource: str | None,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        gone_ok: bool = False,
    ) -> Obj:
        """A write, counted in kubelbd_api_write_failures when it fails (a 404 the caller
        expects, `gone_ok`, is not a failure)."""
        resource = f"{res.plural}/{subresource}" if subresource else res.plural
        try:
            return await self.request(method, path, params, body, content_type)
        except ApiError as e:
            if not (gone_ok and e.not_found):
                metrics.api_write_failed(self.name, verb, resource, str(e.status))
            raise
        except ConnectionError:
            metrics.api_write_failed(self.name, verb, resource, "connection")
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
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as e:
            # RuntimeError: aiohttp's stream says "Connection closed." when the connection
            # goes mid-read.
            raise ConnectionError(f"{self.name or self.host}: watch {res.plural}: {e}") from e
        except (HttpProcessingError, orjson.JSONDecodeError) as e:
            # A line cut short by a dropped connection, or beyond any sane size: rewatch.
            raise ConnectionError(
                f"{self.name or self.host}: watch {res.plural}: unreadable event: {e}"
            ) from e
        finally:
            resp.release()


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
