"""The FakeKube the orchestration tests run on behaves, where kubelbd relies on it, like an
API server (e2e/ checks kubelbd against real ones)."""

from __future__ import annotations

import math
from contextlib import aclosing

import anyio
import pytest

from kubelbd.kube import ApiError
from kubelbd.objects import INGRESSES, NAMESPACES, SECRETS, SERVICES, Obj
from kubelbd.records.names import LOADBALANCERS

from .fakekube import FakeKube
from .orchestration import ingress, namespace, service, until


async def cluster() -> FakeKube:
    kube = FakeKube("t")
    await kube.create(NAMESPACES, namespace("default"))
    return kube


async def test_versions_generation_and_the_errors_of_a_server() -> None:
    kube = await cluster()
    with pytest.raises(ApiError) as e:
        await kube.create(INGRESSES, ingress("a", "a.example.com", "web", ns="nowhere"))
    assert e.value.not_found
    created = await kube.create(INGRESSES, ingress("a", "a.example.com", "web"))
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    with pytest.raises(ApiError) as e:
        await kube.create(INGRESSES, ingress("a", "a.example.com", "web"))
    assert e.value.conflict
    labelled = await kube.patch(INGRESSES, "a", {"metadata": {"labels": {"x": "y"}}}, "default")
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )
    status = {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}
    written = await kube.patch(INGRESSES, "a", status, "default", subresource="status")
    assert written["metadata"]["generation"] == 1 and written["status"] == status["status"]
    changed = await kube.patch(INGRESSES, "a", {"spec": {"rules": []}}, "default")
    assert changed["metadata"]["generation"] == 2 and changed["status"] == status["status"]
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    with pytest.raises(ApiError) as e:
        await kube.patch(INGRESSES, "a", stale, "default")
    assert e.value.conflict
    # Unchanged: no new version, no event.
    before = len(kube.changes())
    again = await kube.patch(INGRESSES, "a", {"spec": {"rules": []}}, "default")
    assert again == changed and len(kube.changes()) == before
    for call in (
        kube.get(INGRESSES, "b", "default"),
        kube.delete(INGRESSES, "b", "default", missing_ok=False),
    ):
        with pytest.raises(ApiError) as e:
            await call
        assert e.value.not_found
    assert await kube.get_or_none(INGRESSES, "b", "default") is None


async def test_finalizers_owners_and_namespaces_on_delete() -> None:
    kube = await cluster()
    secret: Obj = {"metadata": {"name": "s", "namespace": "default", "finalizers": ["x/y"]}}
    await kube.create(SECRETS, secret)
    await kube.delete(SECRETS, "s", "default")
    held = kube.stored(SECRETS, "s", "default")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    remove = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x/y"]}}
    await kube.patch(SECRETS, "s", remove, "default", patch_type="strategic")
    assert kube.stored(SECRETS, "s", "default") is None
    assert [c.type for c in kube.changes(SECRETS)] == ["ADDED", "MODIFIED", "DELETED"]

    web = await kube.create(SERVICES, service("web"))
    owned = service("twin", "NodePort")
    owned["metadata"]["ownerReferences"] = [{"uid": web["metadata"]["uid"]}]
    await kube.create(SERVICES, owned)
    await kube.delete(SERVICES, "web", "default")
    assert kube.stored(SERVICES, "twin", "default") is None
    await kube.create(SERVICES, service("other"))
    await kube.delete(NAMESPACES, "default")
    assert kube.stored(SERVICES, "other", "default") is None


async def test_node_ports_are_allocated_kept_and_never_shared() -> None:
    kube = await cluster()
    lb = await kube.create(SERVICES, service("lb", "LoadBalancer"))
    port = lb["spec"]["ports"][0]["nodePort"]
    assert port in range(30000, 32768)
    replaced = service("lb", "LoadBalancer") | {"metadata": lb["metadata"]}
    again = await kube.replace(SERVICES, replaced)
    assert again["spec"]["ports"][0]["nodePort"] == port
    taken = service("np", "NodePort")
    taken["spec"]["ports"][0]["nodePort"] = port
    with pytest.raises(ApiError) as e:
        await kube.apply(SERVICES, taken)
    assert e.value.status == 422 and "already allocated" in e.value.message


