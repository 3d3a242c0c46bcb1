"""Envoy's resources as protobuf (envoy/protos.py): every resource the goldens hold is one
Envoy's API takes, field by field; a route table written host by host is the same message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import any_pb2, json_format

from kubelbd.envoy import protos, type_urls
from kubelbd.envoy.publisher import Encoder
from kubelbd.envoy.type_urls import CLUSTER, LISTENER, ROUTE_CONFIG

GOLDEN = Path(__file__).parent / "golden"
TOP = {CLUSTER, LISTENER, ROUTE_CONFIG}


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    """Every listener, cluster and route table in `value` (not those inside another)."""
    if isinstance(value, dict):
        if value.get("@type") in TOP:
            yield value
            return
        for v in value.values():
            yield from _resources(v)
    elif isinstance(value, list):
        for v in value:
            yield from _resources(v)


def golden_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(GOLDEN.rglob("*.out.yaml")):
        out += _resources(yaml.safe_load(path.read_text()))
    return out


def _decoded(encoded: bytes) -> Any:
    wrapped = any_pb2.Any.FromString(encoded)
    message = protos.message_class(wrapped.type_url)()
    message.ParseFromString(wrapped.value)
    return message


def test_every_type_url_kubelbd_names_has_its_generated_class() -> None:
    urls = [v for v in vars(type_urls).values() if str(v).startswith("type.googleapis.com/")]
    assert len(urls) > 10
    for url in urls:
        assert protos.message_class(url).DESCRIPTOR.full_name == url.rpartition("/")[2]


def test_every_golden_resource_is_one_envoys_api_takes() -> None:
    resources = golden_resources()
    kinds = {r["@type"] for r in resources}
    assert kinds == TOP and len(resources) > 50
    for r in resources:
        # json_format refuses a field the message lacks or a value of the wrong type; and
        # what it took reads back as what was given (the JSON mapping loses nothing).
        message = _decoded(protos.resource(r))
        again = json_format.MessageToDict(message, preserving_proto_field_name=True)
        assert _decoded(protos.resource({"@type": r["@type"], **again})) == message


def test_a_field_envoy_does_not_have_fails_in_kubelbd_with_its_path() -> None:
    bad = {"@type": CLUSTER, "name": "a", "load_assignment": {"cluster_nam": "a"}}
    with pytest.raises(json_format.ParseError, match=r"cluster_nam.*Cluster.load_assignment"):
        protos.resource(bad)


def test_a_route_table_written_host_by_host_is_the_same_message() -> None:
    table = max(
        (r for r in golden_resources() if r["@type"] == ROUTE_CONFIG),
        key=lambda r: len(r.get("virtual_hosts", [])),
    )
    assert len(table["virtual_hosts"]) >= 3
    hosts = protos.Remembered()
    piecewise = protos.resource(table, hosts)
    assert _decoded(piecewise) == _decoded(protos.resource(table))
    # A new table with one host fewer and one more: the others' bytes are reused, the
    # message is still the one a whole encoding gives.
    new_host = {"name": "new", "domains": ["new.test"], "routes": []}
    changed = {**table, "virtual_hosts": [*table["virtual_hosts"][1:], new_host]}
    assert _decoded(protos.resource(changed, hosts)) == _decoded(protos.resource(changed))


def test_every_golden_host_has_the_bytes_of_protobufs_json_mapping() -> None:
    """A host's domains, and its routes' names, are set on the message directly (fast), not
    through the JSON mapping: the bytes must be the same, and a domain or a route name that
    is no string, or a route field Envoy does not have, still refused."""
    hosts = [
        vh
        for r in golden_resources()
        if r["@type"] == ROUTE_CONFIG
        for vh in r.get("virtual_hosts", [])
    ]
    assert len(hosts) > 10
    hosts.append({"name": "front", "domains": [f"h{i}.test" for i in range(200)], "routes": []})
    # Fields numbered below a route's name and above it (stat_prefix, 19): in that order.
    route = {"match": {"prefix": "/"}, "name": "a/b", "route": {"cluster": "c"}, "stat_prefix": "s"}
    hosts.append({"name": "r", "domains": ["r.test"], "routes": [route, {"match": {"path": "/"}}]})
    for vh in hosts:
        mapped = json_format.ParseDict(
            vh, protos.message_class("envoy.config.route.v3.VirtualHost")()
        )
        assert protos._virtual_host(vh).endswith(mapped.SerializeToString(deterministic=True))
    for bad in ({"domains": ["a.test", 7]}, {"routes": [{"name": 7}]}, {"routes": [{"x": 1}]}):
        with pytest.raises(protos.Unencodable):
            protos._virtual_host({"name": "n", "domains": ["a.test"], **bad})


def test_small_parts_are_remembered_by_content_and_few_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route table's own fields and a front host's route are encoded once, then taken
    from memory while their JSON form is the same; the memory keeps SMALL_MEMO of them, and
    a large part is never kept."""
    monkeypatch.setattr(protos, "_small", type(protos._small)())
    monkeypatch.setattr(protos, "SMALL_MEMO", 3)
    vh = "envoy.config.route.v3.VirtualHost"
    route = {"routes": [{"match": {"prefix": "/"}, "route": {"cluster": "shard.1"}}]}
    first = protos._encode_small(vh, route)
    assert first == protos._encode(vh, route)
    assert protos._encode_small(vh, json.loads(json.dumps(route))) is first  # equal content
    other = {"routes": [{"match": {"prefix": "/"}, "route": {"cluster": "shard.2"}}]}
    assert protos._encode_small(vh, other) != first
    for i in range(5):
        protos._encode_small(vh, {"routes": [{**route["routes"][0], "match": {"prefix": f"/{i}"}}]})
    assert len(protos._small) == 3
    large = {"routes": [{"match": {"prefix": "/" + "x" * protos.SMALL}, "route": {"cluster": "c"}}]}
    assert protos._encode_small(vh, large) == protos._encode(vh, large)
    assert all(len(text) <= protos.SMALL for _, text in protos._small)


def test_a_file_reads_back_with_its_version_and_resources() -> None:
    cluster = {"@type": CLUSTER, "name": "a/b", "connect_timeout": "2s", "type": "STATIC"}
    version, data = Encoder().encode("cds.pb", [cluster])
    assert protos.version_of_file(data) == version
    assert protos.read_file(data) == {"version_info": version, "resources": [cluster]}
    # The same resources give the same file, remembered or not (a restart rewrites nothing).
    assert Encoder().encode("cds.pb", [dict(cluster)]) == (version, data)


def test_a_resource_that_cannot_be_encoded_is_left_out_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gap in the checks before the publisher costs the one resource (or virtual host),
    logged by name, never the file every tenant's change is in, nor the process."""
    good = {"@type": CLUSTER, "name": "good", "connect_timeout": "2s"}
    bad = {"@type": CLUSTER, "name": "bad", "connect_timeout": "two seconds"}
    _, data = Encoder().encode("cds.pb", [good, bad])
    assert [c["name"] for c in protos.read_file(data)["resources"]] == ["good"]
    assert "Cluster 'bad' left out" in caplog.text
    ok = {"name": "ok", "domains": ["ok.test"], "routes": []}
    broken = {"name": "broken", "domains": "not a list of domains", "routes": []}
    table = {"@type": ROUTE_CONFIG, "name": "t", "virtual_hosts": [ok, broken]}
    _, data = Encoder().encode("rds/t.pb", [table])
    (read,) = protos.read_file(data)["resources"]
    assert [vh["name"] for vh in read["virtual_hosts"]] == ["ok"]
    assert "virtual host 'broken' left out" in caplog.text
