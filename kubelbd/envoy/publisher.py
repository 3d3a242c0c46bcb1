"""Stage 4: hand Envoy what changed: listeners and route tables as files, each atomically;
clusters and host scopes over the ADS stream (envoy/ads.py), each resource on its own.

Each file is a DiscoveryResponse in protobuf's binary form (`.pb`, envoy/protos.py: Envoy
reads it four times faster than JSON) whose version_info is a hash of its resources, so the
version Envoy reports back says exactly which content it applied, and a restart of kubelbd
rewrites nothing that Envoy already has. Writes go to a temp file in the same directory,
are fsynced, then renamed over the target: Envoy, watching for moves, never sees a
half-written file.

The renderer still hands the clusters over as one list (`cds.pb`, its goldens' name for
them); here each becomes a resource of its own, versioned by its bytes, and only those that
changed or went are put on the stream: a backend's new cluster is one small message, not a
file of every cluster that Envoy parses again whole.

No private key is written here: certificates go to Envoy over kubelbd's secret server
(kubelbd.envoy.ads). Temp files are created 0600, under a name `load` recognises: one a crash
left behind is removed at the next start, as are the certificate, JSON and cluster files an
older kubelbd wrote.

Order matters because resources reference each other: clusters first, then route tables and
scopes, then listeners (a listener naming a route table file that does not exist yet is
rejected).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
from google.protobuf.message import DecodeError

from .. import metrics
from . import protos
from .scopes import is_scope, scope_name
from .type_urls import CLUSTER, SCOPED_ROUTE

log = logging.getLogger(__name__)

Resources = list[dict[str, Any]]

#: the renderer's name for the clusters, which are no file (above)
CLUSTERS = "cds.pb"


def version_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


class Encoder:
    """Files' bytes, each file's resources and its route table's virtual hosts remembered
    between calls (protos.Remembered: protobuf's JSON mapping costs about 0.3 ms a
    resource, and an unchanged one is the same object from one render to the next)."""

    def __init__(self) -> None:
        #: file -> (its resources, its route table's hosts)
        self._files: dict[str, tuple[protos.Remembered, protos.Remembered]] = {}

    def encode(self, name: str, resources: Resources) -> tuple[str, bytes]:
        """(version, file bytes) of file `name`: the same resources always give the same
        bytes, remembered or not, so a restarted kubelbd rewrites nothing Envoy has."""
        known, hosts = self._files.setdefault(name, (protos.Remembered(), protos.Remembered()))
        parts = known.encode(
            resources, lambda r: protos.resource(r, hosts), "resource", where=f"{name}: "
        )
        version = version_of(b"".join(parts))
        return version, protos.discovery_response(version, parts)

    def encode_each(self, name: str, resources: Resources) -> dict[str, bytes]:
        """Each resource's encoded Any, by its name: resources served on their own (the
        clusters). Remembered as a file's are: an unchanged cluster costs no encoding."""
        known, _ = self._files.setdefault(name, (protos.Remembered(), protos.Remembered()))
        pairs = known.pairs(resources, protos.resource, "resource", where=f"{name}: ")
        return {str(item.get("name", "")): part for item, part in pairs}

    def encode_scope(self, name: str, resources: Resources) -> tuple[str, bytes] | None:
        """(version, encoded Any) of a scope (envoy/scopes.py); None when it is gone. Nothing
        is remembered: the renderer hands over only scopes that changed, each a new object, so
        keeping their objects and bytes (as for files) would hold every host twice for nothing
        (32 MiB at 10,000 hosts offline, `hack/bench memory`)."""
        if not resources:
            return None
        parts = protos.Remembered().encode(
            resources, protos.resource, "resource", where=f"{name}: "
        )
        if not parts:
            return None  # left out, logged
        return version_of(parts[0]), parts[0]


#: Temp files start with this (then the target's name and a random part): `load` removes
#: any a crash left behind.
TEMP_PREFIX = ".kubelbd-tmp."


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`data` into `path`, all or nothing, with exactly `mode` (the temp file is created 0600
    and only then given `mode`, so a key is never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_temp(name: str) -> bool:
    """A temp file of `write_atomically`, or of the kubelbd before it (`.<name>.tmp`)."""
    return name.startswith(TEMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))


