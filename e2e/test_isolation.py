"""A hostile tenant, on the real fleet: every finding of the isolation review, reproduced as a
tenant's admin would try it, and the other tenant shown unaffected.

alpha is the hostile one; beta is the victim. The operator's policy for each tenant is its
Tenant record's spec (the fleet registers nodeCIDRs 127.0.<i>.0/24, domains open); a test
that needs another policy patches alpha's and puts it back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from kubefleet import certs
from kubefleet.lb import config_dir

from kubelbd.envoy.scopes import SCOPE_HEADER
from kubelbd.kube import Kube
from kubelbd.objects import (
    EVENTS,
    INGRESSES,
    LEASES,
    NAMESPACES,
    NODES,
    SECRETS,
    SERVICES,
    Obj,
)
from kubelbd.records.names import ROUTES
from kubelbd.records.objects import record_object

from .support import (
    RECORD_STATUS_TIMEOUT,
    FleetHandle,
    backend,
    conditions,
    create_namespace,
    delete_namespace,
    deploy_app,
    deploy_echo,
    eventually,
    http_get,
    https_request,
    ingress_obj,
    lb_get,
    namespace_in,
    route_condition,
    rule,
    tenant_policy,
    tenant_record,
    tls_secret,
    tls_site,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e

NAMESPACE = "kubelb"  # where the fleet registers its tenants


def from_app(app: str):  # type: ignore[no-untyped-def]
    return lambda body: isinstance(body, dict) and body.get("pod", "").startswith(f"{app}-")


def host(prefix: str) -> str:
    return f"{unique(prefix)}.example.test"


async def events_on(kube: Kube, ns: str, name: str) -> list[tuple[str, str]]:
    items, _ = await kube.list(EVENTS, ns, fieldSelector=f"involvedObject.name={name}")
    return [(e["reason"], e["message"]) for e in items]


async def event_seen(kube: Kube, ns: str, name: str, reason: str) -> None:
    """Poll until an Event with `reason` is on object `name`."""

    async def seen() -> bool:
        reasons = [r for r, _ in await events_on(kube, ns, name)]
        assert reason in reasons, reasons
        return True

    await eventually(seen, what=f"a {reason} Event on {name}")


@asynccontextmanager
async def hand_written_node(kube: Kube, name: str, address: str) -> AsyncIterator[None]:
    """A Node the tenant's admin writes by hand, Ready, with `address` as its InternalIP,
    kept Ready as a kubelet would (its Lease renewed); gone afterwards."""
    await kube.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "by hand"}
    status = {"status": {"addresses": [{"type": "InternalIP", "address": address}],
                         "conditions": [ready]}}  # fmt: skip
    await kube.patch(NODES, name, status, subresource="status")
    lease: Obj = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
    }

    async def renew() -> None:
        while True:
            lease["spec"]["renewTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            await kube.apply(LEASES, lease, field_manager="kubelet")
            ready["lastHeartbeatTime"] = lease["spec"]["renewTime"][:19] + "Z"
            await kube.patch(NODES, name, status, subresource="status")
            await asyncio.sleep(1)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kube.delete(NODES, name)
        await kube.delete(LEASES, name, "kube-node-lease")


# ---- registration --------------------------------------------------------------------------


async def test_a_kubeconfig_that_runs_a_command_is_refused(
    fleet: FleetHandle, tmp_path: Path
) -> None:
    """An `exec` user would run its command as kubelbd (and `tokenFile` would read kubelbd's
    own files): refused by default, Connected=False saying why, nothing run."""
    mgmt = fleet.kube["mgmt"]
    marker = tmp_path / "ran"
    config = yaml.safe_load(fleet.layout.kubeconfig("beta").read_text())
    config["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "/bin/sh",
            "args": ["-c", f"touch {marker}; echo '{{}}'"],
            "interactiveMode": "Never",
        },
        "tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
    }
    name = unique("exec")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"kubelb.io/tenant": name}},
        "data": {"kubeconfig": base64.b64encode(yaml.safe_dump(config).encode()).decode()},
    }
    await mgmt.create(SECRETS, secret, NAMESPACE)
    try:

        async def refused() -> bool:
            connected = conditions(await tenant_record(mgmt, name)).get("Connected", {})
            assert connected.get("status") == "False", connected
            assert connected.get("reason") == "KubeconfigRefused", connected
            assert "exec" in connected["message"] and "tokenFile" in connected["message"]
            return True

        await eventually(refused, timeout=30, what="Connected=False KubeconfigRefused")
        assert not marker.exists()
    finally:
        await mgmt.delete(SECRETS, name, NAMESPACE)


# ---- node addresses ------------------------------------------------------------------------


@pytest.fixture
async def beta_app(fleet: FleetHandle) -> AsyncIterator[tuple[str, str]]:
    """beta's app, served on its host: (namespace, host)."""
    beta = fleet.kube["beta"]
    ns = unique("victim")
    await create_namespace(beta, ns)
    await deploy_app(beta, ns, "victim")
    h = host("victim")
    await beta.create(
        INGRESSES, ingress_obj("victim", [rule(h, ("/", "Prefix", backend("victim")))]), ns
    )
    await until_served(fleet.layout, h, check=from_app("victim"))
    yield ns, h
    await delete_namespace(beta, ns)


