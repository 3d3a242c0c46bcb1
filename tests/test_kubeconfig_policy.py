"""Registration kubeconfigs are the tenant's (kubelbd.kube.kubeconfig): by default none may
run a plugin, read a file on kubelbd's host or name a proxy; --trust-kubeconfigs allows it;
whatever their shape, they end in KubeconfigError, never another exception.

The exec plugin here is real: a script that leaves a marker file, which must not exist
unless the kubeconfigs are trusted."""

from __future__ import annotations

import base64
import copy
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kubefleet import certs

from kubelbd.app import tenant_settings
from kubelbd.config import parse_args
from kubelbd.hub import Settling, StatusBoard
from kubelbd.kube import Kube, KubeconfigError, KubeconfigRefused, parse_kubeconfig
from kubelbd.kube.kubeconfig import MAX_KUBECONFIG_BYTES, MAX_KUBECONFIG_EVENTS
from kubelbd.objects import NAMESPACES, SECRETS, Obj
from kubelbd.records.names import TENANT_LABEL, TENANTS
from kubelbd.tenant.registry import Registry
from kubelbd.tenant.sync import Connect, Connector, TenantSettings, TenantSync

from .fakekube import FakeKube
from .orchestration import RecordingSink, condition_of, namespace, running, until

CA_DATA = base64.b64encode(certs.new_ca("policy-test-ca").cert_pem()).decode()


def doc(cluster: Obj | None = None, user: Obj | None = None) -> Obj:
    """A kubeconfig that is fine as it is; `cluster` and `user` add to its entries."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tenant-cluster",
                "cluster": {"server": "https://127.0.0.1:1", "certificate-authority-data": CA_DATA}
                | (cluster or {}),
            }
        ],
        "users": [{"name": "tenant-user", "user": {"token": "t0ken"} | (user or {})}],
        "contexts": [
            {"name": "ctx", "context": {"cluster": "tenant-cluster", "user": "tenant-user"}}
        ],
        "current-context": "ctx",
    }


def dump(config: Any) -> bytes:
    return yaml.safe_dump(config).encode()


def exec_plugin(tmp_path: Path) -> tuple[Obj, Path]:
    """An exec section whose command leaves `marker` and hands back a token."""
    marker = tmp_path / "exec-plugin-ran"
    script = tmp_path / "plugin.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, pathlib
        pathlib.Path({str(marker)!r}).write_text("ran")
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1",
                          "kind": "ExecCredential", "status": {{"token": "from-plugin"}}}}))
        """)
    )
    section = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": sys.executable,
        "args": [str(script)],
    }
    return section, marker


async def headers_of(kube: Kube) -> dict[str, str]:
    return await kube._transport.headers()


# ---- what is refused ----------------------------------------------------------------------------

OIDC = {"name": "oidc", "config": {"client-id": "x", "idp-issuer-url": "http://10.0.0.1/"}}
REFUSED: list[tuple[str, Obj, str]] = [
    ("user", {"exec": {"apiVersion": "v1", "command": "/bin/sh"}}, "exec"),
    ("user", {"auth-provider": OIDC}, "auth-provider"),
    ("user", {"auth-provider": {"name": "gcp"}}, "auth-provider"),
    ("user", {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}, "tokenFile"),
    ("user", {"client-certificate": "/etc/kubelbd/tls.crt"}, "client-certificate"),
    ("user", {"client-key": "/etc/kubelbd/tls.key"}, "client-key"),
    # A file named next to the inline data is refused too: the rule is simple.
    ("user", {"client-key": "/etc/kubelbd/tls.key", "client-key-data": "eA=="}, "client-key"),
    ("cluster", {"certificate-authority": "/etc/ssl/ca.pem"}, "certificate-authority"),
    ("cluster", {"proxy-url": "http://10.96.0.1:3128"}, "proxy-url"),
]


