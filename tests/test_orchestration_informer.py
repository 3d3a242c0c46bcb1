"""kubelbd.kube.informer.Informer: list then watch into a cache, relist after 410 Gone with
the events the watch missed, errors reported and then cleared."""

from __future__ import annotations

from typing import Any

import pytest

from kubelbd.kube import ApiError
from kubelbd.kube.informer import LAST_APPLIED, Informer, identity_only
from kubelbd.kube.packed import PackedCache
from kubelbd.objects import INGRESSES, NAMESPACES, Obj
from kubelbd.retry import Backoff

from .fakekube import FakeKube
from .orchestration import ingress, namespace, running, until


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []  # (type, name)
        self.errors: list[Exception | None] = []

    def on_event(self, kind: str, obj: Obj) -> None:
        self.events.append((kind, obj["metadata"]["name"]))

    def on_error(self, error: Exception | None) -> None:
        self.errors.append(error)


async def cluster(*names: str) -> FakeKube:
    kube = FakeKube("t")
    await kube.create(NAMESPACES, namespace("default"))
    for name in names:
        obj = ingress(name, f"{name}.example.com", "web")
        obj["metadata"]["labels"] = {"team": "shop"}
        await kube.create(INGRESSES, obj)
    return kube


def informer(kube: FakeKube, seen: Seen, packed: bool = False) -> Informer:
    return Informer(
        kube,
        INGRESSES,
        seen.on_event,
        namespace="default",
        label_selector="team=shop",
        on_error=seen.on_error,
        backoff=Backoff(initial=0.01, maximum=0.01),
        packed=packed,
    )


@pytest.mark.parametrize("packed", [False, True])
async def test_list_then_watch_fills_the_cache_and_emits_events(packed: bool) -> None:
    kube, seen = await cluster("a", "b"), Seen()
    await kube.create(INGRESSES, ingress("unlabelled", "u.example.com", "web"))
    inf = informer(kube, seen, packed)
    async with running(inf.run):
        await inf.synced.wait()
        assert sorted(inf.cache) == ["default/a", "default/b"]
        assert sorted(seen.events) == [("ADDED", "a"), ("ADDED", "b")]
        new = ingress("c", "c.example.com", "web")
        new["metadata"]["labels"] = {"team": "shop"}
        await kube.create(INGRESSES, new)
        await kube.patch(INGRESSES, "a", {"spec": {"defaultBackend": None, "rules": []}}, "default")
        await kube.delete(INGRESSES, "b", "default")
        await until(lambda: len(seen.events) == 5, "three more events")
        assert seen.events[2:] == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
        assert sorted(inf.cache) == ["default/a", "default/c"]
        assert inf.cache["default/a"]["spec"]["rules"] == []
        assert inf.resource_version == kube.changes()[-1].obj["metadata"]["resourceVersion"]
        assert isinstance(inf.cache, PackedCache) == packed
    assert seen.errors == [None]


@pytest.mark.parametrize("packed", [False, True])
async def test_410_gone_relists_with_deleted_and_modified_for_what_was_missed(
    packed: bool,
) -> None:
    kube, seen = await cluster("a", "b", "keep"), Seen()
    inf = informer(kube, seen, packed)
    async with running(inf.run):
        await inf.synced.wait()
        with kube.watches_held():
            await kube.delete(INGRESSES, "a", "default")
            await kube.patch(INGRESSES, "b", {"metadata": {"annotations": {"x": "y"}}}, "default")
            new = ingress("c", "c.example.com", "web")
            new["metadata"]["labels"] = {"team": "shop"}
            await kube.create(INGRESSES, new)
            kube.compact()
        await until(lambda: len(seen.events) == 6, "the relist's events")
        assert sorted(seen.events[3:]) == [("ADDED", "c"), ("DELETED", "a"), ("MODIFIED", "b")]
        assert sorted(inf.cache) == ["default/b", "default/c", "default/keep"]
        assert inf.cache["default/b"]["metadata"]["annotations"] == {"x": "y"}
        assert [c.method for c in kube.calls if c.plural == "ingresses"].count("list") == 2
        # The watch goes on from the relist.
        await kube.delete(INGRESSES, "keep", "default")
        await until(lambda: seen.events[-1] == ("DELETED", "keep"), "a watch event")
    # A relist after 410 is routine, not an error to report.
    assert seen.errors == [None, None]


