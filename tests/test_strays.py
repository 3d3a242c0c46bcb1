"""Records and certificate Secrets count only in the namespace kubelbd made for the tenant
they name (records.names.tenant_of): the data plane ignores the rest with one warning per
object (dataplane/strays.py); the tenant side neither keeps nor deletes them.

Anyone who may write into some namespace of the management cluster can set a label; without
this, a Route labelled `kubelb.io/tenant: a` in `default` would be served as tenant a's, a
Tenant record there would move a's backends, and a Secret there would be served for a's hosts.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from kubelbd.dataplane.strays import Strays
from kubelbd.hub import Settling, StatusBoard
from kubelbd.objects import NAMESPACES, SECRETS, Obj
from kubelbd.records.names import (
    LOADBALANCERS,
    ROUTES,
    TENANTS,
    TLS_LABEL,
    TLS_SOURCE_LABEL,
    labels,
    misplaced,
    tenant_of,
)
from kubelbd.records.objects import record_object, tenant_object
from kubelbd.tenant import copies as copies_module
from kubelbd.tenant.copies import SecretCopies
from kubelbd.tenant.registry import Registry
from kubelbd.tenant.sync import TenantSettings, TenantSync

from .fakekube import FakeKube
from .orchestration import RecordingSink, running, until
from .test_orchestration_dataplane import (
    dataplane,
    files_mentioning,
    lb_spec,
    management,
    programmed,
    route_spec,
)
from .test_orchestration_registry import Stubs


def obj(namespace: str, tenant: str | None, name: str = "x") -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": {}}
    if tenant is not None:
        meta["labels"] = labels(tenant)
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("namespace", "label", "tenant"),
    [
        ("tenant-a", "a", "a"),
        ("tenant-a", None, "a"),  # the namespace says whose it is
        ("default", "a", None),
        ("tenant-b", "a", None),  # in b's namespace, speaking for a
        ("tenant-", None, None),
        ("kube-system", None, None),
    ],
)
def test_the_namespace_decides_and_the_label_must_agree(
    namespace: str, label: str | None, tenant: str | None
) -> None:
    o = obj(namespace, label)
    assert tenant_of(o) == tenant
    assert (misplaced(o) is None) == (tenant is not None)


def test_a_stray_is_named_why() -> None:
    assert misplaced(obj("tenant-b", "a")) == (
        "labelled kubelb.io/tenant='a' but in namespace 'tenant-b', not 'tenant-a'"
    )
    assert "'default' is not a tenant's" in (misplaced(obj("default", None)) or "")


def test_strays_are_ignored_and_logged_once_per_object_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, str]] = []
    on_event = Strays().guard("Route", lambda kind, o: seen.append((kind, o["metadata"]["name"])))
    with caplog.at_level(logging.WARNING, logger="kubelbd.dataplane.strays"):
        on_event("ADDED", obj("tenant-a", "a", "ours"))
        for kind in ("ADDED", "MODIFIED", "MODIFIED"):
            on_event(kind, obj("default", "a", "stray"))
        on_event("MODIFIED", obj("default", "b", "stray"))  # another reason: said again
        on_event("DELETED", obj("default", "b", "stray"))
        on_event("ADDED", obj("default", "b", "stray"))  # made anew: a new object
    assert seen == [("ADDED", "ours")]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Route default/stray ignored: labelled kubelb.io/tenant='a' but in namespace "
        "'default', not 'tenant-a'",
        "Route default/stray ignored: labelled kubelb.io/tenant='b' but in namespace "
        "'default', not 'tenant-b'",
        "Route default/stray ignored: labelled kubelb.io/tenant='b' but in namespace "
        "'default', not 'tenant-b'",
    ]


def elsewhere(record: Obj, namespace: str) -> Obj:
    record["metadata"]["namespace"] = namespace
    return record


def tls_secret(namespace: str, name: str, tenant: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(tenant) | {TLS_LABEL: "true", TLS_SOURCE_LABEL: "tenant"},
        },
        "data": {"tls.crt": base64.b64encode(b"crt").decode(), "tls.key": ""},
    }


async def test_the_data_plane_serves_only_records_in_their_tenants_namespace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mgmt = await management()  # tenant a, node 10.0.0.1
    for ns in ("default", "tenant-b"):
        await mgmt.create(NAMESPACES, {"metadata": {"name": ns}})
    await mgmt.create(ROUTES, record_object("Route", "a", "default.shop", route_spec()))
    # Strays, each labelled for tenant a: a Route for a host of its own, a Tenant record with
    # other node addresses, a LoadBalancer, and a certificate for one of a's Secret names.
    evil = route_spec(host="evil.example.com")
    for ns, name in (("default", "default.evil"), ("tenant-b", "b.evil")):
        await mgmt.create(ROUTES, elsewhere(record_object("Route", "a", name, evil), ns))
    await mgmt.create(
        TENANTS, elsewhere(tenant_object("a", {"nodeAddresses": ["10.6.6.6"]}), "default")
    )
    lb = record_object("LoadBalancer", "a", "default.db", lb_spec("db", "2026-01-01T00:00:00Z"))
    await mgmt.create(LOADBALANCERS, elsewhere(lb, "default"))
    await mgmt.create(SECRETS, tls_secret("default", "default.shop-tls", "a"))
    await mgmt.create(SECRETS, tls_secret("tenant-a", "default.real-tls", "a"))

    dp = dataplane(mgmt, tmp_path)
    with caplog.at_level(logging.WARNING, logger="kubelbd.dataplane.strays"):
        async with running(dp.run):
            await until(lambda: programmed(mgmt) == "True", "a's own route Programmed")
            await until(lambda: "a/default.real-tls" in dp.tls.certificates, "a's certificate")
            # A stray's change comes as a watch event: ignored again, not logged again.
            stray = mgmt.stored(ROUTES, "default.evil", "default")
            assert stray is not None
            stray["spec"]["rules"][0]["host"] = "evil2.example.com"
            await mgmt.replace(ROUTES, stray)
            late = record_object("Route", "a", "default.late", route_spec("late.example.com"))
            await mgmt.create(ROUTES, late)
            await until(lambda: files_mentioning(tmp_path, "late.example.com"), "late route")

    assert not files_mentioning(tmp_path, "evil")
    assert not files_mentioning(tmp_path, "10.6.6.6")
    assert files_mentioning(tmp_path, "10.0.0.1")
    assert list(dp.tls.certificates) == ["a/default.real-tls"]
    assert dp.l4.records == {}
    untouched = mgmt.stored(ROUTES, "default.evil", "default")
    assert untouched is not None and "status" not in untouched
    lines = [r.getMessage() for r in caplog.records]
    for what in (
        "Route default/default.evil",
        "Route tenant-b/b.evil",
        "Tenant default/a",
        "LoadBalancer default/default.db",
        "Secret default/default.shop-tls",
    ):
        assert sum(line.startswith(f"{what} ignored") for line in lines) == 1, (what, lines)
    assert len(lines) == 5


async def test_the_tenant_side_keeps_and_deletes_only_its_own_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(copies_module, "COPY_GRACE", 0.0)  # ownership here, not timing
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, {"metadata": {"name": "tenant-a"}})
    await mgmt.create(SECRETS, tls_secret("tenant-a", "default.old", "a"))
    # In a's namespace but labelled for b: not a's copy, so not a's to delete.
    await mgmt.create(SECRETS, tls_secret("tenant-a", "default.bs", "b"))
    copies = SecretCopies("a", mgmt)
    await copies.load()
    assert list(copies.copies) == ["default.old"]
    await copies.reconcile({})  # nothing referenced: a's own copy goes
    assert mgmt.stored(SECRETS, "default.old", "tenant-a") is None
    assert mgmt.stored(SECRETS, "default.bs", "tenant-a") is not None


async def test_a_copy_nothing_names_goes_after_a_grace_and_a_deleted_secrets_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Ingress moves to another Secret: the old copy stays COPY_GRACE (its Route record
    may still be on its way to a replica serving from the records), then goes without any
    other change to wake the tenant. A tenant Secret deleted while named: its copy goes at
    once (the tenant meant it to)."""
    monkeypatch.setattr(copies_module, "COPY_GRACE", 0.3)
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, {"metadata": {"name": "tenant-a"}})
    copies = SecretCopies("a", mgmt)
    await copies.load()
    tenant_secrets = {
        f"default/{n}": tls_secret("default", n, "a") for n in ("old", "new", "other")
    }
    copies.uses("Ingress/default/web", frozenset({("default", "old")}))
    copies.uses("Ingress/default/api", frozenset({("default", "other")}))
    await copies.reconcile(tenant_secrets)
    assert mgmt.stored(SECRETS, "default.old", "tenant-a") is not None
    woken = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(copies.run, woken.set)
        copies.uses("Ingress/default/web", frozenset({("default", "new")}))
        await copies.reconcile(tenant_secrets)
        assert mgmt.stored(SECRETS, "default.new", "tenant-a") is not None
        assert mgmt.stored(SECRETS, "default.old", "tenant-a") is not None  # its grace
        del tenant_secrets["default/other"]  # deleted by the tenant while named
        copies.on_secret({"metadata": {"namespace": "default", "name": "other"}})
        await copies.reconcile(tenant_secrets)
        assert mgmt.stored(SECRETS, "default.other", "tenant-a") is None
        assert mgmt.stored(SECRETS, "default.old", "tenant-a") is not None
        with anyio.fail_after(5):
            await woken.wait()  # the grace ran out: the tenant is woken
        await copies.reconcile(tenant_secrets)
        assert mgmt.stored(SECRETS, "default.old", "tenant-a") is None
        assert mgmt.stored(SECRETS, "default.new", "tenant-a") is not None
        tg.cancel_scope.cancel()