@pytest.mark.parametrize(("section", "extra", "key"), REFUSED)
def test_plugins_files_and_proxies_are_refused_unless_trusted(
    section: str, extra: Obj, key: str
) -> None:
    config = doc(**{section: extra})
    with pytest.raises(KubeconfigRefused) as refused:
        parse_kubeconfig(dump(config))
    message = str(refused.value)
    assert f"{section} 'tenant-{section}': {key} (" in message
    assert "--trust-kubeconfigs" in message
    # Trusted, it goes to the loader as written.
    assert parse_kubeconfig(dump(config), trusted=True) == config


def test_everything_refused_is_named_at_once() -> None:
    config = doc(cluster={"proxy-url": "http://p:1"}, user={"exec": {}, "tokenFile": "/t"})
    with pytest.raises(KubeconfigRefused) as refused:
        parse_kubeconfig(dump(config))
    for what in ("cluster 'tenant-cluster': proxy-url", "user 'tenant-user': exec", "tokenFile"):
        assert what in str(refused.value)


async def test_an_exec_plugin_runs_only_when_the_kubeconfigs_are_trusted(tmp_path: Path) -> None:
    section, marker = exec_plugin(tmp_path)
    raw = dump(doc(user={"exec": section}))
    with pytest.raises(KubeconfigRefused, match="exec"):
        await Connector()(raw, "a")
    assert not marker.exists()
    kube = await Connector(trusted=True)(raw, "a")
    try:
        assert marker.exists(), "the trusted plugin did not run: the test proves nothing"
        assert await headers_of(kube) == {"Authorization": "Bearer from-plugin"}
    finally:
        await kube.aclose()


async def test_a_token_file_is_read_only_when_trusted(tmp_path: Path) -> None:
    """What a tokenFile would do: send a file of kubelbd's (its own token) to the server."""
    own = tmp_path / "token"
    own.write_text("kubelbd-own-token")
    config = doc(user={"tokenFile": str(own)})
    del config["users"][0]["user"]["token"]
    with pytest.raises(KubeconfigRefused, match="tokenFile"):
        await Connector()(dump(config), "a")
    kube = await Connector(trusted=True)(dump(config), "a")
    try:
        assert await headers_of(kube) == {"Authorization": "Bearer kubelbd-own-token"}
    finally:
        await kube.aclose()


async def test_only_the_current_context_reaches_the_loader(tmp_path: Path) -> None:
    """Entries the current context does not use are never handed on, nor are keys kubelbd
    does not know: the loader cannot act on what it never sees."""
    section, marker = exec_plugin(tmp_path)
    config = doc(user={"as": "system:admin", "extensions": [{"name": "x"}]})
    config["users"].append({"name": "other", "user": {"exec": section}})
    proxied = {"server": "https://x", "proxy-url": "http://p"}
    config["clusters"].append({"name": "other", "cluster": proxied})
    config["contexts"].append({"name": "other", "context": {"cluster": "other", "user": "other"}})
    checked = parse_kubeconfig(dump(config))
    assert [u["user"] for u in checked["users"]] == [{"token": "t0ken"}]
    assert [c["cluster"]["server"] for c in checked["clusters"]] == ["https://127.0.0.1:1"]
    kube = await Connector()(dump(config), "a")
    try:
        assert await headers_of(kube) == {"Authorization": "Bearer t0ken"}
    finally:
        await kube.aclose()
    assert not marker.exists()
    # Current, the same plugin is refused.
    config["current-context"] = "other"
    with pytest.raises(KubeconfigRefused, match="exec"):
        parse_kubeconfig(dump(config))


def test_skipping_tls_verification_is_allowed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = doc(cluster={"insecure-skip-tls-verify": True})
    with caplog.at_level(logging.WARNING, logger="kubelbd.kube.kubeconfig"):
        checked = parse_kubeconfig(dump(config), name="tenant a")
    assert checked["clusters"][0]["cluster"]["insecure-skip-tls-verify"] is True
    [line] = [r.getMessage() for r in caplog.records]
    assert "tenant a" in line and "insecure-skip-tls-verify" in line


# ---- shapes: KubeconfigError and nothing else --------------------------------------------------


