"""kubelbd.kube.keydir: a kubelbd process killed with its tenants' client keys on disk leaves
them only until the next kubelbd process starts; a living one's are never touched."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kubelbd.kube import keydir

#: a kubelbd process: makes a client's key directory, writes a key, says where, then waits
#: for a line on stdin and either dies by SIGKILL ("kill") or exits normally
PROCESS = """
import os, signal, sys
from kubelbd.kube import keydir
d = keydir.private_dir()
with open(os.path.join(d, "key.pem"), "w") as f:
    f.write("secret")
print(d, flush=True)
if sys.stdin.readline().strip() == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def start(root: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROCESS],
        env={**os.environ, "TMPDIR": str(root)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def finish(proc: subprocess.Popen[str], how: str) -> int:
    assert proc.stdin is not None
    proc.stdin.write(how + "\n")
    proc.stdin.close()
    return proc.wait(timeout=30)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test process as a fresh kubelbd process whose temp dir is tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(keydir, "_mine", None)
    return tmp_path


def test_a_killed_process_keys_go_when_the_next_one_starts(root: Path) -> None:
    proc, key_dir = start(root)
    assert (key_dir / "key.pem").read_text() == "secret"
    assert key_dir.parent.parent == root and key_dir.parent.name.startswith(keydir.PREFIX)
    assert finish(proc, "kill") == -9
    assert (key_dir / "key.pem").exists()  # nothing of the killed process ran
    unrelated = root / "kubelbd-kc-of-another-layout"
    unrelated.mkdir()

    mine = Path(keydir.private_dir())

    assert not key_dir.parent.exists()
    assert mine.is_dir() and mine.parent.name.startswith(keydir.PREFIX)
    assert oct(mine.stat().st_mode & 0o777) == "0o700"
    assert unrelated.is_dir()  # no lock file: not a directory this module made


def test_a_living_process_keys_stay_and_go_when_it_exits(root: Path) -> None:
    proc, key_dir = start(root)
    try:
        assert keydir.sweep(str(root)) == []
        Path(keydir.private_dir())
        assert (key_dir / "key.pem").read_text() == "secret"
    finally:
        assert finish(proc, "exit") == 0
    assert not key_dir.parent.exists()  # removed at exit
    assert keydir.sweep(str(root)) == []  # and this process's own, living, stays
    assert Path(keydir.process_dir()).is_dir()
