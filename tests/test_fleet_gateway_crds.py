"""Which Gateway API CRDs the fleet installs into every tenant API server, in which order, and
when it may skip them: the pure half of kubefleet.gatewayapi.install (the rest needs a fleet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubefleet import gatewayapi


def test_standard_crds_are_every_kind_in_install_order(conformance_bin: Path) -> None:
    files = gatewayapi.crd_files(gatewayapi.crd_dir(conformance_bin))
    plurals = [f.stem.rpartition("_")[2] for f in files]
    assert plurals == list(gatewayapi.ORDER)
    docs = gatewayapi.crd_documents(files)
    kinds = {d["spec"]["names"]["kind"] for d in docs}
    # v1.6.3's standard channel already has the Layer 4 and TLS routes and ListenerSet.
    assert {"TCPRoute", "UDPRoute", "TLSRoute", "ListenerSet", "HTTPRoute"} <= kinds
    for d in docs:
        ann = d["metadata"]["annotations"]
        assert ann[gatewayapi.BUNDLE_VERSION] == "v1.6.3"
        assert ann[gatewayapi.CHANNEL_ANNOTATION] == "standard"  # one channel, or the suite stops
    http = next(d for d in docs if d["spec"]["names"]["kind"] == "HTTPRoute")
    assert gatewayapi.served_path(http) == "/apis/gateway.networking.k8s.io/v1/httproutes?limit=1"


def test_crd_files_skip_what_is_not_a_crd_and_rank_unknown_files_last(tmp_path: Path) -> None:
    names = [
        "kustomization",
        "gateway.networking.k8s.io_vap_safeupgrades",
        "gateway.networking.k8s.io_zthings",
        "gateway.networking.k8s.io_httproutes",
        "gateway.networking.k8s.io_gateways",
        "gateway.networking.x-k8s.io_athings",
    ]
    for name in names:
        (tmp_path / f"{name}.yaml").write_text("{}")
    (tmp_path / "README.md").write_text("")
    assert [f.name for f in gatewayapi.crd_files(tmp_path)] == [
        "gateway.networking.k8s.io_gateways.yaml",
        "gateway.networking.k8s.io_httproutes.yaml",
        "gateway.networking.k8s.io_zthings.yaml",
        "gateway.networking.x-k8s.io_athings.yaml",
    ]


def test_only_crds_missing_or_of_another_release_are_applied() -> None:
    def crd(name: str, version: str = "v1.6.3", channel: str = "standard") -> dict[str, Any]:
        ann = {gatewayapi.BUNDLE_VERSION: version, gatewayapi.CHANNEL_ANNOTATION: channel}
        return {"metadata": {"name": name, "annotations": ann}}

    wanted = [crd("a"), crd("b"), crd("c"), crd("d")]
    installed = [crd("a"), crd("b", "v1.5.0"), crd("c", channel="experimental"), crd("x")]
    assert [d["metadata"]["name"] for d in gatewayapi.missing(installed, wanted)] == [
        "b", "c", "d",
    ]  # fmt: skip
    assert gatewayapi.missing(wanted, wanted) == []


def test_crd_manifests_parse_as_single_documents(conformance_bin: Path) -> None:
    """Each standard file is one CRD (what `crd_documents` relies on to keep file order)."""
    for f in gatewayapi.crd_files(gatewayapi.crd_dir(conformance_bin)):
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert [d["kind"] for d in docs] == ["CustomResourceDefinition"], f.name