def edited(path: tuple[str | int, ...], value: Any) -> bytes:
    config = doc()
    target: Any = config
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return dump(config)


MALFORMED: list[tuple[str, bytes]] = [
    ("a users entry that is a string", edited(("users",), ["tenant-user"])),
    ("a user that is a list", edited(("users", 0, "user"), [1, 2])),
    ("an entry whose name is a number", edited(("clusters", 0, "name"), 7)),
    ("a server that is a number", edited(("clusters", 0, "cluster", "server"), 6443)),
    ("an ftp server", edited(("clusters", 0, "cluster", "server"), "ftp://x")),
    ("a unix socket", edited(("clusters", 0, "cluster", "server"), "unix:///run/k.sock")),
    ("an upper-case scheme", edited(("clusters", 0, "cluster", "server"), "HTTPS://x")),
    ("a server without a host", edited(("clusters", 0, "cluster", "server"), "https://")),
    ("credentials in the URL", edited(("clusters", 0, "cluster", "server"), "https://u:p@x")),
    ("a line break in the URL", edited(("clusters", 0, "cluster", "server"), "https://x\nH: v")),
    ("a bad port", edited(("clusters", 0, "cluster", "server"), "https://x:99999")),
    ("a bad IPv6 address", edited(("clusters", 0, "cluster", "server"), "https://[::1")),
    ("a token with a line break", edited(("users", 0, "user", "token"), "a\nX-Evil: 1")),
    ("a token that is a number", edited(("users", 0, "user", "token"), 12345)),
    (
        "skip-verify as a string",
        edited(("clusters", 0, "cluster", "insecure-skip-tls-verify"), "false"),
    ),
    ("a server name with a space", edited(("clusters", 0, "cluster", "tls-server-name"), "a b")),
    (
        "CA data that is a list",
        edited(("clusters", 0, "cluster", "certificate-authority-data"), [1]),
    ),
    (
        "CA data not base64",
        edited(("clusters", 0, "cluster", "certificate-authority-data"), "!!"),
    ),
    (
        "a key that is no key",
        edited(
            ("users", 0, "user"), {"client-certificate-data": CA_DATA, "client-key-data": "eA=="}
        ),
    ),
    ("no current context", edited(("current-context",), None)),
    ("a current context not there", edited(("current-context",), "nope")),
    ("a context that is a string", edited(("contexts", 0, "context"), "tenant-cluster")),
    ("a context naming a list", edited(("contexts", 0, "context", "cluster"), ["a"])),
    ("a user not there", edited(("contexts", 0, "context", "user"), "nobody")),
    ("two clusters of one name", edited(("clusters",), doc()["clusters"] * 2)),
    ("clusters that are a mapping", edited(("clusters",), {"tenant-cluster": {}})),
    ("not YAML", b"this: [is not: a kubeconfig"),
    ("a YAML list", b"[1, 2]"),
    ("a YAML tag", b"!!python/object:os.system {}"),
    ("not text", b"\xff\xfe\x00\x00garbage"),
    ("nested beyond recursion", b"a: " + b"[" * 5_000),
    ("more than the size cap", b"# " + b"x" * MAX_KUBECONFIG_BYTES),
    ("more nodes than the cap", b"a: [" + b"1," * MAX_KUBECONFIG_EVENTS + b"1]"),
]


@pytest.mark.parametrize(("what", "raw"), MALFORMED, ids=[w for w, _ in MALFORMED])
@pytest.mark.parametrize("trusted", [False, True], ids=["default", "trusted"])
async def test_a_malformed_kubeconfig_is_a_kubeconfig_error(
    what: str, raw: bytes, trusted: bool
) -> None:
    with pytest.raises(KubeconfigError):
        kube = await Connector(trusted)(raw, "t")
        await kube.aclose()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
