"""The publisher on a real directory: nothing half-written or left by a crash survives a
start, temp files are the owner's only from their first byte, and the certificate files an
older kubelbd wrote (one SDS file each, private keys included) are removed: certificates now
go to Envoy over kubelbd's secret server, never through the volume. So are its JSON files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kubelbd.envoy import protos
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


def test_a_start_removes_temp_files_and_the_files_of_an_older_kubelbd(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (tmp_path / "rds").mkdir()
    crashed = [
        tmp_path / f"{TEMP_PREFIX}lds.pb.abcd",  # this kubelbd's temp files
        tmp_path / "rds" / f"{TEMP_PREFIX}http.json.abcd",
        secrets / f"{TEMP_PREFIX}x.json.k2j4",
        secrets / ".alpha.default.site-tls.json.tmp",  # an older kubelbd's
        tmp_path / ".lds.pb.tmp",
    ]
    for path in crashed:
        path.write_bytes(b"half a file")
    old_key = secrets / "alpha.default.site-tls.json"
    old_key.write_bytes(b'{"version_info":"v1","resources":[]}')
    # JSON files, before the binary ones: no Envoy started with this bootstrap reads them.
    old_json = [tmp_path / "lds.json", tmp_path / "cds.json", tmp_path / "rds" / "http.json"]
    for path in old_json:
        path.write_bytes(b'{"version_info":"v0","resources":[]}')
    (tmp_path / "rds" / "http.pb").write_bytes(protos.discovery_response("v2", []))
    (tmp_path / "rds" / "broken.pb").write_bytes(b"\xff\xff not a message")
    (tmp_path / "bootstrap.yaml").write_text("{}")
    publisher = Publisher(tmp_path)
    publisher.load()
    assert [p for p in crashed if p.exists()] == []
    assert not old_key.exists()
    assert [p for p in old_json if p.exists()] == []
    assert publisher.published == {"rds/http.pb": "v2"}  # not rewritten when unchanged
    assert (tmp_path / "bootstrap.yaml").exists()
