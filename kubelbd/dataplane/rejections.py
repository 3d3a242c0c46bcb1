"""Envoy's configuration rejections, copied into kubelbd_envoy_update_rejected_total.

Envoy counts every update it rejects (`update_rejected`, per listener, cluster, route table
and secret subscription), but reading those counters walks all of Envoy's counters on its
main thread, the thread that applies configuration. So they are read seldom, and only while
there is something to reject: while kubelbd published within the last two intervals (the
second read catches a rejection that came after the first), and until Envoy first answers.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio

from .. import metrics
from ..envoy.admin import EnvoyAdmin

INTERVAL = 30.0


async def copy_rejections(
    admin: EnvoyAdmin, published: Mapping[str, str], interval: float = INTERVAL
) -> None:
    """Read Envoy's rejection counters every `interval` while files change (`published`:
    file -> version, as the publisher keeps it), into kubelbd's metrics."""
    seen: dict[str, str] | None = None
    quiet = 0  # intervals since the files last changed
    while True:
        current = dict(published)
        quiet = quiet + 1 if current == seen else 0
        seen = current
        if quiet < 2:
            counts = await admin.rejections()
            if counts is None:
                quiet = 0  # Envoy did not answer: ask again next time
            else:
                metrics.envoy_rejections(counts)
        await anyio.sleep(interval)