PLACES: list[tuple[str | int, ...]] = [
    ("clusters",), ("clusters", 0), ("clusters", 0, "name"), ("clusters", 0, "cluster"),
    ("clusters", 0, "cluster", "server"), ("clusters", 0, "cluster", "tls-server-name"),
    ("users",), ("users", 0), ("users", 0, "user"), ("users", 0, "user", "token"),
    ("users", 0, "user", "username"), ("contexts",), ("contexts", 0, "context"),
    ("contexts", 0, "context", "user"), ("current-context",),
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(place=st.sampled_from(PLACES), value=JSONISH, trusted=st.booleans())
def test_any_value_anywhere_is_accepted_or_a_kubeconfig_error(
    place: tuple[str | int, ...], value: Any, trusted: bool
) -> None:
    try:
        checked = parse_kubeconfig(edited(place, copy.deepcopy(value)), trusted=trusted)
    except KubeconfigError:
        return
    assert isinstance(checked, dict)


def test_text_that_is_not_unicode_is_a_kubeconfig_error() -> None:
    with pytest.raises(KubeconfigError, match="not text"):
        parse_kubeconfig("current-context: \ud800")


# ---- in the tenant task, and the flag's way there ------------------------------------------------


async def test_a_refused_kubeconfig_is_the_tenants_condition_and_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    section, marker = exec_plugin(tmp_path)
    mgmt = FakeKube("mgmt")
    sync = TenantSync(
        "a", dump(doc(user={"exec": section})), mgmt, RecordingSink(), StatusBoard(), Settling(),
        TenantSettings(),
    )  # fmt: skip

    def connected(field: str) -> Any:
        return condition_of(mgmt, TENANTS, "a", "tenant-a", "Connected", field)

    with caplog.at_level(logging.ERROR, logger="kubelbd.tenant.sync"):
        async with running(sync.run):
            await until(lambda: connected("reason") == "KubeconfigRefused", "KubeconfigRefused")
    assert connected("status") == "False" and "exec" in connected("message")
    assert any(r.getMessage().startswith("tenant a: kubeconfig refused") for r in caplog.records)
    assert not marker.exists()


class CapturingSyncs:
    """Stands in for the TenantSync class: keeps the Connect each tenant's task is given."""

    def __init__(self) -> None:
        self.connects: dict[str, Connect] = {}

    def __call__(self, name: str, kubeconfig: bytes, *rest: Any) -> CapturingSyncs:
        self.connects[name] = rest[-1]  # TenantSync's last argument: connect
        return self

    def set_record(self, tenant: Any) -> None:
        """The Tenant record (policy): not what these tests look at."""

    def node_addresses_taken(self, taken: dict[str, str]) -> None:
        """Nor this."""

    async def run(self) -> None:
        await anyio.sleep_forever()


@pytest.mark.parametrize("flag", [[], ["--trust-kubeconfigs"]], ids=["default", "trusted"])
async def test_the_flag_reaches_the_tenant_task(flag: list[str], tmp_path: Path) -> None:
    """--trust-kubeconfigs → Config → TenantSettings → the registry → each tenant's Connect."""
    trusted = bool(flag)
    cfg = parse_args(flag)
    assert cfg.trust_kubeconfigs is trusted
    mgmt, syncs = FakeKube("mgmt"), CapturingSyncs()
    await mgmt.create(NAMESPACES, namespace("kubelb"))
    section, marker = exec_plugin(tmp_path)
    raw = dump(doc(user={"exec": section}))
    await mgmt.create(
        SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "a", "namespace": "kubelb", "labels": {TENANT_LABEL: "a"}},
            "data": {"kubeconfig": base64.b64encode(raw).decode()},
        },
    )
    registry = Registry(
        mgmt, "kubelb", tenant_settings(cfg), RecordingSink(), StatusBoard(), Settling(),
        sync=cast(type[TenantSync], syncs),
    )  # fmt: skip
    async with running(registry.run):
        await until(lambda: "a" in syncs.connects, "tenant a started")
    connect = syncs.connects["a"]
    assert connect == Connector(trusted)
    if not trusted:
        with pytest.raises(KubeconfigRefused):
            await connect(raw, "a")
        assert not marker.exists()
        return
    kube = await connect(raw, "a")
    await kube.aclose()
    assert marker.exists()