async def beta_still_served(fleet: FleetHandle, ns: str, name: str) -> None:
    """beta's change goes through: a new Ingress of beta's is served."""
    h = host(name)
    await fleet.kube["beta"].create(
        INGRESSES, ingress_obj(name, [rule(h, ("/", "Prefix", backend("victim")))]), ns
    )
    await until_served(fleet.layout, h, check=from_app("victim"))


async def test_node_addresses_a_tenant_may_not_have_are_never_dialled(
    fleet: FleetHandle, beta_app: tuple[str, str]
) -> None:
    """Node addresses are the tenant's to write: 127.0.0.1 (where Envoy's admin API is), a
    name instead of an IP (which made Envoy reject the cluster file, so no status moved for
    anyone), and beta's node address (which published beta's NodePorts under alpha's hosts)
    are never used; the Tenant record and the Nodes say why, and beta is served throughout."""
    alpha, beta, mgmt, lay = (
        fleet.kube["alpha"],
        fleet.kube["beta"],
        fleet.kube["mgmt"],
        fleet.layout,
    )
    victim_ns, victim = beta_app
    evil = {"evil-admin": "127.0.0.1", "evil-name": "node.example.test",
            "evil-steal": fleet.node_ips("beta")[0]}  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        for name, address in evil.items():
            await stack.enter_async_context(hand_written_node(alpha, name, address))

        async def refused() -> bool:
            record = await tenant_record(mgmt, "alpha")
            assert record["status"]["nodeAddresses"] == sorted(fleet.node_ips("alpha"))
            accepted = conditions(record)["NodesAccepted"]
            assert accepted["status"] == "False" and accepted["reason"] == "AddressRefused"
            for name in evil:
                assert f"node {name}:" in accepted["message"], accepted["message"]
            return True

        await eventually(refused, what="alpha's refused node addresses")
        for name in evil:
            reasons = [r for r, _ in await events_on(alpha, "default", name)]
            assert "AddressRefused" in reasons, (name, reasons)
        # Everyone's changes and statuses still flow: beta's new route is served and its
        # status written (the applied version advances).
        await beta_still_served(fleet, victim_ns, "still")

        async def status_written() -> bool:
            obj = await beta.get(INGRESSES, "still", victim_ns)
            return bool(obj.get("status", {}).get("loadBalancer", {}).get("ingress"))

        await eventually(status_written, what="beta's new Ingress status")
        assert (await lb_get(lay, victim))[0] == 200

    async def accepted_again() -> bool:
        return bool(conditions(await tenant_record(mgmt, "alpha"))["NodesAccepted"]["status"]
                    == "True")  # fmt: skip

    await eventually(accepted_again, what="NodesAccepted=True once the Nodes are gone")