async def test_status_apply_owns_keys_per_field_manager() -> None:
    kube = await cluster()
    await kube.create(NAMESPACES, namespace("t"))
    meta = {"name": "lb", "namespace": "t"}
    record = {"apiVersion": "kubelb.io/v1alpha1", "kind": "LoadBalancer", "metadata": meta}
    record["spec"] = {"ports": []}
    with pytest.raises(ApiError) as e:
        await kube.apply(LOADBALANCERS, record | {"status": {"a": 1}}, subresource="status")
    assert e.value.not_found
    await kube.apply(LOADBALANCERS, record)
    await kube.apply(LOADBALANCERS, record | {"status": {"a": 1, "b": 2}}, "status", "one")
    await kube.apply(LOADBALANCERS, record | {"status": {"c": 3}}, "status", "two")
    await kube.apply(LOADBALANCERS, record | {"status": {"b": 4}}, "status", "one")
    stored = kube.stored(LOADBALANCERS, "lb", "t")
    assert stored is not None and stored["status"] == {"b": 4, "c": 3}
    assert stored["metadata"]["generation"] == 1


async def test_selectors_watches_and_410_after_a_compaction() -> None:
    kube = await cluster()
    for name, tier in (("a", "web"), ("b", "db")):
        obj = ingress(name, f"{name}.example.com", "web")
        obj["metadata"]["labels"] = {"tier": tier}
        await kube.create(INGRESSES, obj)
    items, rv = await kube.list(INGRESSES, "default", labelSelector="tier=web")
    assert [o["metadata"]["name"] for o in items] == ["a"]
    items, _ = await kube.list(INGRESSES, labelSelector="tier,tier!=web")
    assert [o["metadata"]["name"] for o in items] == ["b"]
    items, _ = await kube.list(INGRESSES, fieldSelector="metadata.name=b")
    assert [o["metadata"]["name"] for o in items] == ["b"]

    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        async for kind, obj in kube.watch(INGRESSES, rv, "default", labelSelector="tier=web"):
            seen.append((kind, obj["metadata"]["name"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await kube.delete(INGRESSES, "b", "default")
        await kube.delete(INGRESSES, "a", "default")
        await until(lambda: seen, "a watch event")
        tg.cancel_scope.cancel()
    assert seen == [("DELETED", "a")]
    kube.compact()
    with pytest.raises(ApiError) as e:
        async for _ in kube.watch(INGRESSES, rv):
            pass
    assert e.value.gone
    # From no version: what there is first, as ADDED.
    await kube.create(INGRESSES, ingress("c", "c.example.com", "web"))
    async with aclosing(kube.watch(INGRESSES, "")) as events:
        async for kind, obj in events:
            assert (kind, obj["metadata"]["name"]) == ("ADDED", "c")
            break


async def test_injected_failures() -> None:
    kube = await cluster()
    kube.fail("get", NAMESPACES, name="default", status=0)
    with pytest.raises(ConnectionError):
        await kube.get(NAMESPACES, "default")
    assert await kube.get(NAMESPACES, "default")  # once only
    kube.fail("*", INGRESSES, status=404, times=math.inf)
    for _ in range(3):
        with pytest.raises(ApiError):
            await kube.list(INGRESSES)
    kube.heal()
    assert await kube.list(INGRESSES) == ([], str(len(kube.changes()) + 1))
    client = kube.client("other")
    await client.aclose()
    with pytest.raises(ConnectionError, match="client closed"):
        await client.get(NAMESPACES, "default")
    assert await kube.get(NAMESPACES, "default")
