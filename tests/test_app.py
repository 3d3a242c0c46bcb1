"""Flags that protect the deployment: Envoy's admin API stays on loopback."""

from __future__ import annotations

import pytest
import yaml

from kubelbd.config import parse_args
from kubelbd.envoy.process import TEMPLATE, render_bootstrap


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The usage error argparse prints for `argv` (exit status 2, not any SystemExit)."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("admin", ["0.0.0.0:9901", "10.0.0.5:9901", "[::]:9901"])
def test_admin_address_must_be_loopback(admin: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--envoy-admin must be a loopback address" in refused(["--envoy-admin", admin], capsys)


def test_loopback_admin_is_accepted_and_rendered_as_given() -> None:
    cfg = parse_args(["--envoy-admin", "127.0.0.1:19000", "--l4-mode", "service"])
    assert cfg.envoy_admin == "127.0.0.1:19000"
    assert cfg.l4.mode == "service" and cfg.l4.listen_address == "0.0.0.0"
    boot = yaml.safe_load(render_bootstrap(TEMPLATE.read_text(), "/cfg", cfg.envoy_admin, "n"))
    assert boot["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 19000,
    }
    assert boot["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == "/cfg/lds.pb"


def test_bad_settings_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "bad Layer 4 setting" in refused(["--l4-address-pool", "not-a-cidr"], capsys)
    assert "bad Layer 4 setting" in refused(["--l4-port-range", "20000"], capsys)
    assert "takes k=v" in refused(["--l4-envoy-selector", "novalue"], capsys)
    assert "--route-shards must be at least 1" in refused(["--route-shards", "0"], capsys)
