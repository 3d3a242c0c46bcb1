"""Clusters over the ADS stream (envoy/publisher.py, envoy/ads.py): each cluster a resource of
its own, so a backend's new cluster is one small message, not a file of every cluster that
Envoy parses again whole. The publisher's part is checked here as data; what a real Envoy
makes of it (a new backend served, clusters kept while kubelbd restarts) below, live."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson

from kubelbd.envoy import protos
from kubelbd.envoy.ads import DiscoveryServer
from kubelbd.envoy.publisher import CLUSTERS, Publisher
from kubelbd.envoy.renderer import Renderer
from kubelbd.envoy.settings import ADS_SOCKET
from kubelbd.envoy.type_urls import CLUSTER
from kubelbd.ir.http import Model
from kubelbd.records.types import RouteRecord, TenantRecord

from . import records
from .live_envoy import Stream, echo_backend, eventually, live_settings, request, running_envoy
from .test_properties import needs_envoy

Changes = Mapping[str, tuple[str, bytes] | None]


class Recorder:
    """A stream that keeps what each publish put on it, by type."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, dict[str, str | None]]] = []

    def serve(self, type_url: str, changes: Changes) -> int:
        self.puts.append((type_url, {n: c[0] if c else None for n, c in changes.items()}))
        return len(self.puts)

    def clusters(self) -> list[dict[str, str | None]]:
        return [changes for type_url, changes in self.puts if type_url == CLUSTER]


