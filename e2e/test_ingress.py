"""Ingress load balancing end to end: tenant Ingress → Route record → Envoy → tenant pods.

Every test sends real HTTP through Envoy's listener and checks which pod (and so which
Service) answered. Each test uses its own namespace and hostnames.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from kubelbd.objects import INGRESSES, SECRETS, SERVICES, Obj

from .support import (
    RECORD_STATUS_TIMEOUT,
    FleetHandle,
    backend,
    conditions,
    deploy_app,
    eventually,
    ingress_obj,
    lb_get,
    namespace_in,
    route_condition,
    rule,
    unique,
    until_served,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def ns(fleet: FleetHandle) -> AsyncIterator[str]:
    """The same fresh namespace in every tenant."""
    async with namespace_in(fleet, "ing") as name:
        yield name


def host(label: str) -> str:
    return f"{unique(label)}.example.test"


def from_app(app: str):  # type: ignore[no-untyped-def]
    return lambda body: isinstance(body, dict) and body.get("pod", "").startswith(f"{app}-")


async def test_create_update_delete_converge(fleet: FleetHandle, ns: str) -> None:
    kube, lay = fleet.kube["alpha"], fleet.layout
    await deploy_app(kube, ns, "one")
    await deploy_app(kube, ns, "two")
    h = host("cud")
    ing = ingress_obj("app", [rule(h, ("/", "Prefix", backend("one")))])
    await kube.create(INGRESSES, ing, ns)
    body = await until_served(lay, h, "/hello", check=from_app("one"))
    assert body["host"] == h and body["path"] == "/hello" and body["namespace"] == ns

    # Status: the public address, once Envoy serves it.
    async def address() -> bool:
        obj = await kube.get(INGRESSES, "app", ns)
        ingress = obj.get("status", {}).get("loadBalancer", {}).get("ingress")
        return bool(ingress == [{"ip": "127.0.0.1"}])

    await eventually(address, what="Ingress status address")

    # Update: a new path to another Service.
    ing["spec"]["rules"] = [
        rule(h, ("/", "Prefix", backend("one")), ("/two", "Prefix", backend("two")))
    ]
    await kube.patch(INGRESSES, "app", {"spec": ing["spec"]}, ns)
    await until_served(lay, h, "/two/x", check=from_app("two"))
    await until_served(lay, h, "/other", check=from_app("one"))

    # Delete: the host stops being served.
    await kube.delete(INGRESSES, "app", ns)
    await until_served(lay, h, "/hello", status=404)


async def test_path_types_and_precedence(fleet: FleetHandle, ns: str) -> None:
    kube, lay = fleet.kube["alpha"], fleet.layout
    for app in ("root", "prefix", "exact", "impl", "longer"):
        await deploy_app(kube, ns, app)
    h = host("paths")
    await kube.create(
        INGRESSES,
        ingress_obj(
            "paths",
            [
                rule(
                    h,
                    ("/", "Prefix", backend("root")),
                    ("/foo/", "Prefix", backend("prefix")),
                    ("/foo", "Exact", backend("exact")),
                    ("/foo/bar/baz", "Prefix", backend("longer")),
                    ("/impl", "ImplementationSpecific", backend("impl")),
                )
            ],
        ),
        ns,
    )
    await until_served(lay, h, "/foo", check=from_app("exact"))  # Exact beats Prefix on a tie
    expected = {
        "/foo/": "prefix",  # trailing slash in the rule is ignored: /foo/ is under /foo
        "/foo/bar": "prefix",
        "/foobar": "root",  # element-wise: /foobar is not under /foo
        "/foo/bar/baz/qux": "longer",  # longest match wins
        "/foo/bar/bazz": "prefix",
        "/impl/x": "impl",  # ImplementationSpecific is element-wise Prefix here
        "/implx": "root",
        "/foo?q=1": "exact",  # the query string is not part of the path
        "/": "root",
    }
    for path, app in expected.items():
        # Each backend's pods come up on their own schedule; the routing must then be exact.
        await until_served(lay, h, path, check=from_app(app))


async def test_wildcard_host_matches_exactly_one_label(fleet: FleetHandle, ns: str) -> None:
    kube, lay = fleet.kube["alpha"], fleet.layout
    await deploy_app(kube, ns, "wild")
    domain = host("wild")
    await kube.create(
        INGRESSES, ingress_obj("wild", [rule(f"*.{domain}", ("/", "Prefix", backend("wild")))]), ns
    )
    await until_served(lay, f"a.{domain}", check=from_app("wild"))
    # Hosts are case-insensitive (polled: every node's kube-proxy must know the pod first).
    body = await until_served(lay, f"B.{domain.upper()}")
    assert body["pod"].startswith("wild-"), body
    for miss in (domain, f"a.b.{domain}"):
        status, body = await lb_get(lay, miss)
        assert not (status == 200 and body["pod"].startswith("wild-")), f"{miss} matched *.{domain}"


async def test_default_backend_ports_by_name_and_shared_hosts(fleet: FleetHandle, ns: str) -> None:
    kube, lay = fleet.kube["alpha"], fleet.layout
    for app in ("a", "b", "fallback"):
        await deploy_app(kube, ns, app)
    h = host("shared")
    # Two Ingresses add rules to one host; ports by name and by number.
    await kube.create(
        INGRESSES, ingress_obj("first", [rule(h, ("/a", "Prefix", backend("a", "http")))]), ns
    )
    await kube.create(
        INGRESSES,
        ingress_obj(
            "second",
            [rule(h, ("/b", "Prefix", backend("b", 80)))],
            default_backend=backend("fallback", "http"),
        ),
        ns,
    )
    await until_served(lay, h, "/a/1", check=from_app("a"))
    await until_served(lay, h, "/b/1", check=from_app("b"))
    # A path no rule matches goes to the defaultBackend of an Ingress of that host.
    await until_served(lay, h, "/elsewhere", check=from_app("fallback"))
    # The defaultBackend also made alpha the owner of the catch-all; give it back before the
    # next test, so unknown hosts answer 404 again.
    await kube.delete(INGRESSES, "second", ns)
    await until_served(lay, host("unknown"), status=404)


async def test_backend_problems_are_reported_and_isolated(fleet: FleetHandle, ns: str) -> None:
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    await deploy_app(kube, ns, "good")
    h = host("bad")
    await kube.create(
        INGRESSES,
        ingress_obj(
            "mixed",
            [
                rule(
                    h,
                    ("/", "Prefix", backend("good")),
                    ("/missing", "Prefix", backend("nope")),
                    ("/badport", "Prefix", backend("good", "grpc")),
                )
            ],
        ),
        ns,
    )
    await until_served(lay, h, "/", check=from_app("good"))
    # The broken paths answer 503 instead of falling through to "/".
    await until_served(lay, h, "/missing/x", status=503)
    await until_served(lay, h, "/badport", status=503)

    from kubelbd.records.names import ROUTES

    async def accepted_false() -> Obj:
        route = await mgmt.get(ROUTES, f"{ns}.mixed", "tenant-alpha")
        conds = conditions(route)
        assert conds.get("Accepted", {}).get("status") == "False", conds
        return conds["Accepted"]

    cond = await eventually(
        accepted_false, timeout=RECORD_STATUS_TIMEOUT, what="Accepted=False on the Route"
    )
    assert "nope" in cond["message"] and "grpc" in cond["message"]

    async def warning_events() -> set[str]:
        from kubelbd.objects import EVENTS

        events, _ = await kube.list(EVENTS, ns, fieldSelector="involvedObject.name=mixed")
        reasons = {e["reason"] for e in events if e["type"] == "Warning"}
        assert {"BackendNotFound", "BackendPortNotFound"} <= reasons, reasons
        return reasons

    await eventually(warning_events, what="Warning Events on the Ingress")

    # Fixing it converges; a Service appearing later is picked up.
    await deploy_app(kube, ns, "nope")
    await until_served(lay, h, "/missing/x", check=from_app("nope"))


async def test_host_belongs_to_the_first_tenant(fleet: FleetHandle, ns: str) -> None:
    alpha, beta, mgmt, lay = (
        fleet.kube["alpha"],
        fleet.kube["beta"],
        fleet.kube["mgmt"],
        fleet.layout,
    )
    await deploy_app(alpha, ns, "owner")
    await deploy_app(beta, ns, "thief")
    h = host("taken")
    await alpha.create(
        INGRESSES, ingress_obj("site", [rule(h, ("/", "Prefix", backend("owner")))]), ns
    )
    await until_served(lay, h, check=from_app("owner"))
    beta_only = host("betaown")
    await beta.create(
        INGRESSES,
        ingress_obj(
            "site",
            [
                rule(h, ("/", "Prefix", backend("thief"))),
                rule(beta_only, ("/", "Prefix", backend("thief"))),
            ],
        ),
        ns,
    )
    await until_served(lay, beta_only, check=from_app("thief"))  # its other host works

    from kubelbd.records.names import ROUTES

    async def conflict() -> Obj:
        route = await mgmt.get(ROUTES, f"{ns}.site", "tenant-beta")
        conds = conditions(route)
        assert conds.get("Conflict", {}).get("status") == "True", conds
        return conds["Conflict"]

    cond = await eventually(
        conflict, timeout=RECORD_STATUS_TIMEOUT, what="Conflict=True on beta's Route"
    )
    assert h in cond["message"] and "alpha" in cond["message"]
    for _ in range(5):  # polled past pod start-up, then never beta's pod
        body = await until_served(lay, h)
        assert body["pod"].startswith("owner-"), body

    async def conflict_event() -> bool:
        from kubelbd.objects import EVENTS

        events, _ = await beta.list(EVENTS, ns, fieldSelector="involvedObject.name=site")
        assert any(e["reason"] == "HostConflict" for e in events), events
        return True

    await eventually(conflict_event, what="HostConflict Event on beta's Ingress")


async def test_other_classes_are_ignored_and_clusterip_twin_is_collected(
    fleet: FleetHandle, ns: str
) -> None:
    kube, lay = fleet.kube["alpha"], fleet.layout
    await deploy_app(kube, ns, "svc")
    h = host("cls")
    await kube.create(
        INGRESSES,
        ingress_obj("other", [rule(h, ("/", "Prefix", backend("svc")))], class_name="nginx"),
        ns,
    )
    mine, also = host("mine"), host("also")
    for name, hostname in (("mine", mine), ("also", also)):
        await kube.create(
            INGRESSES, ingress_obj(name, [rule(hostname, ("/", "Prefix", backend("svc")))]), ns
        )
    await until_served(lay, mine, check=from_app("svc"))
    await until_served(lay, also, check=from_app("svc"))
    status, body = await lb_get(lay, h)
    # Not ours: never routed to its backend (another test's catch-all may answer, or 404).
    assert not (status == 200 and from_app("svc")(body)), body
    twin = await kube.get(SERVICES, "kubelb-svc", ns)
    assert twin["spec"]["type"] == "NodePort"
    assert twin["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubelbd"
    # One of its two Ingresses goes: the twin stays for the other, which is still served.
    await kube.delete(INGRESSES, "mine", ns)
    await until_served(lay, mine, status=404)
    for _ in range(5):
        await until_served(lay, also, check=from_app("svc"))
    kept = await kube.get(SERVICES, "kubelb-svc", ns)
    assert kept["metadata"]["uid"] == twin["metadata"]["uid"]
    assert kept["spec"]["ports"] == twin["spec"]["ports"]  # same nodePorts: no reroute
    # The last one goes: so does the twin.
    await kube.delete(INGRESSES, "also", ns)

    async def twin_gone() -> bool:
        return await kube.get_or_none(SERVICES, "kubelb-svc", ns) is None

    await eventually(twin_gone, what="the NodePort twin to be garbage-collected")


async def test_a_very_large_tenant_object_breaks_nothing(fleet: FleetHandle, ns: str) -> None:
    """Watch events arrive one per line, and aiohttp refuses lines over its read limit
    (512 KiB here). A tenant TLS Secret of ~900 KB (under the API's 1 MiB), named by an
    Ingress of ours, must come through the watch like any other event: kubelbd copies it and
    finds its certificate bad, and no watch of Secrets (the tenant's, or the management
    cluster's, which gets the copy) fails and relists on the way."""
    kube, mgmt, lay = fleet.kube["alpha"], fleet.kube["mgmt"], fleet.layout
    log = lay.logs / "kubelbd.log"
    seen = log.stat().st_size
    await deploy_app(kube, ns, "big")
    # Watched from here on, not listed: kubelbd has synced this namespace's Secrets already.
    blob = base64.b64encode(b"x" * 700_000).decode()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "huge"},
        "data": {"tls.crt": blob, "tls.key": base64.b64encode(b"k").decode()},
    }
    h = host("huge")
    await kube.create(
        INGRESSES,
        ingress_obj(
            "huge",
            [rule(h, ("/", "Prefix", backend("big")))],
            tls=[{"hosts": [h], "secretName": "huge"}],
        ),
        ns,
    )
    await until_served(lay, h, "/", check=from_app("big"))
    await kube.create(SECRETS, secret, ns)

    async def copied() -> bool:
        copy = await mgmt.get(SECRETS, f"{ns}.huge", "tenant-alpha")
        assert copy["data"]["tls.crt"] == blob
        return True

    await eventually(copied, what="the 900 KB Secret copied into tenant-alpha")
    await route_condition(
        mgmt, "alpha", f"{ns}.huge", "CertificateReady", reason="InvalidCertificate"
    )
    # Changes still flow.
    after = host("after-huge")
    await kube.create(
        INGRESSES, ingress_obj("after", [rule(after, ("/", "Prefix", backend("big")))]), ns
    )
    await until_served(lay, after, "/", check=from_app("big"))
    with log.open("rb") as f:
        f.seek(seen)
        since = f.read().decode(errors="replace")
    watch_failures = [line for line in since.splitlines() if ":secrets)" in line]
    assert watch_failures == [], watch_failures
    assert "Traceback" not in since, since[-3000:]