def on_tmpfs(path: Path) -> bool:
    """Whether `path` lives on tmpfs (by its mount in /proc/self/mounts; False if unknown)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        target = path.resolve()
    except OSError:
        return False
    best, fstype = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == Path(point) or Path(point) in target.parents
        if inside and len(point) > len(best):
            best, fstype = point, fields[2]
    return fstype == "tmpfs"


def _tidy(action: Callable[..., None], *args: Any) -> None:
    """Tidying up what a previous run left: a failure is logged, and kubelbd starts anyway."""
    try:
        action(*args)
    except OSError as e:
        log.warning("config directory: %s", e)


def _order(name: str) -> int:
    return 1 if name == "lds.pb" else 0


class StreamSink(Protocol):
    """Where resources served on their own go (envoy/ads.py's DiscoveryServer.serve)."""

    def serve(self, type_url: str, changes: Mapping[str, tuple[str, bytes] | None]) -> int: ...


#: what a publish puts on the stream: name -> (version, encoded Any), None for a name gone
Changes = dict[str, tuple[str, bytes] | None]


@dataclass
class Publisher:
    config_dir: Path
    #: relative path -> version currently on disk
    published: dict[str, str] = field(default_factory=dict)
    #: On a memory-backed volume (tmpfs, as the Deployment mounts it) a write and its fsync
    #: are memory copies that never wait for a device: they run in the event loop, because
    #: handing them to a thread cost 3-15 ms per publish on a busy 2-core machine, most of
    #: a route change's own time. On any other filesystem they go to a worker thread.
    in_memory: bool = field(init=False, default=False)
    encoder: Encoder = field(init=False, default_factory=Encoder)
    #: where clusters and scopes go (envoy/ads.py's server, set by the data plane): they are
    #: no files
    stream: StreamSink | None = None
    #: scope -> version served
    scopes_published: dict[str, str] = field(default_factory=dict)
    #: cluster -> version served, and its encoded Any
    clusters: dict[str, str] = field(default_factory=dict)
    _cluster_parts: dict[str, bytes] = field(init=False, default_factory=dict, repr=False)
    #: whether the clusters were put on the stream yet: the first publish puts them even if
    #: there are none, as Envoy's start waits for its first answer about them
    clusters_put: bool = field(init=False, default=False)

    def load(self) -> None:
        """Learn what a previous run left on disk, so identical content is not rewritten, and
        what kind of volume it is. Temp files a crash left are removed, and files an older
        kubelbd wrote: certificates (one SDS file each, before kubelbd.envoy.ads: a private
        key does not outlive its use) and JSON files (before protos.py), which no Envoy
        started with this kubelbd's bootstrap reads, nor the cluster file (clusters go over
        the stream now)."""
        self.in_memory = on_tmpfs(self.config_dir)
        for directory in (self.config_dir, self.config_dir / "rds", self.config_dir / "secrets"):
            for path in directory.glob(".*"):
                if _is_temp(path.name):
                    _tidy(path.unlink)
            for leftover in directory.glob("*.json"):
                _tidy(leftover.unlink)
        if (self.config_dir / CLUSTERS).exists():
            _tidy((self.config_dir / CLUSTERS).unlink)
        top = [self.config_dir / "lds.pb"]
        tables = sorted((self.config_dir / "rds").glob("*.pb"))
        for path in [*top, *tables]:
            try:
                version = protos.version_of_file(path.read_bytes())
            except (OSError, DecodeError):
                continue
            self.published[str(path.relative_to(self.config_dir))] = version

    async def load_async(self) -> None:
        await anyio.to_thread.run_sync(self.load)

    async def publish(self, files: dict[str, Resources]) -> dict[str, str]:
        """Hand over the given files' resources whose content differs from what Envoy was
        last handed; return {file or scope: version} of those handed (the clusters as
        `cds.pb`, with the stream's generation). Its time is kubelbd_publish_duration_seconds
        when anything was."""
        start = time.perf_counter()
        scopes = {name: res for name, res in files.items() if is_scope(name)}
        encoded = {
            name: self.encoder.encode(name, res)
            for name, res in files.items()
            if name not in scopes and name != CLUSTERS
        }
        changed = {
            name: (version, data)
            for name, (version, data) in encoded.items()
            if self.published.get(name) != version
        }
        clusters = self._clusters_changed(files[CLUSTERS]) if CLUSTERS in files else {}
        scopes_changed = self._scopes_changed(scopes)
        # Clusters, then route tables and the scopes naming them, then the listeners.
        written: dict[str, str] = {}
        if self.stream is not None and CLUSTERS in files and (clusters or not self.clusters_put):
            written[CLUSTERS] = str(self.stream.serve(CLUSTER, clusters))
            self.clusters_put = True
        first = {n: c for n, c in changed.items() if _order(n) == 0}
        await self._write_some(first)
        if scopes_changed and self.stream is not None:
            self.stream.serve(SCOPED_ROUTE, {scope_name(n): s for n, s in scopes_changed.items()})
        await self._write_some({n: c for n, c in changed.items() if n not in first})
        for name, (version, _) in changed.items():
            self.published[name] = version
        if written or changed or scopes_changed:
            metrics.publish_took(time.perf_counter() - start)
        written.update((name, version) for name, (version, _) in changed.items())
        written.update((name, s[0] if s else "") for name, s in scopes_changed.items())
        return written

    def _clusters_changed(self, resources: Resources) -> Changes:
        """The clusters new or changed since the last publish (by their bytes: an unchanged
        one is the very bytes remembered, so finding them hashes nothing), and those gone."""
        current = self.encoder.encode_each(CLUSTERS, resources)
        parts = self._cluster_parts
        out: Changes = {name: None for name in parts.keys() - current.keys()}
        for name in out:
            del parts[name], self.clusters[name]
        for name, part in current.items():
            served = parts.get(name)
            if served is None or (served is not part and served != part):
                parts[name], self.clusters[name] = part, version_of(part)
                out[name] = (self.clusters[name], part)
        return out

    def _scopes_changed(self, scopes: dict[str, Resources]) -> Changes:
        out: Changes = {}
        for name, resources in scopes.items():
            scope = self.encoder.encode_scope(name, resources)
            if scope is None:
                if self.scopes_published.pop(name, None) is not None:
                    out[name] = None
            elif self.scopes_published.get(name) != scope[0]:
                self.scopes_published[name] = scope[0]
                out[name] = scope
        return out

    async def _write_some(self, changed: dict[str, tuple[str, bytes]]) -> None:
        if changed and self.in_memory:
            self._write(changed)
        elif changed:
            await anyio.to_thread.run_sync(self._write, changed)

    def _write(self, changed: dict[str, tuple[str, bytes]]) -> None:
        for name in sorted(changed, key=lambda n: (_order(n), n)):
            write_atomically(self.config_dir / name, changed[name][1])
