"""Where the kubeconfig loader writes key material, and how a dead process's is removed.

kubernetes-asyncio writes a kubeconfig's certificate and key data to files (Python's ssl loads
a client certificate from files only). Each client gets a private directory, removed when the
client closes. A process that is killed (SIGKILL, the OOM killer, a node losing power) closes
nothing, and its tenants' client keys would stay on disk, in the Deployment's /tmp volume that
outlives a container restart, for as long as the pod lives.

So every client's directory is made inside its process's own, `kubelbd-*` in the temp dir,
holding `.lock`, locked (flock) for the life of the process. The kernel releases the lock when
the process dies, however it dies. A process making its own directory first removes every
`kubelbd-*` directory whose lock it can take: that of a process that is gone. Several kubelbd
processes may share a temp dir (replicas on one machine, the CLI beside the server), and none
removes another's while it lives.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import tempfile
import threading

log = logging.getLogger(__name__)

PREFIX = "kubelbd-"
LOCK = ".lock"

_lock = threading.Lock()  # the loader's threads may ask for a directory at once
_mine: str | None = None


def private_dir() -> str:
    """A new directory, 0700, for one client's key material (blocking: call it in a thread)."""
    return tempfile.mkdtemp("", "kc-", dir=process_dir())


def process_dir() -> str:
    """This process's directory, made (after removing those of dead processes) on first use."""
    global _mine
    with _lock:
        if _mine is None:
            root = tempfile.gettempdir()
            sweep(root)
            _mine = _make(root)
            atexit.register(shutil.rmtree, _mine, True)
        return _mine


def _make(root: str) -> str:
    """Made under another name and locked before it is renamed to `kubelbd-*`, so that no
    other process's sweep ever sees it unlocked."""
    staging = tempfile.mkdtemp("", ".kubelbd-new-", dir=root)
    fd = os.open(os.path.join(staging, LOCK), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # fd stays open, unreferenced, for the life of the process: the lock is its liveness.
    final = os.path.join(root, PREFIX + os.path.basename(staging).removeprefix(".kubelbd-new-"))
    os.rename(staging, final)
    return final


def sweep(root: str) -> list[str]:
    """Remove the `kubelbd-*` directories (this user's, with a lock file) of processes that
    are gone; returns their paths. A directory without a lock file is not one of these, and
    stays."""
    removed = []
    for entry in os.scandir(root):
        if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        if entry.stat(follow_symlinks=False).st_uid != os.getuid():
            continue
        try:
            fd = os.open(os.path.join(entry.path, LOCK), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its process lives
        # Removed while locked, then closed: no other sweep takes it meanwhile.
        shutil.rmtree(entry.path, ignore_errors=True)
        os.close(fd)
        removed.append(entry.path)
    for path in removed:
        log.info("removed %s: key material of a kubelbd process that is gone", path)
    return removed
