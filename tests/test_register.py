"""`kubelbd register` / `kubelbd unregister` (kubelbd/cli/register.py, registration.py).

The pure parts directly: the RBAC document shipped in the package is deploy's, the token
kubeconfig passes kubelbd's own kubeconfig rules, the policy flags make a Tenant spec kubelbd
reads as given, and a bad flag is a usage error before any cluster is asked. The steps run
against in-memory API servers (tests/fakekube.py): a stand-in token controller fills the
token, a stand-in kubelbd releases its finalizer. The real clusters are e2e/test_register.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import yaml
from click.testing import CliRunner
from kubefleet import certs
from kubefleet.layout import ROOT

from kubelbd.cli import main
from kubelbd.cli.register import tenant_spec_of
from kubelbd.cli.registration import (
    Registration,
    RegistrationError,
    rbac_documents,
    rbac_text,
    register,
    resource_of,
    token_kubeconfig,
    token_secret,
    unregister,
)
from kubelbd.kube import parse_kubeconfig
from kubelbd.objects import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    NAMESPACES,
    SECRETS,
    SERVICE_ACCOUNTS,
    Obj,
)
from kubelbd.records.names import CLEANUP_FINALIZER, TENANT_LABEL, TENANTS
from kubelbd.records.parse import tenant_spec
from kubelbd.records.types import TenantSpec
from kubelbd.tenant.registry import kubeconfig_of
from kubelbd.tenant.sync import Connector

from .fakekube import Connector as FakeConnector
from .fakekube import FakeKube
from .orchestration import namespace, running, until

CA_DATA = base64.b64encode(certs.new_ca("register-test-ca").cert_pem()).decode()
TOKEN = "eyJhbGciOiJSUzI1NiJ9.payload.signature"


def discard(_message: str) -> None:
    """What the command would tell the operator, where a test does not look at it."""


# ---- the pure parts ---------------------------------------------------------------------------


def test_the_packaged_rbac_is_deploys() -> None:
    assert rbac_text() == (ROOT / "deploy" / "tenant-clusterrole.yaml").read_text()


def test_the_rbac_documents_are_made_in_order_and_bind_the_service_account() -> None:
    docs = rbac_documents()
    assert [d["kind"] for d in docs] == [
        "Namespace", "ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding",
    ]  # fmt: skip
    assert [resource_of(d) for d in docs] == [
        NAMESPACES, SERVICE_ACCOUNTS, SECRETS, CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS,
    ]  # fmt: skip
    sa, secret, binding = docs[1], token_secret(docs), docs[4]
    assert (
        secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
        == (sa["metadata"]["name"])
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", **sa["metadata"]},
    ]
    assert binding["roleRef"]["name"] == docs[3]["metadata"]["name"]


def test_the_token_kubeconfig_is_one_kubelbd_takes_as_it_is() -> None:
    raw = token_kubeconfig("https://10.0.0.1:6443", CA_DATA, TOKEN)
    config = parse_kubeconfig(raw)  # kubelbd's rules for a tenant's: nothing refused
    assert config["clusters"][0]["cluster"] == {
        "server": "https://10.0.0.1:6443",
        "certificate-authority-data": CA_DATA,
    }
    assert config["users"][0]["user"] == {"token": TOKEN}
    assert parse_kubeconfig(yaml.safe_dump(config)) == config  # what kubelbd rebuilds, again


async def test_the_token_kubeconfig_makes_a_client_as_kubelbd_makes_it() -> None:
    kube = await Connector()(token_kubeconfig("https://10.0.0.1:6443", CA_DATA, TOKEN), "t")
    try:
        assert kube.host == "https://10.0.0.1:6443"
    finally:
        await kube.aclose()


def test_the_policy_flags_make_the_spec_they_say() -> None:
    spec = tenant_spec_of(
        ["**.alpha.example.com", "shop.example.com"], ["10.1.0.0/16", "fd00::/64"],
        max_routes=500, max_certificates=0, cluster_issuers=["letsencrypt"],
    )  # fmt: skip
    assert spec == {
        "allowedDomains": ["**.alpha.example.com", "shop.example.com"],
        "nodeCIDRs": ["10.1.0.0/16", "fd00::/64"],
        "limits": {"routes": 500, "certificates": 0},
        "clusterIssuers": ["letsencrypt"],
    }
    assert tenant_spec(spec) == spec
    assert tenant_spec_of() == {}  # nothing given: kubelbd's defaults, all of them


@pytest.mark.parametrize(
    ("flags", "where"),
    [
        (["--node-cidr", "10.0.0.0/33"], "--node-cidr"),
        (["--node-cidr", "10.0.0.0/8", "--node-cidr", "nodes"], "--node-cidr"),
        (["--max-routes", "-1"], "--max-routes"),
        (["--max-load-balancers", "many"], "--max-load-balancers"),
    ],
)
def test_a_bad_policy_flag_is_a_usage_error(tmp_path: Path, flags: list[str], where: str) -> None:
    admin = tmp_path / "admin.yaml"
    admin.write_text("{}")
    result = CliRunner().invoke(
        main, ["register", "alpha", "--kubeconfig", str(admin), "--mgmt-kubeconfig", "x", *flags]
    )
    assert result.exit_code == 2, result.output
    assert where in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["Alpha", "a" * 57, "al_pha", "-alpha"])
def test_a_bad_tenant_name_is_a_usage_error(tmp_path: Path, name: str) -> None:
    admin = tmp_path / "admin.yaml"
    admin.write_text("{}")
    result = CliRunner().invoke(main, ["register", name, "--kubeconfig", str(admin)])
    assert result.exit_code == 2 and "NAME" in result.output, result.output


def test_without_a_management_cluster_register_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = tmp_path / "admin.yaml"
    admin.write_text("{}")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(main, ["register", "alpha", "--kubeconfig", str(admin)])
    assert result.exit_code == 2 and "not in a cluster" in result.output, result.output


def test_a_cluster_that_cannot_be_reached_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_bytes(token_kubeconfig("https://127.0.0.1:1", CA_DATA, TOKEN))
    result = CliRunner().invoke(
        main, ["unregister", "alpha", "--mgmt-kubeconfig", str(unreachable)]
    )
    assert result.exit_code == 1 and "Error:" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ---- both clusters (in memory) ----------------------------------------------------------------


@pytest.fixture
def tenant() -> FakeKube:
    return FakeKube("alpha")


@pytest.fixture
async def mgmt() -> FakeKube:
    kube = FakeKube("mgmt")
    await kube.create(NAMESPACES, namespace("kubelb"))
    return kube


async def token_controller(tenant: FakeKube) -> None:
    """What kube-controller-manager does for a Secret of type service-account-token."""
    async for kind, obj in tenant.watch(SECRETS, "0", "kubelb-system"):
        if kind == "ADDED" and obj.get("type") == "kubernetes.io/service-account-token":
            data = {"token": base64.b64encode(TOKEN.encode()).decode(), "ca.crt": CA_DATA}
            await tenant.patch(SECRETS, obj["metadata"]["name"], {"data": data}, "kubelb-system")


def registration(
    tenant: FakeKube, spec: TenantSpec | None = None, timeout: float = 5
) -> Registration:
    return Registration("alpha", tenant.host, "kubelb", spec or {}, timeout)


async def registered(tenant: FakeKube, mgmt: FakeKube, reg: Registration) -> bytes:
    said: list[str] = []
    async with running(lambda: token_controller(tenant)):
        raw = await register(tenant, mgmt, reg, said.append, FakeConnector(tenant))
    assert said == []
    return raw


async def test_register_grants_the_role_and_registers_the_token(
    tenant: FakeKube, mgmt: FakeKube
) -> None:
    spec = tenant_spec_of(node_cidrs=["127.0.1.0/24"], max_routes=10)
    raw = await registered(tenant, mgmt, registration(tenant, spec))

    for doc in rbac_documents():
        meta = doc["metadata"]
        assert tenant.stored(resource_of(doc), meta["name"], meta.get("namespace")), meta
    secret = mgmt.stored(SECRETS, "alpha", "kubelb")
    assert secret is not None and secret["metadata"]["labels"] == {TENANT_LABEL: "alpha"}
    assert kubeconfig_of(secret) == raw  # what the registry reads
    user = parse_kubeconfig(raw)["users"][0]["user"]
    assert user == {"token": TOKEN}  # the ServiceAccount's, no admin credential
    record = mgmt.stored(TENANTS, "alpha", "tenant-alpha")
    assert record is not None and record["spec"] == spec


async def test_register_again_changes_only_what_the_flags_changed(
    tenant: FakeKube, mgmt: FakeKube
) -> None:
    spec = tenant_spec_of(node_cidrs=["127.0.1.0/24"], max_routes=10)
    await registered(tenant, mgmt, registration(tenant, spec))
    before = mgmt.stored(SECRETS, "alpha", "kubelb")
    assert before is not None

    await registered(tenant, mgmt, registration(tenant, spec))
    assert mgmt.stored(SECRETS, "alpha", "kubelb") == before  # not even a resourceVersion

    await registered(tenant, mgmt, registration(tenant, tenant_spec_of(["**.alpha.test"])))
    record = mgmt.stored(TENANTS, "alpha", "tenant-alpha")
    assert record is not None and record["spec"] == {"allowedDomains": ["**.alpha.test"]}


async def test_a_secret_of_another_tenant_is_left_alone(tenant: FakeKube, mgmt: FakeKube) -> None:
    other = {"metadata": {"name": "alpha", "labels": {TENANT_LABEL: "beta"}}}
    await mgmt.create(SECRETS, other, "kubelb")
    with pytest.raises(RegistrationError, match="does not register tenant alpha"):
        await register(tenant, mgmt, registration(tenant), discard)
    assert tenant.calls == []  # nothing was made in the tenant


async def test_a_second_secret_for_the_tenant_is_refused(tenant: FakeKube, mgmt: FakeKube) -> None:
    other = {"metadata": {"name": "alpha-old", "labels": {TENANT_LABEL: "alpha"}}}
    await mgmt.create(SECRETS, other, "kubelb")
    with pytest.raises(RegistrationError, match="already registered by Secret alpha-old"):
        await register(tenant, mgmt, registration(tenant), discard)
    assert tenant.calls == []


async def test_a_token_never_filled_is_an_error_naming_the_controller(
    tenant: FakeKube, mgmt: FakeKube
) -> None:
    with pytest.raises(RegistrationError, match="kube-controller-manager"):
        await register(tenant, mgmt, registration(tenant, timeout=0.3), discard)
    assert mgmt.stored(SECRETS, "alpha", "kubelb") is None


# ---- unregister --------------------------------------------------------------------------------


@asynccontextmanager
async def kubelbd(mgmt: FakeKube, tenant: FakeKube, seen: list[Obj | None]) -> AsyncIterator[None]:
    """kubelbd's registry, as far as unregister sees it: the finalizer on the registration
    Secret, released after its clean-up of the tenant (which needs its role there: `seen`
    gets the ClusterRoleBinding as it was at that moment)."""
    await mgmt.patch(SECRETS, "alpha", {"metadata": {"finalizers": [CLEANUP_FINALIZER]}}, "kubelb")

    async def finalize() -> None:
        async for _, obj in mgmt.watch(SECRETS, "0", "kubelb"):
            if obj["metadata"].get("deletionTimestamp"):
                seen.append(tenant.stored(CLUSTER_ROLE_BINDINGS, "kubelbd"))
                release = {"metadata": {"$deleteFromPrimitiveList/finalizers": [CLEANUP_FINALIZER]}}
                await mgmt.patch(SECRETS, "alpha", release, "kubelb", patch_type="strategic")
                return

    async with running(finalize):
        yield


async def test_unregister_waits_for_kubelbd_then_removes_its_role(
    tenant: FakeKube, mgmt: FakeKube
) -> None:
    await registered(tenant, mgmt, registration(tenant))
    seen: list[Obj | None] = []
    async with kubelbd(mgmt, tenant, seen):
        await unregister(mgmt, tenant, "alpha", "kubelb", discard)
    assert seen and seen[0] is not None  # kubelbd cleaned up with its role still granted
    assert mgmt.stored(SECRETS, "alpha", "kubelb") is None
    for doc in rbac_documents():
        meta = doc["metadata"]
        assert tenant.stored(resource_of(doc), meta["name"], meta.get("namespace")) is None


async def test_without_kubelbd_unregister_times_out_and_leaves_the_role(
    tenant: FakeKube, mgmt: FakeKube
) -> None:
    await registered(tenant, mgmt, registration(tenant))
    await mgmt.patch(SECRETS, "alpha", {"metadata": {"finalizers": [CLEANUP_FINALIZER]}}, "kubelb")
    with pytest.raises(RegistrationError, match="Is kubelbd running"):
        await unregister(mgmt, tenant, "alpha", "kubelb", discard, timeout=0.3)
    assert tenant.stored(CLUSTER_ROLE_BINDINGS, "kubelbd") is not None

    # --force: the role goes now, while the Secret waits for kubelbd.
    await unregister(mgmt, tenant, "alpha", "kubelb", discard, wait=False)
    assert tenant.stored(CLUSTER_ROLE_BINDINGS, "kubelbd") is None
    assert tenant.stored(NAMESPACES, "kubelb-system") is None
    held = mgmt.stored(SECRETS, "alpha", "kubelb")
    assert held is not None and held["metadata"].get("deletionTimestamp")


async def test_register_waits_for_an_unregister_to_finish(tenant: FakeKube, mgmt: FakeKube) -> None:
    await registered(tenant, mgmt, registration(tenant))
    seen: list[Obj | None] = []
    await mgmt.patch(SECRETS, "alpha", {"metadata": {"finalizers": [CLEANUP_FINALIZER]}}, "kubelb")
    await mgmt.delete(SECRETS, "alpha", "kubelb")  # kubelbd is not there yet
    mark, tenant_mark = len(mgmt.calls), len(tenant.calls)

    def secret_gets() -> int:
        return sum(c.method == "get" and c.plural == "secrets" for c in mgmt.calls[mark:])

    async with running(lambda: token_controller(tenant)), anyio.create_task_group() as tg:
        tg.start_soon(register, tenant, mgmt, registration(tenant), discard)
        await until(lambda: secret_gets() >= 3, "register to poll the Secret being deleted")
        # waiting, before anything is made in the tenant
        assert not any(c.method == "apply" for c in tenant.calls[tenant_mark:])
        async with kubelbd(mgmt, tenant, seen):  # kubelbd comes and finalizes
            await until(lambda: seen, "kubelbd to release the Secret")
    secret = mgmt.stored(SECRETS, "alpha", "kubelb")
    assert secret is not None and not secret["metadata"].get("deletionTimestamp")


async def test_unregister_leaves_a_secret_of_another_tenant_alone(mgmt: FakeKube) -> None:
    other = {"metadata": {"name": "alpha", "labels": {TENANT_LABEL: "beta"}}}
    await mgmt.create(SECRETS, other, "kubelb")
    with pytest.raises(RegistrationError, match="does not register tenant alpha"):
        await unregister(mgmt, None, "alpha", "kubelb", discard)
    assert mgmt.stored(SECRETS, "alpha", "kubelb") is not None
