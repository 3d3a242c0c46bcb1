"""Which watch events may change what kubelbd makes of a tenant's object.

Not one where only the status changed. Our own status writes come back as events (a
Gateway's, at every route attached, would otherwise have every route of it translated again:
500 at 1,000 routes, most of kubelbd's time in a series of changes). Spec, labels and
annotations are what matter (the legacy Ingress class annotation does not bump the
generation); an object without a generation (a Service, a Secret) always counts.
"""

from __future__ import annotations

from ..objects import Obj, key


class ChangeFilter:
    """What each object was last seen as, kept as a hash (about 250 bytes less an object than
    the fields themselves: 2.5 MiB at 10,000 routes). A collision (64 bits, salted per
    process) could only hide a change to that same object from its own tenant."""

    def __init__(self) -> None:
        #: (what it is seen as, namespace/name) -> fingerprint
        self._seen: dict[tuple[str, str], int] = {}

    def changed(self, seen_as: str, kind: str, obj: Obj) -> bool:
        """Whether event `kind` (ADDED, MODIFIED, DELETED) of `obj` may change what is made
        of it. `seen_as` keeps apart the uses of one object (a source's own, and as what
        other sources depend on)."""
        oid = (seen_as, key(obj))
        meta = obj["metadata"]
        fingerprint = hash((
            meta.get("uid"), meta.get("generation"),
            str(meta.get("annotations")), str(meta.get("labels")),
        ))  # fmt: skip
        if kind == "DELETED":
            self._seen.pop(oid, None)
        elif meta.get("generation") is not None:
            if self._seen.get(oid) == fingerprint:
                return False
            self._seen[oid] = fingerprint
        return True
