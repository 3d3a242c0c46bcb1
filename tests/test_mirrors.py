"""kubelbd.tenant.mirrors beyond the orchestration test: a slice that changes while its
Service's mirrors are being written is mirrored again, not forgotten."""

from __future__ import annotations

from typing import Any

from kubelbd.objects import Obj, Resource
from kubelbd.sources import twins
from kubelbd.tenant.mirrors import Mirrors

from .fakekube import FakeKube

TWIN = {"metadata": {"name": "kubelb-db", "namespace": "d", "uid": "u1",
                     "labels": {twins.TWIN_OF: "db"}}}  # fmt: skip


def hand(endpoints: list[str]) -> Obj:
    return {
        "metadata": {"name": "db-1", "namespace": "d", "labels": {twins.SERVICE_NAME: "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a]} for a in endpoints],
    }


class ChangingKube(FakeKube):
    """Applies as FakeKube does; during the first apply, the tenant changes its slice."""

    def __init__(self, mirrors: Any) -> None:
        super().__init__("a")
        self.mirrors = mirrors
        self.applied: list[Obj] = []

    async def apply(self, res: Resource, obj: Obj, *args: Any, **kw: Any) -> Obj:
        if not self.applied:
            self.mirrors.hand.cache["d/db-1"] = hand(["10.0.0.2"])
            self.mirrors.on_slice(hand(["10.0.0.2"]))
        self.applied.append(obj)
        return obj


async def test_a_slice_changed_while_its_mirror_is_written_is_mirrored_again() -> None:
    kube = ChangingKube(None)
    mirrors = Mirrors(kube, lambda kind, obj: None, lambda what: lambda e: None,
                      lambda ns, name: TWIN if (ns, name) == ("d", "db") else None)  # fmt: skip
    kube.mirrors = mirrors
    mirrors.hand.cache["d/db-1"] = hand(["10.0.0.1"])
    mirrors.on_slice(hand(["10.0.0.1"]))
    await mirrors.reconcile(kube)
    assert mirrors.dirty == {("d", "db")}  # changed meanwhile: to be looked at again
    await mirrors.reconcile(kube)
    assert [m["endpoints"] for m in kube.applied] == [
        [{"addresses": ["10.0.0.1"]}],
        [{"addresses": ["10.0.0.2"]}],
    ]
