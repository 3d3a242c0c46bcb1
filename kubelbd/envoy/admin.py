"""Reading Envoy's admin interface: is it ready, and which version of each file has it applied.

Every xDS subscription exposes a `version_text` text readout in /stats; our files carry their
content hash as version_info, so comparing the two says exactly what Envoy serves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import anyio
import orjson

from ..retry import Backoff
from .settings import rds_file

log = logging.getLogger(__name__)


def file_of_stat(name: str) -> str | None:
    """Map a version_text stat to the config file it reports on."""
    if name == "listener_manager.lds.version_text":
        return "lds.pb"
    if name.startswith("http.") and ".rds." in name and name.endswith(".version_text"):
        route_config = name.split(".rds.", 1)[1].removesuffix(".version_text")
        return rds_file(route_config)
    return None


#: xDS types whose rejections are reported (each at least as 0)
XDS_TYPES = ("lds", "cds", "rds", "srds", "sds")


def xds_type_of_rejection(name: str) -> str | None:
    """Map an `update_rejected` counter to its xDS type: listeners, clusters, route tables
    (one counter per route table, summed), the plain listener's host scopes
    (`http.<prefix>.scoped_rds.<name>.`) and secrets (one per secret)."""
    if not name.endswith(".update_rejected"):
        return None
    if name == "listener_manager.lds.update_rejected":
        return "lds"
    if name == "cluster_manager.cds.update_rejected":
        return "cds"
    if name.startswith("http.") and ".scoped_rds." in name:
        return "srds"
    if name.startswith("http.") and ".rds." in name:
        return "rds"
    if name.startswith("sds."):
        return "sds"
    return None


#: files Envoy always subscribes to: their versions must be reported (the clusters are no file:
#: their acknowledgements come over the stream, envoy/ads.py)
ALWAYS = ("lds.pb",)


def all_applied(
    published: Mapping[str, str], reported: Mapping[str, str], required: Iterable[str] = ALWAYS
) -> bool:
    """Whether Envoy reports every published file version applied.

    Only files Envoy subscribes to count (a route table no listener names yet is never read);
    a new listener's route tables and secrets are loaded while it warms, before the listener
    file's version is reported as applied. The `required` files must always be reported."""
    return (
        bool(reported)
        and all(reported.get(f) == published.get(f) for f in required)
        and all(reported.get(f, v) == v for f, v in published.items())
    )


class EnvoyAdmin:
    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(self, path: str) -> tuple[int, bytes]:
        async with self._client().get(self.base + path) as r:
            return r.status, await r.read()

    async def drain(self) -> bool:
        """Begin a graceful drain: Envoy's health checks fail, and every listener asks its
        clients to leave (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY) for the drain time
        Envoy was started with, then closes. Requests in flight complete."""
        try:
            for path in ("/healthcheck/fail", "/drain_listeners?graceful"):
                async with self._client().post(self.base + path) as r:
                    if r.status != 200:
                        log.warning("envoy admin %s: HTTP %d", path, r.status)
                        return False
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("envoy admin: cannot drain: %s", e)
            return False
        return True

    async def ready(self) -> bool:
        try:
            status, _ = await self._get("/ready")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return status == 200

    async def versions(self) -> dict[str, str]:
        """{config file: version Envoy applied}; empty when Envoy cannot be reached."""
        try:
            # Text readouts only, and no filter: a regex filter walks every stat on Envoy's
            # main thread (over a second at a few thousand stats), delaying the very config
            # updates this is waiting for; the text readouts are a handful.
            status, body = await self._get("/stats?format=json&type=TextReadouts")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return {}
        if status != 200:
            return {}
        out: dict[str, str] = {}
        stats: list[dict[str, Any]] = orjson.loads(body).get("stats", [])
        for s in stats:
            name = s.get("name", "")
            path = file_of_stat(name)
            if path is not None and s.get("value"):
                # Several listeners may share one route table; any of them reports it.
                out[path] = str(s["value"])
        return out

    async def rejections(self) -> dict[str, int] | None:
        """{xDS type: configuration updates Envoy rejected}, from its `update_rejected`
        counters; None when Envoy cannot be reached. This walks every counter on Envoy's main
        thread (the filter is applied to each): call it seldom, never on the latency path."""
        try:
            status, body = await self._get(
                "/stats?format=json&type=Counters&usedonly&filter=update_rejected%24"
            )
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if status != 200:
            return None
        out = dict.fromkeys(XDS_TYPES, 0)
        stats: list[dict[str, Any]] = orjson.loads(body).get("stats", [])
        for s in stats:
            xds = xds_type_of_rejection(str(s.get("name", "")))
            if xds is not None:
                out[xds] += int(s.get("value") or 0)
        return out

    async def config_dump(self, resource: str) -> list[dict[str, Any]] | None:
        """The `configs` of /config_dump for one resource (e.g. dynamic_route_configs,
        dynamic_listeners); None when Envoy cannot be reached or answers otherwise."""
        try:
            status, body = await self._get(f"/config_dump?resource={resource}")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if status != 200:
            return None
        configs = orjson.loads(body).get("configs", [])
        return configs if isinstance(configs, list) else None

    async def warming(self) -> set[str] | None:
        """The clusters Envoy is warming (waiting for their first health checks: a route to
        one answers 503 until it is active); None when Envoy cannot be reached. Cheap: the
        dump holds the warming clusters only."""
        configs = await self.config_dump("dynamic_warming_clusters")
        if configs is None:
            return None
        return {str((c.get("cluster") or {}).get("name", "")) for c in configs}

    async def wait_applied(
        self,
        published: Mapping[str, str],
        timeout: float | None,
        required: Iterable[str] = ALWAYS,
    ) -> bool:
        """True once Envoy reports `published` (file -> version) applied; False on timeout."""
        backoff = Backoff(initial=0.002, maximum=0.2)
        with anyio.move_on_after(timeout):
            while True:
                if all_applied(published, await self.versions(), required):
                    return True
                await anyio.sleep(backoff.next())
        return False