async def test_another_tenants_node_address_stays_its_own(fleet: FleetHandle) -> None:
    """Even where the operator lets alpha's nodes be anywhere on loopback, an address beta's
    node held first stays beta's: alpha cannot reach beta's NodePorts through it."""
    alpha, beta, mgmt, lay = (
        fleet.kube["alpha"],
        fleet.kube["beta"],
        fleet.kube["mgmt"],
        fleet.layout,
    )
    async with namespace_in(fleet, "steal", ["alpha", "beta"]) as ns:
        svc = await deploy_echo(beta, ns, "secret", replicas=1, svc_type="NodePort")
        port = svc["spec"]["ports"][0]["nodePort"]
        # alpha's own Service on the same nodePort, with no pods: only beta's node answers.
        decoy = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "decoy"},
            "spec": {"type": "NodePort", "selector": {"app": "nothing"},
                     "ports": [{"port": 80, "targetPort": 8080, "nodePort": port}]},
        }  # fmt: skip
        await alpha.create(SERVICES, decoy, ns)
        h = host("steal")
        await alpha.create(
            INGRESSES, ingress_obj("steal", [rule(h, ("/", "Prefix", backend("decoy")))]), ns
        )
        stolen = fleet.node_ips("beta")[0]
        async with (
            tenant_policy(mgmt, "alpha", {"nodeCIDRs": ["127.0.0.0/8"]}),
            hand_written_node(alpha, "evil-steal", stolen),
        ):

            async def listed() -> bool:
                record = await tenant_record(mgmt, "alpha")
                # Accepted by the tenant side (inside its CIDRs) ...
                assert stolen in record["status"]["nodeAddresses"], record["status"]
                return True

            await eventually(listed, what="alpha listing beta's node address")
            await until_served(lay, h, status=503)
            # ... but the address stays with beta, who claimed it first.
            for _ in range(20):
                status, body = await lb_get(lay, h)
                assert not from_app("secret")(body), "alpha reached beta's NodePort"
                assert status == 503, (status, body)
            log = (lay.logs / "kubelbd.log").read_text(errors="replace")
            assert f"tenant alpha: node address {stolen} is tenant beta's" in log

            async def told() -> bool:
                accepted = conditions(await tenant_record(mgmt, "alpha"))["NodesAccepted"]
                assert f"{stolen} is tenant beta's" in accepted["message"], accepted
                return bool(accepted["status"] == "False")

            await eventually(told, what="alpha's Tenant record saying the address is beta's")


# ---- hosts -----------------------------------------------------------------------------------


async def test_an_older_ingress_cannot_take_a_host_another_tenant_serves(
    fleet: FleetHandle, beta_app: tuple[str, str]
) -> None:
    """Ownership is by when kubelbd first saw the claim, not the tenant's creationTimestamp:
    alpha's Ingress, made before beta's, gains beta's host in an edit and gets nothing."""
    alpha, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    _, victim = beta_app
    async with namespace_in(fleet, "capture", ["alpha"]) as ns:
        await deploy_app(alpha, ns, "thief")
        own = host("thief")
        old = ingress_obj("old", [rule(own, ("/", "Prefix", backend("thief")))])
        # Older than beta's Ingress by its tenant's clock: made before, backdated as well.
        await alpha.create(INGRESSES, old, ns)
        await until_served(lay, own, check=from_app("thief"))
        grab = [rule(own, ("/", "Prefix", backend("thief"))),
                rule(victim, ("/", "Prefix", backend("thief")))]  # fmt: skip
        annotations = {"kubelb.io/tls-acme": "true"}
        patch = {"metadata": {"annotations": annotations},
                 "spec": {"rules": grab, "tls": [{"hosts": [victim]}]}}  # fmt: skip
        await alpha.patch(INGRESSES, "old", patch, ns)

        async def conflict() -> bool:
            route = await mgmt.get(ROUTES, f"{ns}.old", "tenant-alpha")
            cond = conditions(route).get("Conflict", {})
            assert cond.get("status") == "True" and "beta" in cond["message"], cond
            return True

        await eventually(
            conflict, timeout=RECORD_STATUS_TIMEOUT, what="alpha's claim reported as a conflict"
        )
        for _ in range(10):
            status, body = await lb_get(lay, victim)
            assert status == 200 and from_app("victim")(body), (status, body)
        # No certificate is issued to alpha for a host it does not hold.
        assert await mgmt.get_or_none(SECRETS, f"{ns}.old-tls", "tenant-alpha") is None