async def test_errors_are_reported_and_cleared_once_listing_works_again() -> None:
    kube, seen = await cluster("a"), Seen()
    kube.fail("list", INGRESSES, status=403)
    kube.fail("watch", INGRESSES, status=0)
    inf = informer(kube, seen)
    async with running(inf.run):
        await until(lambda: len(seen.errors) >= 4, "four reports")
        await inf.synced.wait()
        assert sorted(inf.cache) == ["default/a"]
    forbidden, cleared, refused, cleared_again = seen.errors[:4]
    assert isinstance(forbidden, ApiError) and forbidden.status == 403
    assert isinstance(refused, ConnectionError)
    assert cleared is None and cleared_again is None
    # The same object, listed twice (no watch event in between): ADDED once, no MODIFIED.
    assert seen.events == [("ADDED", "a")]


async def test_the_cache_keeps_no_managed_fields_nor_kubectls_copy() -> None:
    """No consumer reads managedFields nor the copy of the object `kubectl apply` keeps in an
    annotation, and each is about the object's size again in memory: the cache drops them
    from what a list and a watch bring, and keeps the rest (the other annotations too)."""
    fields = [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}]
    annotations = {LAST_APPLIED: '{"kind": "Ingress"}', "team/owner": "shop"}
    kube, seen = await cluster(), Seen()
    listed = ingress("a", "a.example.com", "web")
    listed["metadata"].update(
        labels={"team": "shop"}, managedFields=fields, annotations=dict(annotations)
    )
    await kube.create(INGRESSES, listed)
    inf = informer(kube, seen)
    async with running(inf.run):
        await inf.synced.wait()
        watched = ingress("b", "b.example.com", "web")
        watched["metadata"].update(
            labels={"team": "shop"}, managedFields=fields, annotations=dict(annotations)
        )
        await kube.create(INGRESSES, watched)
        await until(lambda: "default/b" in inf.cache, "b watched")
    for k in ("default/a", "default/b"):
        meta = inf.cache[k]["metadata"]
        assert "managedFields" not in meta and meta["labels"] == {"team": "shop"}
        assert meta["annotations"] == {"team/owner": "shop"}
    stored = kube.stored(INGRESSES, "a", "default")
    assert stored is not None and stored["metadata"]["managedFields"] == fields
    assert stored["metadata"]["annotations"] == annotations


@pytest.mark.parametrize("packed", [False, True])
async def test_stored_keeps_identity_in_the_cache_while_events_carry_the_whole_object(
    packed: bool,
) -> None:
    """`stored=identity_only` (the data plane's record informers: the intake keeps each record
    parsed): the handler is given every object whole, from the list and from the watch, the
    cache keeps its identity only (as bytes, `packed`), and a relist still tells what changed
    and what went."""
    kube = await cluster("a", "b")
    got: list[tuple[str, Obj]] = []
    inf = Informer(
        kube,
        INGRESSES,
        lambda kind, obj: got.append((kind, obj)),
        namespace="default",
        label_selector="team=shop",
        stored=identity_only,
        backoff=Backoff(initial=0.01, maximum=0.01),
        packed=packed,
    )
    async with running(inf.run):
        await inf.synced.wait()
        assert isinstance(inf.cache, PackedCache) is packed
        assert [(k, o["spec"]["rules"][0]["host"]) for k, o in got] == [
            ("ADDED", "a.example.com"),
            ("ADDED", "b.example.com"),
        ]
        await kube.patch(INGRESSES, "a", {"spec": {"defaultBackend": None, "rules": []}}, "default")
        await until(lambda: len(got) == 3, "the watch event")
        assert got[2][0] == "MODIFIED" and got[2][1]["spec"]["rules"] == []
        cached = inf.cache["default/a"]
        assert "spec" not in cached and cached["metadata"]["labels"] == {"team": "shop"}
        assert set(cached["metadata"]) == {
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "labels",
        }
        with kube.watches_held():
            await kube.delete(INGRESSES, "b", "default")
            await kube.patch(INGRESSES, "a", {"metadata": {"annotations": {"x": "y"}}}, "default")
            kube.compact()
        await until(lambda: len(got) == 5, "the relist's events")
        relisted = sorted((k, o["metadata"]["name"]) for k, o in got[3:])
        assert relisted == [("DELETED", "b"), ("MODIFIED", "a")]
        modified = next(o for k, o in got[3:] if k == "MODIFIED")
        assert modified["metadata"]["annotations"] == {"x": "y"} and "spec" in modified
        deleted = next(o for k, o in got[3:] if k == "DELETED")
        assert deleted["metadata"]["uid"] and deleted["metadata"]["labels"] == {"team": "shop"}
        assert sorted(inf.cache) == ["default/a"]
        assert isinstance(inf.cache, PackedCache) is packed  # a relist packs too