def namespace_obj(name: str, tenant: str | None = None) -> Any:
    return {"metadata": {"name": name, "labels": labels(tenant) if tenant else {}}}


async def test_a_namespace_labelled_for_a_tenant_does_not_get_another_deleted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The registry removes the namespaces of tenants no longer registered: by name, from
    the label of a namespace it made, never from the label of any namespace."""
    mgmt = FakeKube("mgmt")
    await mgmt.create(NAMESPACES, namespace_obj("kubelb"))
    await mgmt.create(NAMESPACES, namespace_obj("tenant-b"))  # someone's, not kubelbd's
    await mgmt.create(NAMESPACES, namespace_obj("lure", "b"))
    await mgmt.create(NAMESPACES, namespace_obj("tenant-gone", "gone"))  # a real orphan
    registry = Registry(
        mgmt, "kubelb", TenantSettings(), RecordingSink(), StatusBoard(), Settling(),
        sync=cast(type[TenantSync], Stubs()),
    )  # fmt: skip

    def warned() -> bool:
        return any(r.getMessage().startswith("namespace lure ignored") for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="kubelbd.tenant.registry"):
        async with running(registry.run):
            await until(lambda: mgmt.stored(NAMESPACES, "tenant-gone") is None, "orphan gone")
            await until(warned, "the lure named")
    assert mgmt.stored(NAMESPACES, "tenant-b") is not None