async def test_hosts_outside_the_allowed_domains_are_refused(fleet: FleetHandle) -> None:
    alpha, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    async with namespace_in(fleet, "domains", ["alpha"]) as ns:
        await deploy_app(alpha, ns, "app")
        allowed, other = f"{unique('ok')}.alpha.test", host("other")
        rules = [rule(allowed, ("/", "Prefix", backend("app"))),
                 rule(other, ("/", "Prefix", backend("app")))]  # fmt: skip
        async with tenant_policy(mgmt, "alpha", {"allowedDomains": ["**.alpha.test"]}):
            await alpha.create(INGRESSES, ingress_obj("both", rules), ns)
            await until_served(lay, allowed, check=from_app("app"))

            await event_seen(alpha, ns, "both", "HostNotAllowed")
            assert (await lb_get(lay, other))[0] == 404
        # The policy back to open: the other host is served too.
        await until_served(lay, other, check=from_app("app"))


# ---- quotas ------------------------------------------------------------------------------------


async def test_a_route_limit_keeps_the_oldest_and_refuses_the_rest(fleet: FleetHandle) -> None:
    alpha, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    async with namespace_in(fleet, "quota", ["alpha"]) as ns:
        await deploy_app(alpha, ns, "app")
        first, second = host("first"), host("second")
        await alpha.create(
            INGRESSES, ingress_obj("first", [rule(first, ("/", "Prefix", backend("app")))]), ns
        )
        await until_served(lay, first)
        held = await settled_route_count(fleet)
        async with tenant_policy(mgmt, "alpha", {"limits": {"routes": held}}):
            await alpha.create(
                INGRESSES,
                ingress_obj("second", [rule(second, ("/", "Prefix", backend("app")))]),
                ns,
            )

            await event_seen(alpha, ns, "second", "LimitExceeded")
            assert (await lb_get(lay, second))[0] == 404
            assert (await lb_get(lay, first))[0] == 200  # the older one keeps working
            assert await mgmt.get_or_none(ROUTES, f"{ns}.second", "tenant-alpha") is None
            # Room again: the waiting Ingress is served.
            await alpha.delete(INGRESSES, "first", ns)
            await until_served(lay, second)


async def settled_route_count(fleet: FleetHandle) -> int:
    """alpha's Route records, once namespaces earlier tests deleted are gone (their records
    go with them, which would make room under a limit meant to be full)."""
    alpha, mgmt = fleet.kube["alpha"], fleet.kube["mgmt"]

    async def settled() -> int:
        namespaces, _ = await alpha.list(NAMESPACES)
        going = [
            n["metadata"]["name"] for n in namespaces if n["metadata"].get("deletionTimestamp")
        ]
        assert not going, going
        ingresses, _ = await alpha.list(INGRESSES)
        live = {f"{i['metadata']['namespace']}.{i['metadata']['name']}" for i in ingresses}
        held, _ = await mgmt.list(ROUTES, "tenant-alpha")
        names = {r["metadata"]["name"] for r in held}
        assert names <= live, names - live  # no record of an Ingress that is gone
        return len(names)  # at least the test's own

    return await eventually(settled, timeout=60, what="alpha's routes settled")


# ---- records ------------------------------------------------------------------------------------


