"""The tenant loop's change filter: which watch events are worth translating an object again."""

from __future__ import annotations

from typing import Any

from kubelbd.tenant.changes import ChangeFilter


def obj(generation: int | None = 1, status: str = "", **meta: Any) -> dict[str, Any]:
    metadata = {"namespace": "default", "name": "web", "uid": "u1", **meta}
    if generation is not None:
        metadata["generation"] = generation
    return {"metadata": metadata, "spec": {}, "status": {"note": status}}


def test_a_status_only_change_is_not_one() -> None:
    f = ChangeFilter()
    assert f.changed("Ingress", "ADDED", obj())
    assert not f.changed("Ingress", "MODIFIED", obj(status="our own write, back"))


def test_spec_labels_annotations_and_a_new_uid_are() -> None:
    f = ChangeFilter()
    f.changed("Ingress", "ADDED", obj())
    assert f.changed("Ingress", "MODIFIED", obj(generation=2))
    # The legacy class annotation does not bump the generation.
    assert f.changed("Ingress", "MODIFIED", obj(generation=2, annotations={"a": "b"}))
    assert f.changed(
        "Ingress", "MODIFIED", obj(generation=2, annotations={"a": "b"}, labels={"x": "y"})
    )
    assert f.changed(
        "Ingress",
        "MODIFIED",
        obj(generation=2, annotations={"a": "b"}, labels={"x": "y"}, uid="u2"),
    )
    assert not f.changed(
        "Ingress",
        "MODIFIED",
        obj(generation=2, annotations={"a": "b"}, labels={"x": "y"}, uid="u2"),
    )


def test_an_object_without_a_generation_always_counts() -> None:
    f = ChangeFilter()
    assert f.changed("used: v1/services", "ADDED", obj(generation=None))
    assert f.changed("used: v1/services", "MODIFIED", obj(generation=None))


def test_deleted_and_back_the_same_counts_again() -> None:
    f = ChangeFilter()
    f.changed("Ingress", "ADDED", obj())
    assert f.changed("Ingress", "DELETED", obj())
    assert f.changed("Ingress", "ADDED", obj())


def test_each_use_of_an_object_is_its_own() -> None:
    """One object seen by its source and as what another source depends on: the first
    sighting by one does not hide it from the other."""
    f = ChangeFilter()
    assert f.changed("Gateway", "ADDED", obj())
    assert f.changed("used: gateway.networking.k8s.io/v1/gateways", "ADDED", obj())
    assert not f.changed("Gateway", "MODIFIED", obj(status="programmed"))
