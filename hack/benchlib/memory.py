"""hack/bench memory: what kubelbd's pure stages hold per route, offline (no fleet).

`--routes` Route records over two tenants (one host, one path each, as the convergence
bench's fill) go through kubelbd's own Model, Renderer and Encoder; Python's allocation
tracer (tracemalloc) reads what each stage keeps after a garbage collection. With
`--caches`, also what the running fleet's objects take as kubelbd's informers cache them
(listed with kubelbd's client, managedFields dropped as the informers do): every Ingress of
the tenants and every Route record of the management cluster, per object.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import tempfile
import tracemalloc
from collections.abc import Callable
from typing import Any

from kubefleet.layout import Layout

from kubelbd.envoy.publisher import Encoder
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.scopes import is_scope
from kubelbd.envoy.settings import Settings
from kubelbd.ir.http import Model
from kubelbd.kube import Kube
from kubelbd.kube.informer import _slim
from kubelbd.objects import INGRESSES
from kubelbd.records import parse
from kubelbd.records.names import ROUTES
from kubelbd.records.types import RouteRecord, TenantRecord

TENANTS = ("alpha", "beta")


def record(i: int) -> RouteRecord:
    tenant = TENANTS[i % len(TENANTS)]
    rules = [{"host": f"fill{i}.{tenant}.bench.test", "paths": [{
        "path": "/", "pathType": "Prefix",
        "backends": [{"service": f"s{i % 100}", "port": "80", "nodePort": 30000 + i % 100}],
    }]}]  # fmt: skip
    raw = {"source": {"kind": "Ingress", "namespace": "bench", "name": f"fill{i}",
                      "uid": f"uid-{i}", "generation": 1,
                      "creationTimestamp": "2026-01-01T00:00:00Z"}, "rules": rules}  # fmt: skip
    return RouteRecord(tenant, f"bench.fill{i}", parse.route_spec(raw), 1, "2026-01-01T00:00:00Z")


def held() -> float:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] / 2**20


def stage(name: str, n: int, step: Callable[[], Any]) -> Any:
    before = held()
    out = step()
    took = held() - before
    print(f"| {name} | {took:.1f} | {took * 1024 / n:.2f} |", flush=True)
    return out


def pipeline(n: int) -> None:
    tracemalloc.start()
    print(f"\n{n} routes over {len(TENANTS)} tenants, offline\n")
    print("| stage | MiB held | KiB a route |\n|---|---|---|")
    routes = stage("records (RouteRecord)", n, lambda: [record(i) for i in range(n)])
    tenants = [TenantRecord(t, ("10.0.0.1",)) for t in TENANTS]
    model = Model()
    delta = stage("model and IR", n, lambda: model.apply(routes, (), tenants))
    with tempfile.TemporaryDirectory() as tmp:
        base = held()
        renderer = Renderer(Settings(config_dir=tmp))
        files = stage("rendered (the renderer's and the files')", n,
                      lambda: renderer.update(model.ir, delta))  # fmt: skip
        encoder = Encoder()
        encoded = stage("encoded (the encoder's memo and the bytes)", n,
                        functools.partial(encode, encoder, files))  # fmt: skip
        # As the publisher keeps them: the files' objects go once encoded; the scopes' bytes
        # stay (the ADS server serves them), the files' bytes do not (they are on disk).
        del files
        scopes = {name: data for name, data in encoded.items() if is_scope(name)}
        del encoded
        kept = held() - base
        print(f"| kept once published (the renderer's, the encoder's, the scopes' bytes) "
              f"| {kept:.1f} | {kept * 1024 / n:.2f} |")  # fmt: skip
        del scopes
    tracemalloc.stop()


def encode(encoder: Encoder, files: dict[str, Any]) -> dict[str, Any]:
    """Every file and scope encoded as the publisher does (envoy/publisher.py)."""
    return {
        name: encoder.encode_scope(name, res) if is_scope(name) else encoder.encode(name, res)
        for name, res in files.items()
    }


async def caches(layout: Layout) -> None:
    tracemalloc.start()
    print("\n| cached objects | count | MiB held | KiB each |\n|---|---|---|---|")
    lists = [(INGRESSES, c.name) for c in layout.tenant_clusters] + [(ROUTES, "mgmt")]
    for resource, cluster in lists:
        kube = await Kube.from_file(layout.kubeconfig(cluster), cluster)
        try:
            before = held()
            items, _ = await kube.list(resource)
            kept = [_slim(o) for o in items]
            del items
            took = held() - before
            each = took * 1024 / max(1, len(kept))
            print(f"| {resource.plural} of {cluster} | {len(kept)} | {took:.1f} | {each:.2f} |")
            del kept
        finally:
            await kube.aclose()
    tracemalloc.stop()


def run(routes: int, layout: Layout | None) -> None:
    pipeline(routes)
    if layout is not None:
        asyncio.run(caches(layout))
