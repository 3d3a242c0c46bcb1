"""The real echo-basic (the conformance suite's backend, from hack/build-conformance) run as an
emulated pod: its env, its mounted Secret, its address, its log, its end; and the kubelet
running one from a pod object, Ready only once it answers.

Pods here listen on 127.250.9.0/24, outside every address the fleet uses (tenants' pods are
on 127.(100+i), i <= 50), so the tests never clash with a running fleet.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from kubefleet import certs
from kubefleet.nodeemu import echobasic

from e2e.support import udp_echo

POD_IP = "10.250.9.7"
LISTEN = "127.250.9.7"


def test_echo_basic_images_are_recognised_but_not_the_fleets_own() -> None:
    assert echobasic.is_echo_basic("registry.k8s.io/gateway-api/echo-basic:v1.5.1")
    assert echobasic.is_echo_basic("gcr.io/k8s-staging-gateway-api/echo-basic@sha256:" + "0" * 64)
    assert echobasic.is_echo_basic("localhost:5000/echo-basic")
    assert not echobasic.is_echo_basic(echobasic.EMULATED_IMAGE)
    assert not echobasic.is_echo_basic("registry.k8s.io/coredns/coredns:v1.12.2")
    assert not echobasic.is_echo_basic("example.com/echo-basic-fork:1")
    assert echobasic.image_repository("host:5000/a/b:tag@sha256:ab") == "host:5000/a/b"


def test_echo_ports_follow_echo_basics_modes() -> None:
    def ports(env: dict[str, str]) -> list[tuple[str, str, int]]:
        return [(p.env, p.protocol, p.port) for p in echobasic.echo_ports(env)]

    assert ports({}) == [("HTTP_PORT", "TCP", 3000), ("H2C_PORT", "TCP", 3001)]
    tls = {"TLS_SERVER_CERT": "/c", "TLS_SERVER_PRIVKEY": "/k", "HTTP_PORT": "8080"}
    assert ports(tls)[0] == ("HTTP_PORT", "TCP", 8080)
    assert ports(tls)[2] == ("HTTPS_PORT", "TCP", 8443)
    # gRPC and TCP modes read the key from TLS_SERVER_PRIV_KEY, as upstream does.
    assert ports({"GRPC_ECHO_SERVER": "1", **tls}) == [("HTTP_PORT", "TCP", 8080)]
    tcp_tls = {"TCP_ECHO_SERVER": "1", "TLS_SERVER_CERT": "/c", "TLS_SERVER_PRIV_KEY": "/k"}
    assert ports(tcp_tls) == [("TCP_PORT", "TCP", 3000), ("TLS_PORT", "TCP", 8443)]
    assert ports({"UDP_ECHO_SERVER": "1", "UDP_PORT": "5300"}) == [("UDP_PORT", "UDP", 5300)]


def test_container_env_resolves_literals_references_and_the_downward_api() -> None:
    pod = _pod([])
    container = {
        "name": "c",
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-$(MISSING)-$$(A)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    }
    assert echobasic.container_env(container, pod, POD_IP, "127.0.9.1") == {
        "A": "x", "B": "x-$(MISSING)-$(A)", "POD": "echo-7d9f-abcde", "NS": "conf",
        "IP": POD_IP, "APP": "echo",
    }  # fmt: skip


def test_paths_under_a_mount_are_rewritten_to_the_pods_directory() -> None:
    mounts = {"/etc/secret-volume": Path("/p/v"), "/etc/secret-volume/deeper/": Path("/p/w")}
    assert echobasic.rewrite_path("/etc/secret-volume/crt", mounts) == "/p/v/crt"
    assert echobasic.rewrite_path("/etc/secret-volume", mounts) == "/p/v"
    assert echobasic.rewrite_path("/etc/secret-volume/deeper/k", mounts) == "/p/w/k"
    assert echobasic.rewrite_path("/etc/secret-volume-2/crt", mounts) == "/etc/secret-volume-2/crt"
    assert echobasic.rewrite_path("3000", mounts) == "3000"


def _pod(containers: list[dict[str, Any]], volumes: list[dict[str, Any]] | None = None) -> Any:
    return {
        "metadata": {"name": "echo-7d9f-abcde", "namespace": "conf", "uid": "u-1",
                     "labels": {"app": "echo"}},
        "spec": {"nodeName": "node-1", "containers": containers, "volumes": volumes or []},
    }  # fmt: skip


def _tls_pod() -> tuple[Any, dict[str, Any], certs.KeyPair]:
    pair = certs.self_signed("echo.example.test")
    secret = {
        "data": {
            "tls.crt": base64.b64encode(pair.cert_pem()).decode(),
            "tls.key": base64.b64encode(pair.key_pem()).decode(),
        }
    }
    container = {
        "name": "echo",
        "image": "registry.k8s.io/gateway-api/echo-basic:v1.5.1",
        "volumeMounts": [{"name": "secret-volume", "mountPath": "/etc/secret-volume"}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "TLS_SERVER_CERT", "value": "/etc/secret-volume/crt"},
            {"name": "TLS_SERVER_PRIVKEY", "value": "/etc/secret-volume/key"},
        ],
    }
    volume = {
        "name": "secret-volume",
        "secret": {
            "secretName": "tls-checks-certificate",
            "items": [{"key": "tls.crt", "path": "crt"}, {"key": "tls.key", "path": "key"}],
        },
    }
    return _pod([container], [volume]), {"secret-volume": secret}, pair


@pytest.fixture
async def echo_pod(conformance_bin: Path, tmp_path: Path) -> AsyncIterator[Any]:
    pod, secrets, pair = _tls_pod()
    running = echobasic.EchoBasicPod(
        conformance_bin / "echo-basic", pod, POD_IP, LISTEN, "127.250.9.1", tmp_path, secrets
    )
    try:
        await running.start()
        yield running, pair
    finally:
        await running.stop()


async def test_echo_basic_runs_as_the_pod_on_its_own_address(echo_pod: Any) -> None:
    running, pair = echo_pod
    assert await running.wait_ready(), "echo-basic's ports never answered"
    [c] = running.containers
    # The secret is a file only we can read, and the env points at it.
    key_file = Path(c.env["TLS_SERVER_PRIVKEY"])
    assert key_file.is_relative_to(running.dir)
    assert _content_and_mode(key_file) == (pair.key_pem(), 0o600)
    # The process listens on free host ports; the pod's own ports are relayed to them.
    assert {c.env[v] for v in ("HTTP_PORT", "H2C_PORT", "HTTPS_PORT")} == {
        str(p) for p in c.host_ports.values()
    }
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{LISTEN}:3000/plain?x=1", headers={"Host": "a.test"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/json"
            echo = await r.json()
        assert (echo["path"], echo["host"], echo["namespace"], echo["pod"]) == (
            "/plain?x=1", "a.test", "conf", "echo-7d9f-abcde",
        )  # fmt: skip
        ctx = ssl.create_default_context(cadata=pair.cert_pem().decode())
        ctx.check_hostname = False
        async with s.get(f"https://{LISTEN}:8443/secure", ssl=ctx) as r:
            echo = await r.json()
            assert echo["path"] == "/secure"
    # stdout is in the log, a CRI line per line, as the suite's mirror tests read it.
    log = running.log_path("echo").read_text()
    assert "Echoing back request made to /plain?x=1 to client" in log
    assert "handshake error" not in log  # readiness is read from /proc, never dialled
    stamp, stream, tag, _ = log.splitlines()[0].split(" ", 3)
    assert (stream, tag) == ("stdout", "F")
    assert dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).tzinfo is not None


async def test_a_stopped_pod_leaves_no_process_port_or_files(echo_pod: Any) -> None:
    running, _ = echo_pod
    assert await running.wait_ready()
    [c] = running.containers
    pid = c.proc.pid
    await running.stop()
    assert c.proc.returncode is not None
    assert _gone(pid)
    assert not running.dir.exists()
    with pytest.raises(OSError):
        await asyncio.open_connection(LISTEN, 3000)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", c.host_ports["HTTP_PORT"])


@pytest.mark.parametrize("mode", ["udp", "tcp"])
async def test_echo_basics_udp_and_tcp_modes_answer_on_the_pods_port(
    conformance_bin: Path, tmp_path: Path, mode: str
) -> None:
    listen = "127.250.9.8"
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    if mode == "udp":
        env += [{"name": "UDP_ECHO_SERVER", "value": "1"}, {"name": "UDP_PORT", "value": "5300"}]
    else:
        env += [{"name": "TCP_ECHO_SERVER", "value": "1"}]
    pod = _pod(
        [{"name": "echo", "image": "registry.k8s.io/gateway-api/echo-basic:v1.6.0", "env": env}]
    )
    running = echobasic.EchoBasicPod(
        conformance_bin / "echo-basic", pod, POD_IP, listen, "127.250.9.1", tmp_path, {}
    )
    try:
        await running.start()
        assert await running.wait_ready()
        if mode == "udp":
            reply = json.loads(await udp_echo(listen, 5300, b"ping", timeout=5))
            assert (reply["request"], reply["pod"]) == ("ping", "echo-7d9f-abcde")
        else:
            reader, writer = await asyncio.open_connection(listen, 3000)
            assert await asyncio.wait_for(reader.readline(), 5) == b"Gateway API Test TCP Server\n"
            writer.close()
    finally:
        await running.stop()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_open_ports_are_read_from_proc() -> None:
    for protocol, kind in (("TCP", socket.SOCK_STREAM), ("UDP", socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.250.9.3", 0))
            port = s.getsockname()[1]
            if protocol == "TCP":
                assert not echobasic.port_open("TCP", port)  # bound, not yet listening
                s.listen()
            assert echobasic.port_open(protocol, port)
        assert not echobasic.port_open(protocol, port)


def _entries(path: Path) -> list[Path]:
    return list(path.iterdir())


def test_secret_items_cannot_leave_their_volume() -> None:
    secret = {"data": {"k": base64.b64encode(b"v").decode()}}
    assert echobasic.secret_files({"items": [{"key": "k", "path": "a/b"}]}, secret) == {"a/b": b"v"}
    assert echobasic.secret_files({}, secret) == {"k": b"v"}
    for bad in ("../k", "/etc/k", "a/../../k"):
        with pytest.raises(ValueError):
            echobasic.secret_files({"items": [{"key": "k", "path": bad}]}, secret)
    with pytest.raises(KeyError):
        echobasic.secret_files({"items": [{"key": "nope", "path": "x"}]}, secret)
    optional = {"items": [{"key": "nope", "path": "x"}], "optional": True}
    assert echobasic.secret_files(optional, secret) == {}


def _content_and_mode(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), stat.S_IMODE(path.stat().st_mode)


async def test_a_process_that_cannot_start_is_never_ready(
    conformance_bin: Path, tmp_path: Path
) -> None:
    pod, secrets, _ = _tls_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "HTTP_PORT", "value": "notaport"})
    with pytest.raises(ValueError):  # the pod's own port must be a number to listen on
        echobasic.EchoBasicPod(
            conformance_bin / "echo-basic", pod, POD_IP, LISTEN, "127.250.9.1", tmp_path, secrets
        )
    assert _entries(tmp_path) == []  # its directory went with it
    pod, secrets, _ = _tls_pod()
    pod["spec"]["containers"][0]["env"][2]["value"] = "/etc/secret-volume/nope"
    running = echobasic.EchoBasicPod(
        conformance_bin / "echo-basic", pod, POD_IP, LISTEN, "127.250.9.1", tmp_path, secrets
    )
    try:
        await running.start()
        assert not await running.wait_ready(timeout=10)
        assert running.exited
    finally:
        await running.stop()


@pytest.fixture
async def kubelet(conformance_bin: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """A Kubelet for node-1 of a fake API server with namespace conf and the TLS Secret."""
    from kubefleet.nodeemu.kubelet import Kubelet

    from kubelbd.objects import NAMESPACES, SECRETS
    from tests.fakekube import FakeKube

    kube = FakeKube("alpha")
    _, secrets, _ = _tls_pod()
    await kube.create(NAMESPACES, {"metadata": {"name": "conf"}})
    secret = {"metadata": {"name": "tls-checks-certificate"}, **secrets["secret-volume"]}
    await kube.create(SECRETS, secret, "conf")
    node = Kubelet(
        kube, "alpha", "node-1", "127.250.9.1", "10.250.9.0/24",
        echo_basic=conformance_bin / "echo-basic", pods_dir=tmp_path / "pods",
    )  # fmt: skip
    tasks = [asyncio.create_task(node.pods.run()), asyncio.create_task(node.sync_pods())]
    try:
        yield node
    finally:
        for t in tasks:
            assert not t.done(), "the kubelet's loops must outlive any pod"
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.stop_all()


def _kubelet_pod(name: str) -> Any:
    pod, _, _ = _tls_pod()
    pod["metadata"] = {"name": name, "namespace": "conf", "labels": {"app": "echo"}}
    pod["spec"]["nodeName"] = "node-1"
    return pod


async def test_the_kubelet_runs_an_echo_basic_pod_ready_once_it_answers(kubelet: Any) -> None:
    from kubelbd.objects import PODS

    kube = kubelet.kube
    created = await kube.create(PODS, _kubelet_pod("echo-1"), "conf")
    status = await _until(kube, "echo-1", lambda s: s.get("phase") == "Running")
    ip = status["podIP"]
    status = await _until(kube, "echo-1", lambda s: _ready(s) == "True")
    assert status["podIP"] == ip and ip.startswith("10.250.9.")
    # Running at its address first, Ready only once echo-basic answered.
    readiness = [
        _ready(c.obj.get("status") or {}) for c in kube.changes(PODS) if c.type == "MODIFIED"
    ]
    assert readiness[-2:] == ["False", "True"], readiness
    async with aiohttp.ClientSession() as s, s.get(f"http://127.{ip[3:]}:3000/x") as r:
        assert (await r.json())["pod"] == "echo-1"
    path = kubelet.container_log("conf", "echo-1", "echo")
    assert path is not None and "Echoing back request made to /x" in path.read_text()
    assert kubelet.container_log("conf", "echo-1", "nope") is None
    assert kubelet.container_log("conf", "other", "echo") is None
    running = kubelet._running["conf/echo-1"]
    assert running.uid == created["metadata"]["uid"] and running.echo is not None
    # Deleted: the kubelet stops the process, removes its directory, frees the address.
    await kube.delete(PODS, "echo-1", "conf")
    for _ in range(100):
        if "conf/echo-1" not in kubelet._running:
            break
        await asyncio.sleep(0.05)
    assert "conf/echo-1" not in kubelet._running
    assert not running.echo.dir.exists()
    assert kubelet.container_log("conf", "echo-1", "echo") is None
    assert ip in kubelet._free


async def test_a_pod_echo_basic_cannot_run_stays_not_ready_and_the_node_lives_on(
    kubelet: Any,
) -> None:
    from kubelbd.objects import PODS

    kube = kubelet.kube
    bad = _kubelet_pod("echo-bad")
    bad["spec"]["containers"][0]["env"].append({"name": "HTTP_PORT", "value": "notaport"})
    await kube.create(PODS, bad, "conf")
    status = await _until(kube, "echo-bad", lambda s: s.get("phase") == "Running")
    assert _ready(status) == "False"
    assert "notaport" in kubelet._running["conf/echo-bad"].failed
    # The next pod still runs (the fixture checks the loops are alive at the end).
    await kube.create(PODS, _kubelet_pod("echo-2"), "conf")
    await _until(kube, "echo-2", lambda s: _ready(s) == "True")


async def test_an_exited_echo_basic_turns_the_pod_not_ready_then_runs_again(
    kubelet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubefleet.nodeemu import kubelet as kubelet_module

    from kubelbd.objects import PODS

    monkeypatch.setattr(kubelet_module, "RESTART_BACKOFF", 0.5)
    kube = kubelet.kube
    await kube.create(PODS, _kubelet_pod("echo-1"), "conf")
    status = await _until(kube, "echo-1", lambda s: _ready(s) == "True")
    first = kubelet._running["conf/echo-1"]
    first.echo.containers[0].proc.kill()
    await _until(kube, "echo-1", lambda s: _ready(s) == "False")
    status2 = await _until(kube, "echo-1", lambda s: _ready(s) == "True")
    second = kubelet._running["conf/echo-1"]
    assert second is not first and second.echo is not None and not second.echo.exited
    assert status2["podIP"] == status["podIP"]  # the same pod keeps its address
    assert status["podIP"] not in kubelet._free
    assert not first.echo.dir.exists()


def _ready(status: dict[str, Any]) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), None)


async def _until(kube: Any, name: str, check: Any) -> dict[str, Any]:
    from kubelbd.objects import PODS

    for _ in range(200):
        pod = kube.stored(PODS, name, "conf")
        status = (pod or {}).get("status") or {}
        if check(status):
            return dict(status)
        await asyncio.sleep(0.05)
    raise AssertionError(f"pod status never matched: {status}")


#: the suite's CoreDNS Corefile (base/manifests.yaml), as its ConfigMap holds it
COREFILE = """.:53 {
    forward . 8.8.8.8 9.9.9.9
    log
    errors
}
foo.bar.com:53 {
  whoami
}
"""


def test_a_corefile_moves_to_host_ports_and_forwards_nowhere() -> None:
    assert echobasic.corefile_ports(COREFILE) == [53]
    out = echobasic.rewrite_corefile(COREFILE, {53: 40053})
    assert ".:40053 {" in out and "foo.bar.com:40053 {" in out and ":53" not in out
    assert "8.8.8.8" not in out and f"forward . {echobasic.FORWARD_NOWHERE}" in out
    assert echobasic.is_coredns("registry.k8s.io/coredns/coredns:v1.12.2")
    assert not echobasic.is_coredns("registry.k8s.io/gateway-api/echo-basic:v1.5.1")


async def test_coredns_runs_as_the_pod_from_its_corefile(
    conformance_bin: Path, tmp_path: Path
) -> None:
    """The suite's UDPRoute backend: the real CoreDNS answers on the pod's address, port 53."""
    listen = "127.250.9.9"
    container = {
        "name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.12.2",
        "args": ["-conf", "/root/Corefile"],
        "volumeMounts": [{"name": "conf", "mountPath": "/root"}],
    }  # fmt: skip
    pod = _pod([container], [{"name": "conf", "configMap": {"name": "coredns"}}])
    config_map = {"data": {"Corefile": COREFILE}}
    running = echobasic.EchoBasicPod(
        conformance_bin / "echo-basic", pod, POD_IP, listen, "127.250.9.1", tmp_path,
        {"conf": config_map}, conformance_bin / "coredns",
    )  # fmt: skip
    try:
        await running.start()
        assert await running.wait_ready(), running.log_path("coredns").read_text()
        query = dns.message.make_query("foo.bar.com.", "A")
        reply = await dns.asyncquery.udp(query, listen, port=53, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        # whoami's answer: the client's address and port, as CoreDNS saw them (the relay's)
        assert {r.rdtype for r in reply.additional} == {dns.rdatatype.A, dns.rdatatype.SRV}
    finally:
        await running.stop()