def cluster(name: str, port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": port}}}}  # fmt: skip
    return {
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


async def test_a_new_cluster_is_put_on_the_stream_alone_and_the_others_are_not_sent_again(
    tmp_path: Path,
) -> None:
    stream = Recorder()
    publisher = Publisher(tmp_path, stream=stream)
    a, b = cluster("a", 1001), cluster("b", 1002)
    written = await publisher.publish({CLUSTERS: [a, b]})
    assert stream.clusters() == [{"a": publisher.clusters["a"], "b": publisher.clusters["b"]}]
    assert CLUSTERS in written and not (tmp_path / CLUSTERS).exists()  # no file: the stream

    c = cluster("c", 1003)
    await publisher.publish({CLUSTERS: [a, b, c]})
    assert stream.clusters()[-1] == {"c": publisher.clusters["c"]}

    # A cluster that changes is sent again, as a copy with the same content is not.
    b2 = cluster("b", 2002)
    await publisher.publish({CLUSTERS: [dict(a), b2, c]})
    assert stream.clusters()[-1] == {"b": publisher.clusters["b"]}

    # One gone is named as gone; nothing else moves.
    await publisher.publish({CLUSTERS: [a, c]})
    assert stream.clusters()[-1] == {"b": None}
    assert set(publisher.clusters) == {"a", "c"}

    puts = len(stream.puts)
    assert await publisher.publish({CLUSTERS: [a, c]}) == {}
    assert len(stream.puts) == puts, "nothing changed: nothing put"


async def test_the_first_publish_answers_envoy_about_clusters_even_with_none(
    tmp_path: Path,
) -> None:
    """Envoy's start waits for its first answer about the clusters (up to 15 s); a restarted
    kubelbd answers nothing until its first publish, so that one always puts them."""
    stream = Recorder()
    publisher = Publisher(tmp_path, stream=stream)
    await publisher.publish({CLUSTERS: []})
    assert stream.clusters() == [{}]
    await publisher.publish({CLUSTERS: []})
    assert stream.clusters() == [{}]


async def test_a_cluster_that_cannot_be_encoded_is_left_out_not_the_others(
    tmp_path: Path,
) -> None:
    stream = Recorder()
    publisher = Publisher(tmp_path, stream=stream)
    bad = {**cluster("bad", 1), "no_such_field": True}
    await publisher.publish({CLUSTERS: [cluster("good", 1001), bad]})
    assert set(stream.clusters()[-1]) == {"good"}


async def test_a_start_removes_the_cluster_file_an_older_kubelbd_wrote(tmp_path: Path) -> None:
    (tmp_path / CLUSTERS).write_bytes(protos.discovery_response("old", []))
    Publisher(tmp_path).load()
    assert not (tmp_path / CLUSTERS).exists()


async def test_the_stream_counts_a_cluster_applied_only_once_envoy_acknowledged_it(
    tmp_path: Path,
) -> None:
    """Nothing subscribed yet: a served type is not applied (no status may say it is)."""
    server = DiscoveryServer(tmp_path / ADS_SOCKET)
    assert server.applied(None)
    generation = server.serve(CLUSTER, {"a": ("v1", protos.resource(cluster("a", 1)))})
    assert not server.applied(generation)
    assert not await server.wait_applied(generation, 0.02)


# ---- a real Envoy -------------------------------------------------------------------------


def _route(name: str, host: str, port: int) -> RouteRecord:
    backend = {"service": f"s{port}", "port": "80", "nodePort": port}
    rule = {"host": host, "paths": [{"path": "/", "pathType": "Prefix", "backends": [backend]}]}
    return records.route("alpha", name, [rule])


def _stats(admin: str, prefix: str) -> dict[str, int]:
    url = f"http://{admin}/stats?format=json&filter=^{prefix}"
    with urllib.request.urlopen(url, timeout=5) as r:  # loopback
        stats = orjson.loads(r.read())["stats"]
    return {s["name"]: s["value"] for s in stats if isinstance(s.get("value"), int)}


@needs_envoy
def test_a_backends_new_cluster_is_served_and_envoy_keeps_every_cluster_while_kubelbd_restarts(
    tmp_path: Path,
) -> None:
    settings = live_settings(tmp_path, shards=1)
    tenants = [TenantRecord("alpha", ("127.0.0.1",))]
    with echo_backend("one") as one, echo_backend("two") as two:
        first = _route("default.one", "one.example.com", one)
        model, renderer = Model(), Renderer(settings)
        files = renderer.update(model.ir, model.apply([first], (), tenants))
        with running_envoy(tmp_path, files) as envoy:
            port = settings.http_port

            def serves(*hosts: str) -> None:
                for host in hosts:
                    assert request(port, host).status == 200, host

            eventually(lambda: serves("one.example.com"))
            stream = envoy.publisher.stream
            assert isinstance(stream, Stream)
            before = _stats(envoy.admin, "cluster_manager.cds.")

            # A second host on a backend no route used: its cluster comes over the stream.
            second = _route("default.two", "two.example.com", two)
            envoy.publish(renderer.update(model.ir, model.apply([second], (), None)))
            eventually(lambda: serves("two.example.com"))
            after = _stats(envoy.admin, "cluster_manager.cds.")
            assert after["cluster_manager.cds.update_rejected"] == 0
            assert after["cluster_manager.cds.update_success"] > before.get(
                "cluster_manager.cds.update_success", 0
            )

            # kubelbd restarts: a new server, nothing published yet. Envoy reconnects and
            # keeps every cluster meanwhile (nothing is answered before the first publish).
            stream.portal.call(stream.server.stop)
            restarted = DiscoveryServer(tmp_path / ADS_SOCKET)
            stream.portal.call(restarted.start)
            stream.server = restarted
            try:

                def reconnected() -> None:
                    assert _stats(envoy.admin, "control_plane.")["control_plane.connected_state"]

                eventually(reconnected)
                serves("one.example.com", "two.example.com")
                # Its first publish: every cluster and scope again, as a fresh kubelbd has them.
                fresh = Model()
                whole = Renderer(settings).update(
                    fresh.ir, fresh.apply([first, second], (), tenants)
                )
                anyio.run(Publisher(tmp_path, stream=stream).publish, whole)
                generation = restarted.generation

                def applied() -> None:
                    assert stream.portal.call(restarted.applied, generation)

                eventually(applied)
                serves("one.example.com", "two.example.com")
                assert (
                    _stats(envoy.admin, "cluster_manager.cds.")[
                        "cluster_manager.cds.update_rejected"
                    ]
                    == 0
                )
            finally:
                stream.portal.call(restarted.stop)
