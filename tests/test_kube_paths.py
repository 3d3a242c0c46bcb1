"""URL building for the API client: every path kubelbd requests comes from here."""

from __future__ import annotations

import pytest

from kubelbd.kube import ApiError, Kube
from kubelbd.kube.client import _api_error
from kubelbd.kube.transport import _env_proxy
from kubelbd.objects import INGRESSES, NAMESPACES, NODES, SERVICES, Resource, key


@pytest.mark.parametrize(
    ("res", "args", "want"),
    [
        (SERVICES, ("ns1", None, None), "/api/v1/namespaces/ns1/services"),
        (SERVICES, (None, None, None), "/api/v1/services"),
        (SERVICES, ("ns1", "web", "status"), "/api/v1/namespaces/ns1/services/web/status"),
        (INGRESSES, ("a", "b", None), "/apis/networking.k8s.io/v1/namespaces/a/ingresses/b"),
        (NODES, ("ignored", "node-1", None), "/api/v1/nodes/node-1"),
        (NAMESPACES, (None, "tenant-alpha", None), "/api/v1/namespaces/tenant-alpha"),
        (
            Resource("kubelb.io/v1alpha1", "routes"),
            ("t", "r/x", None),
            "/apis/kubelb.io/v1alpha1/namespaces/t/routes/r%2Fx",
        ),
    ],
)
def test_resource_paths(
    res: Resource, args: tuple[str | None, str | None, str | None], want: str
) -> None:
    assert res.path(*args) == want


def test_key_is_namespace_slash_name_or_name() -> None:
    assert key({"metadata": {"namespace": "a", "name": "b"}}) == "a/b"
    assert key({"metadata": {"name": "node-1"}}) == "node-1"


def test_api_error_carries_the_status_reason() -> None:
    e = _api_error(
        409, "Conflict", b'{"kind":"Status","reason":"AlreadyExists","message":"x exists"}'
    )
    assert isinstance(e, ApiError)
    assert e.conflict and e.reason == "AlreadyExists" and e.message == "x exists"
    e = _api_error(502, "Bad Gateway", b"<html>nope</html>")
    assert e.status == 502 and "nope" in e.message


def test_proxy_from_the_environment_is_decided_per_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert _env_proxy("https://10.0.0.1:6443") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert _env_proxy("https://10.0.0.1:6443") == "http://proxy.example:3128"
    assert _env_proxy("https://api.internal.example:6443") is None
    assert _env_proxy("http://10.0.0.1:8080") is None  # no HTTP_PROXY


async def test_a_closed_client_fails_like_a_connection_not_a_crash() -> None:
    config = {
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    kube = await Kube.from_kubeconfig(config, "gone")
    await kube.aclose()
    with pytest.raises(ConnectionError, match="client closed"):
        await kube.get(NAMESPACES, "default")
