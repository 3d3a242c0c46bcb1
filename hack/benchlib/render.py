"""hack/bench render: what one route change costs kubelbd's pure stages, offline (no fleet).

`--routes` Route records over two tenants (the memory bench's: one host, one path each) go
through kubelbd's own Model, Renderer and Encoder once; then `--changes` times a new route
comes (each with a host of its own, so a host scope of its own) and goes, and each coming is
timed in each stage the data plane runs before it publishes (plane.py's `_render_once`): the
model and IR (`Model.apply`), the renderer (`Renderer.update`) and the encoder (every file and
scope the change touched, as the publisher encodes them). What this does not hold: the
tenant's pass before it, the publish's write or send, and Envoy. Nor does it tune the garbage
collector as kubelbd does (collector.py): its slowest changes are collections, read the medians.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from kubelbd.envoy.publisher import Encoder
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.settings import Settings
from kubelbd.ir.http import Model
from kubelbd.records.types import TenantRecord

from .memory import TENANTS, encode, record
from .stats import percentile

STAGES = ("model and IR", "render", "encode")


def run(routes: int, changes: int) -> None:
    model = Model()
    tenants = [TenantRecord(t, ("10.0.0.1",)) for t in TENANTS]
    took: dict[str, list[float]] = {s: [] for s in STAGES}
    with tempfile.TemporaryDirectory() as tmp:
        renderer, encoder = Renderer(Settings(config_dir=tmp)), Encoder()
        delta = model.apply([record(i) for i in range(routes)], (), tenants)
        encode(encoder, renderer.update(model.ir, delta))
        for k in range(changes):
            new = record(routes + k)
            delta = _timed(took["model and IR"], partial(model.apply, [new], (), None))
            files = _timed(took["render"], partial(renderer.update, model.ir, delta))
            _timed(took["encode"], partial(encode, encoder, files))
            encode(encoder, renderer.update(model.ir, model.apply((), [new.id], None)))
    print(f"\n{routes} routes over {len(TENANTS)} tenants, {changes} new routes, offline\n")
    print("| stage | median ms | p99 ms | max ms |\n|---|---|---|---|")
    whole = [sum(parts) for parts in zip(*took.values(), strict=True)]
    for name, values in [*took.items(), ("the three", whole)]:
        ms = [v * 1000 for v in values]
        print(f"| {name} | {statistics.median(ms):.3f} | {percentile(ms, 99):.3f} "
              f"| {max(ms):.3f} |")  # fmt: skip


def _timed(into: list[float], step: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = step()
    into.append(time.perf_counter() - start)
    return out