async def test_a_record_outside_a_tenant_namespace_is_ignored(fleet: FleetHandle) -> None:
    """Anyone who may write Routes into some namespace of the management cluster must not be
    able to speak for a tenant by its label."""
    mgmt, lay = fleet.kube["mgmt"], fleet.layout
    h = host("stray")
    spec: Any = {
        "source": {"kind": "Ingress", "namespace": "x", "name": "stray", "uid": "u",
                   "creationTimestamp": "2000-01-01T00:00:00Z"},
        "rules": [{"host": h, "paths": [{"path": "/", "pathType": "Prefix",
                   "backends": [{"service": "s", "port": "80", "nodePort": 30080}]}]}],
    }  # fmt: skip
    stray = record_object("Route", "alpha", "x.stray", spec)
    stray["metadata"]["namespace"] = NAMESPACE
    await mgmt.create(ROUTES, stray, NAMESPACE)
    try:
        log = lay.logs / "kubelbd.log"

        async def warned() -> bool:
            return f"{NAMESPACE}/x.stray" in log.read_text(errors="replace")

        await eventually(warned, what="a warning naming the stray record")
        assert (await lb_get(lay, h))[0] == 404
    finally:
        await mgmt.delete(ROUTES, "x.stray", NAMESPACE)


# ---- TLS ------------------------------------------------------------------------------------