class Pages(FakeKube):
    """Remembers how the informer asked for its list."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.asked: list[tuple[Any, int]] = []

    async def list(self, *args: Any, keep: Any = None, page: int = 500, **params: Any) -> Any:
        self.asked.append((keep, page))
        return await super().list(*args, keep=keep, page=page, **params)


async def test_a_list_is_slimmed_page_by_page_as_it_comes() -> None:
    """managedFields go as each page of a list comes (the client's `keep`), not once the
    whole list is in: at start-up that was every record's whole, at once."""
    kube = Pages("t")
    await kube.create(NAMESPACES, namespace("default"))
    inf = Informer(kube, INGRESSES)
    async with running(inf.run):
        await inf.synced.wait()
    [(keep, page)] = kube.asked
    assert page == 500 and keep is not None
    obj = ingress("a", "a.example.com", "web")
    obj["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    assert "managedFields" not in keep(obj)["metadata"]


async def test_a_packed_list_packs_each_object_as_its_page_comes() -> None:
    """A packed informer's list keeps each object packed as it comes, and only its identity
    in the list: a relist of 10,000 Ingresses is never held as dicts at once."""
    kube = Pages("t")
    await kube.create(NAMESPACES, namespace("default"))
    inf = Informer(kube, INGRESSES, packed=True)
    async with running(inf.run):
        await inf.synced.wait()
        [(keep, _)] = kube.asked
        obj = ingress("a", "a.example.com", "web")
        obj["metadata"].update(namespace="default", uid="u1", resourceVersion="7")
        obj["metadata"]["managedFields"] = [{"manager": "kubectl"}]
        listed = keep(obj)
    assert "spec" not in listed and listed["metadata"]["resourceVersion"] == "7"
    # What a page keeps goes whole (slimmed) into the cache that list filled.
    packed = inf.cache["default/a"]
    assert packed["spec"] == obj["spec"] and "managedFields" not in packed["metadata"]


async def test_strings_every_object_repeats_are_one_string_in_the_cache() -> None:
    """Each parse of an API response makes its own strings: the apiVersion, kind, namespace
    and labels that every object of a kind repeats are shared in the cache instead."""

    def fresh(text: str) -> str:
        return "".join(list(text))  # a new string object, as each parse makes

    kube = FakeKube("t")
    await kube.create(NAMESPACES, namespace("default"))
    for name in ("a", "b"):
        obj = ingress(name, f"{name}.example.com", "web")
        obj["apiVersion"] = fresh("networking.k8s.io/v1")
        obj["metadata"]["namespace"] = fresh("default")
        obj["metadata"]["labels"] = {fresh("team"): fresh("shop")}
        await kube.create(INGRESSES, obj)
    a, b = kube.stored(INGRESSES, "a", "default"), kube.stored(INGRESSES, "b", "default")
    assert a is not None and b is not None
    assert a["metadata"]["namespace"] is not b["metadata"]["namespace"]  # as the API gave them
    inf = Informer(kube, INGRESSES)
    async with running(inf.run):
        await inf.synced.wait()
    one, two = inf.cache["default/a"], inf.cache["default/b"]
    assert one["apiVersion"] is two["apiVersion"]
    assert one["metadata"]["namespace"] is two["metadata"]["namespace"]
    [(k1, v1)], [(k2, v2)] = one["metadata"]["labels"].items(), two["metadata"]["labels"].items()
    assert k1 is k2 and v1 is v2
