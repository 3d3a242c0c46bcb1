"""When each change reached the data plane: the start of kubelbd_watch_to_applied_seconds.

A change is stamped when it reaches the data plane (a record from the tenant side or the
record watch that changes what is served); a second change of the same record before the
render keeps the first stamp, since the latency is how long the oldest waited. The render
takes the stamps, and the status reporter observes them once Envoy applied that render.
"""

from __future__ import annotations

import time

#: (record kind, when it arrived, on the monotonic clock)
Arrival = tuple[str, float]


class Arrivals:
    def __init__(self) -> None:
        self._at: dict[tuple[str, str], float] = {}

    def arrived(self, kind: str, record_id: str) -> None:
        self._at.setdefault((kind, record_id), time.monotonic())

    def take(self) -> list[Arrival]:
        """The stamps of every change since the last call (the render now taking them)."""
        at, self._at = self._at, {}
        return [(kind, t) for (kind, _), t in at.items()]
