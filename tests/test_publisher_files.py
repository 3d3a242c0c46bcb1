"""The publisher on a real directory: private keys are the owner's only from their first byte,
nothing half-written or left by a crash survives a start, and key files go when unused, also
those a previous run left for certificates deleted while kubelbd was down. And a key file's
name is bounded and unique, whatever its Secret is called."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubelbd.envoy.publisher import TEMP_PREFIX, Publisher, write_atomically
from kubelbd.envoy.settings import secret_file
from kubelbd.records.names import MAX_NAME, copy_name, secret_id


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secret(sid: str) -> list[dict[str, Any]]:
    return [{"name": sid, "tls_certificate": {"private_key": {"inline_bytes": "S0VZ"}}}]


def _publish(publisher: Publisher, files: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    return anyio.run(publisher.publish, files)


def test_key_files_are_the_owners_only_and_the_rest_world_readable(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path)
    publisher.load()
    key = secret_file("alpha/default.site-tls")
    _publish(publisher, {"cds.json": [], "rds/http.json": [], key: _secret("alpha/default.a")})
    assert _mode(tmp_path / key) == 0o600
    assert _mode(tmp_path / "cds.json") == _mode(tmp_path / "rds/http.json") == 0o644
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp file left


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "secrets" / "a.json"
    target.mkdir(parents=True)  # the rename onto it fails
    with pytest.raises(OSError):
        write_atomically(target, b"key material", 0o600)
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_start_removes_temp_files_and_makes_left_keys_the_owners_only(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (tmp_path / "rds").mkdir()
    crashed = [
        secrets / f"{TEMP_PREFIX}x.json.k2j4",  # this kubelbd's temp files
        tmp_path / f"{TEMP_PREFIX}lds.json.abcd",
        tmp_path / "rds" / f"{TEMP_PREFIX}http.json.abcd",
        secrets / ".alpha.default.site-tls.json.tmp",  # an older kubelbd's
    ]
    for path in crashed:
        path.write_bytes(b"half a key")
    kept = secrets / "alpha.default.site-tls.json"
    kept.write_bytes(b'{"version_info":"v1","resources":[]}')
    kept.chmod(0o640)  # as an older kubelbd wrote keys
    (tmp_path / "bootstrap.yaml").write_text("{}")
    publisher = Publisher(tmp_path)
    publisher.load()
    assert not [p for p in crashed if p.exists()]
    assert _mode(kept) == 0o600
    assert publisher.published["secrets/alpha.default.site-tls.json"] == "v1"
    assert (tmp_path / "bootstrap.yaml").exists()


def test_key_files_nothing_names_are_removed_also_after_a_restart(tmp_path: Path) -> None:
    first = Publisher(tmp_path)
    first.load()
    kept, gone = secret_file("alpha/default.kept"), secret_file("alpha/default.gone")
    _publish(first, {kept: _secret("alpha/default.kept"), gone: _secret("alpha/default.gone")})
    (tmp_path / "secrets" / "unreadable.json").write_bytes(b"{half")
    # kubelbd stops; alpha/default.gone is deleted meanwhile; kubelbd starts again.
    second = Publisher(tmp_path)
    second.load()
    assert second.published[kept] == first.published[kept]  # not rewritten
    stale = second.unreferenced({kept})
    assert stale == {gone, "secrets/unreadable.json"}
    anyio.run(second.remove, stale)
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == [Path(kept).name]
    assert second.unreferenced({kept}) == set()


#: Names as long as the API lets them be: a tenant (a DNS label, with `tenant-` at most 63),
#: and a Secret's copy `<namespace>.<name>`, at most 253 characters.
TENANTS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=56)
NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=MAX_NAME)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TENANTS, NAMES | st.text(min_size=1, max_size=400)), max_size=20))
def test_key_file_names_are_bounded_distinct_and_plain(ids: list[tuple[str, str]]) -> None:
    sids = {secret_id(t, n) for t, n in ids}
    files = {secret_file(s) for s in sids}
    assert len(files) == len(sids)
    for f in files:
        directory, name = f.split("/")
        assert directory == "secrets" and name.endswith(".json")
        assert len(name.encode()) <= 255 and not name.startswith(".")
        assert name.isascii() and "/" not in name and "\0" not in name


@pytest.mark.parametrize("length", [1, 63, 240, MAX_NAME - len("default."), 400])
def test_a_secret_of_any_name_length_is_written(tmp_path: Path, length: int) -> None:
    sid = secret_id("alpha", copy_name("default", "s" * length))
    publisher = Publisher(tmp_path)
    publisher.load()
    written = _publish(publisher, {secret_file(sid): _secret(sid)})
    assert list(written) == [secret_file(sid)]
    assert (tmp_path / secret_file(sid)).read_bytes().count(sid.encode()) == 1
    # Readable by people: the file starts with the secret's name.
    assert Path(secret_file(sid)).name.startswith("alpha.default.s")
