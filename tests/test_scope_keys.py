"""Scope keys (kubelbd.envoy.scopes): Envoy takes two keys whose hashes are equal for the same
key and refuses the scopes, so a host whose key hash another scope holds gets none and is
served through the fallback, until the holder goes."""

from __future__ import annotations

import pytest
import xxhash

from kubelbd.envoy import scopes
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.scopes import FALLBACK_KEY, KeyHashes, key_hash, scope_file
from kubelbd.envoy.settings import Settings
from kubelbd.ir.http import Model
from kubelbd.records.types import TenantRecord

from . import records


def test_envoys_key_hash_folds_the_fragment_hash_into_zero() -> None:
    # envoy/router/scopes.h: hash = xxHash64(le64(0) ++ le64(xxHash64(fragment)))
    fragment = xxhash.xxh64_intdigest(b"a.example.com")
    folded = xxhash.xxh64_intdigest(bytes(8) + fragment.to_bytes(8, "little"))
    assert key_hash("a.example.com") == folded != fragment
    assert xxhash.xxh64_intdigest(b"") == 0xEF46DB3751D8E999  # the reference test vector


@pytest.fixture
def colliding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host whose name starts with "x" hashes as "x.example.com" does, and "fallback-
    twin.example.com" as the fallback key."""

    def fake(key: str) -> int:
        if key.startswith("x"):
            return 1
        if key in (FALLBACK_KEY, "fallback-twin.example.com"):
            return 2
        return hash(key) | 1 << 40

    monkeypatch.setattr(scopes, "key_hash", fake)


@pytest.mark.usefixtures("colliding")
def test_the_first_host_keeps_its_hash_and_the_next_gets_it_when_it_goes() -> None:
    hashes = KeyHashes()
    assert hashes.claim("x1.example.com")
    assert not hashes.claim("x2.example.com")
    assert not hashes.claim("fallback-twin.example.com")
    assert hashes.claim("x1.example.com")  # again: still its own
    assert hashes.release("x2.example.com") is None  # it held nothing
    assert not hashes.claim("x2.example.com")
    assert hashes.release("x1.example.com") == "x2.example.com"
    assert hashes.claim("x2.example.com")
    assert hashes.release("x2.example.com") is None


@pytest.mark.usefixtures("colliding")
def test_a_host_whose_key_collides_is_served_without_a_scope_until_the_other_goes() -> None:
    settings = Settings(config_dir="/nonexistent", shards=2)
    model, renderer = Model(), Renderer(settings)
    tenants = [TenantRecord("alpha", ("127.0.0.1",)), TenantRecord("beta", ("127.0.0.2",))]
    first = records.host_route("alpha", "x1", 30001)
    second = records.host_route("beta", "x2", 30002)
    files = renderer.update(model.ir, model.apply([first, second], (), tenants))
    assert files[scope_file("host/x1.example.com")]
    assert scope_file("host/x2.example.com") not in files
    tables = [r for f, rs in files.items() if f.startswith("rds/shard.") for r in rs]
    # still served, through the front table
    assert ["x2.example.com"] in [vh["domains"] for r in tables for vh in r["virtual_hosts"]]
    files = renderer.update(model.ir, model.apply([], [first.id], None))
    assert files[scope_file("host/x1.example.com")] == []
    assert files[scope_file("host/x2.example.com")]
