"""A cache that keeps each object as its JSON bytes, for kinds a tenant has by the thousand.

An Ingress as parsed dicts is about 3.4 KiB (fifteen dicts and lists, each with its own hash
table), and a tenant task caches every Ingress of its tenant: 33 MiB at 10,000 routes, then the
largest single part of kubelbd's memory. As orjson's bytes it is about 600. Each object is
read back only when it is translated, its status written or its limit checked (about 3 µs
with orjson), so the cost is paid per change, not per object held. What is read back is a new
dict each time: nobody can change the cache through it, and nothing may count on two reads
being the same object.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

import orjson

from ..objects import Obj


class PackedCache(MutableMapping[str, Obj]):
    """name -> object, each object kept as orjson's bytes."""

    __slots__ = ("_packed",)

    def __init__(self, objects: Mapping[str, Obj] | None = None) -> None:
        self._packed: dict[str, bytes | Obj] = {}
        for k, obj in (objects or {}).items():
            self[k] = obj

    def __getitem__(self, k: str) -> Obj:
        packed = self._packed[k]
        if isinstance(packed, bytes):
            obj: Obj = orjson.loads(packed)
            return obj
        return packed

    def __setitem__(self, k: str, obj: Obj) -> None:
        try:
            # A copy: orjson's own bytes keep the 4 KiB buffer it wrote them into.
            self._packed[k] = bytes(memoryview(orjson.dumps(obj)))
        except orjson.JSONEncodeError:
            # Deeper than orjson writes (254 levels; it reads 1,024, as the client does):
            # no built-in kind is, but a CRD's unknown fields may be. Kept as it is.
            self._packed[k] = obj

    def __delitem__(self, k: str) -> None:
        del self._packed[k]

    def __contains__(self, k: object) -> bool:
        return k in self._packed  # without reading the object back

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)