async def https(
    fleet: FleetHandle,
    sni: str,
    cafile: str,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    status, body, cert = await https_request(
        f"127.0.0.1:{fleet.layout.envoy_https_port}", sni, "/", cafile, host_header=host,
        headers=headers,
    )  # fmt: skip
    return status, body, cert


async def served_over_https(
    fleet: FleetHandle, name: str, crt: bytes, app: str, tmp_path: Path
) -> Any:
    """Poll until `name` answers over HTTPS from `app`, with the certificate `crt`; its body."""
    cafile = tmp_path / f"{name}.pem"
    cafile.write_bytes(crt)

    async def served() -> Any:
        status, body, _ = await https(fleet, name, str(cafile))
        assert status == 200 and from_app(app)(body), (name, status, body)
        return body

    return await eventually(served, timeout=60, what=f"https://{name}")


def _since(log: Path, offset: int) -> str:
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


async def test_odd_certificates_and_long_names_are_that_ingress_problem_only(
    fleet: FleetHandle, beta_app: tuple[str, str], tmp_path: Path
) -> None:
    """A certificate on a curve Envoy does not take, and a TLS Secret named 240 characters
    long, once made kubelbd raise out of its data plane and crash-loop, so nobody's
    configuration changed again: now they are that Ingress's conditions, and beta's changes
    keep flowing."""
    alpha, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    victim_ns, _ = beta_app
    log = lay.logs / "kubelbd.log"
    offset = log.stat().st_size
    async with namespace_in(fleet, "oddtls", ["alpha"]) as ns:
        curve_host, long_host = host("curve"), host("long")
        odd = certs.self_signed(curve_host, ec.SECP256K1())
        await alpha.create(SECRETS, tls_secret("curve-tls", odd), ns)
        long_name = "l" * 240
        long_pair = certs.self_signed(long_host)
        await alpha.create(SECRETS, tls_secret(long_name, long_pair), ns)
        await tls_site(alpha, ns, "curve", curve_host, "curve-tls")
        await tls_site(alpha, ns, "long", long_host, long_name)
        await route_condition(
            mgmt, "alpha", f"{ns}.curve", "CertificateReady", reason="UnsupportedKey"
        )
        # The Secret with a 240-character name is served.
        await served_over_https(fleet, long_host, long_pair.cert_pem(), "long", tmp_path)
        # kubelbd is alive and every tenant's changes go on.
        await beta_still_served(fleet, victim_ns, "after-odd")
    since = _since(log, offset)
    assert "Traceback" not in since, since[-3000:]


async def test_domain_fronting_gets_421_and_backends_see_the_client(
    fleet: FleetHandle, beta_app: tuple[str, str], tmp_path: Path
) -> None:
    """TLS with alpha's SNI (and certificate) and beta's Host was answered by beta's backend;
    and backends saw X-Forwarded-For 192.0.2.2 rather than the client. Nor does a client's
    own `x-kubelbd-scope` (the plain listener's scope key) reach a backend, over either."""
    alpha, lay = fleet.kube["alpha"], fleet.layout
    _, victim = beta_app
    async with namespace_in(fleet, "front", ["alpha"]) as ns:
        own = host("front")
        pair = certs.self_signed(own)
        crt = pair.cert_pem()
        await alpha.create(SECRETS, tls_secret("front-tls", pair), ns)
        await tls_site(alpha, ns, "front", own, "front-tls")
        body = await served_over_https(fleet, own, crt, "front", tmp_path)
        cafile = tmp_path / f"{own}.pem"
        assert body["headers"]["X-Forwarded-For"] == ["127.0.0.1"], body["headers"]
        status, body, _ = await https(fleet, own, str(cafile), host=victim)
        assert status == 421, body
        assert not from_app("victim")(body)
        # Plain HTTP: the client's address too, after whatever the client claimed.
        got, body, _ = await http_get(
            f"http://127.0.0.1:{lay.envoy_http_port}/", host=victim,
            headers={"X-Forwarded-For": "203.0.113.9"},
        )  # fmt: skip
        assert got == 200
        assert body["headers"]["X-Forwarded-For"] == ["203.0.113.9,127.0.0.1"], body["headers"]
        # A scope key claimed by the client picks nothing and reaches no backend.
        got, body, _ = await http_get(
            f"http://127.0.0.1:{lay.envoy_http_port}/", host=victim, headers={SCOPE_HEADER: own}
        )
        assert got == 200 and from_app("victim")(body), body
        assert SCOPE_HEADER not in {k.lower() for k in body["headers"]}, body["headers"]
        status, body, _ = await https(fleet, own, str(cafile), headers={SCOPE_HEADER: victim})
        assert status == 200 and from_app("front")(body), body
        assert SCOPE_HEADER not in {k.lower() for k in body["headers"]}, body["headers"]


async def test_many_certificates_cost_envoy_no_inotify_instance_each(
    fleet: FleetHandle, tmp_path: Path
) -> None:
    """One SDS file per certificate was one inotify instance each: about 107 certificates
    (the default limit is 128 per user) made Envoy abort, and again on every restart. 130
    certificates here; Envoy serves them all and its inotify instances stay few."""
    alpha, lay = fleet.kube["alpha"], fleet.layout
    n = 130
    async with namespace_in(fleet, "certs", ["alpha"]) as ns:
        await deploy_app(alpha, ns, "many")
        hosts = [host(f"c{i}") for i in range(n)]
        pems = {}
        for i, h in enumerate(hosts):
            pair = certs.self_signed(h)
            pems[h] = pair.cert_pem()
            await alpha.create(SECRETS, tls_secret(f"c{i}-tls", pair), ns)
        ingress = ingress_obj(
            "many",
            [rule(h, ("/", "Prefix", backend("many"))) for h in hosts],
            tls=[{"hosts": [h], "secretName": f"c{i}-tls"} for i, h in enumerate(hosts)],
        )
        await alpha.create(INGRESSES, ingress, ns)
        for h in (hosts[0], hosts[n // 2], hosts[-1]):
            await served_over_https(fleet, h, pems[h], "many", tmp_path)
        inotify, keys = await asyncio.to_thread(_envoy_inotify_and_keys, config_dir(lay))
        assert inotify < 64, inotify
        # And no private key on Envoy's config volume: they go over kubelbd's secret server.
        assert keys == [], keys


def _envoy_inotify_and_keys(volume: Path) -> tuple[int, list[Path]]:
    """Envoy's inotify instances, and the files on its config volume holding a private key."""
    pid = int((volume / "envoy.pid").read_text())
    inotify = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            inotify += "inotify" in os.readlink(fd)
        except FileNotFoundError:
            continue  # closed since it was listed (a connection Envoy finished): not one
    keys = [f for f in volume.rglob("*") if f.is_file() and b"PRIVATE KEY" in f.read_bytes()]
    return inotify, keys