async def test_the_catch_all_never_answers_another_tenants_host(
    fleet: FleetHandle, ns: str
) -> None:
    """alpha's defaultBackend is the catch-all: it answers unknown hosts and alpha's own hosts
    for paths their rules do not match, never a path of beta's host that beta's rules miss."""
    alpha, beta, lay = fleet.kube["alpha"], fleet.kube["beta"], fleet.layout
    await deploy_app(alpha, ns, "fallback")
    await deploy_app(alpha, ns, "aapp")
    await deploy_app(beta, ns, "bapp")
    mine, theirs = host("mine"), host("theirs")
    await beta.create(
        INGRESSES, ingress_obj("site", [rule(theirs, ("/app", "Prefix", backend("bapp")))]), ns
    )
    await alpha.create(
        INGRESSES,
        ingress_obj(
            "site",
            [rule(mine, ("/app", "Prefix", backend("aapp")))],
            default_backend=backend("fallback"),
        ),
        ns,
    )
    try:
        await until_served(lay, host("unknown"), "/x", check=from_app("fallback"))
        await until_served(lay, mine, "/app/1", check=from_app("aapp"))
        await until_served(lay, mine, "/other", check=from_app("fallback"))
        await until_served(lay, theirs, "/app/1", check=from_app("bapp"))
        for _ in range(5):
            status, body = await lb_get(lay, theirs, "/other")
            assert status == 404, body  # beta's host: not alpha's catch-all
    finally:
        # Give the catch-all back, so unknown hosts answer 404 in the next test.
        await alpha.delete(INGRESSES, "site", ns)
        await until_served(lay, host("unknown"), status=404)
