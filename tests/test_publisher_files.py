"""The publisher on a real directory: nothing half-written or left by a crash survives a
start, temp files are the owner's only from their first byte, and the certificate files an
older kubelbd wrote (one SDS file each, private keys included) are removed: certificates now
go to Envoy over kubelbd's secret server, never through the volume."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kubelbd.envoy.publisher import TEMP_PREFIX, Publisher, write_atomically


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_world_readable_and_no_temp_file_is_left(tmp_path: Path) -> None:
    write_atomically(tmp_path / "rds" / "http.json", b"{}")
    assert _mode(tmp_path / "rds" / "http.json") == 0o644
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "rds" / "a.json"
    target.mkdir(parents=True)  # the rename onto it fails
    with pytest.raises(OSError):
        write_atomically(target, b"content")
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_start_removes_temp_files_and_the_key_files_of_an_older_kubelbd(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (tmp_path / "rds").mkdir()
    crashed = [
        tmp_path / f"{TEMP_PREFIX}lds.json.abcd",  # this kubelbd's temp files
        tmp_path / "rds" / f"{TEMP_PREFIX}http.json.abcd",
        secrets / f"{TEMP_PREFIX}x.json.k2j4",
        secrets / ".alpha.default.site-tls.json.tmp",  # an older kubelbd's
        tmp_path / ".lds.json.tmp",
    ]
    for path in crashed:
        path.write_bytes(b"half a file")
    old_key = secrets / "alpha.default.site-tls.json"
    old_key.write_bytes(b'{"version_info":"v1","resources":[]}')
    table = tmp_path / "rds" / "http.json"
    table.write_bytes(b'{"version_info":"v2","resources":[]}')
    (tmp_path / "bootstrap.yaml").write_text("{}")
    publisher = Publisher(tmp_path)
    publisher.load()
    assert [p for p in crashed if p.exists()] == []
    assert not old_key.exists()
    assert publisher.published == {"rds/http.json": "v2"}  # not rewritten when unchanged
    assert (tmp_path / "bootstrap.yaml").exists()
