"""kubelbd runs with deploy/'s RBAC (the fleet applies it and gives kubelbd a token of that
ServiceAccount); a permission it lacks is a named failure, never a silent wait.

The fleet's replicas prove the manifests' permissions suffice (every other e2e test runs on
them). Here a third kubelbd, with deploy/'s Deployment arguments and a ServiceAccount whose
Role lacks one rule, must say at once which informer the API refuses and why: in /readyz's
answer (what the kubelet and `hack/fleet` show) and in its log.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubefleet import lb, manifests
from kubefleet.layout import ROOT, Replica

from kubelbd.objects import CLUSTER_ROLE_BINDINGS, SERVICE_ACCOUNTS, Obj, Resource

from .support import FleetHandle, eventually, free_port, unique

pytestmark = pytest.mark.e2e

ROLES = Resource("rbac.authorization.k8s.io/v1", "roles")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io/v1", "rolebindings")


def without(role: Obj, resource: str) -> Obj:
    """deploy/'s Role with every rule naming `resource` left out."""
    out = copy.deepcopy(role)
    out["rules"] = [r for r in out["rules"] if resource not in r.get("resources", [])]
    assert len(out["rules"]) < len(role["rules"]), f"deploy/'s Role has no {resource} rule"
    return out


@pytest.fixture
async def lacking(fleet: FleetHandle, tmp_path: Path) -> AsyncIterator[Path]:
    """A kubeconfig for a ServiceAccount with deploy/'s ClusterRole and its Role minus the
    ConfigMap rule (the ACME answers every replica watches)."""
    mgmt = fleet.kube["mgmt"]
    name = unique("lacking")
    docs = await asyncio.to_thread(manifests.rbac_documents)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": lb.NAMESPACE}]
    role = without(role, "configmaps") | {"metadata": {"name": name}}
    await mgmt.create(SERVICE_ACCOUNTS, {"metadata": {"name": name}}, lb.NAMESPACE)
    await mgmt.create(ROLES, role, lb.NAMESPACE)
    await mgmt.create(
        ROLE_BINDINGS,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        },
        lb.NAMESPACE,
    )
    await mgmt.create(
        CLUSTER_ROLE_BINDINGS,
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_role["metadata"]["name"],
            },
            "subjects": subject,
        },
    )
    try:
        token = await mgmt.request(
            "POST",
            SERVICE_ACCOUNTS.path(lb.NAMESPACE, name, "token"),
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "spec": {"expirationSeconds": 3600}},
        )  # fmt: skip
        admin: dict[str, Any] = yaml.safe_load(fleet.layout.kubeconfig("mgmt").read_text())
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": name, "user": {"token": token["status"]["token"]}}],
            "contexts": [{"name": name, "context": {"cluster": "mgmt", "user": name}}],
            "current-context": name,
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        yield path
    finally:
        await mgmt.delete(CLUSTER_ROLE_BINDINGS, name)
        await mgmt.delete(ROLE_BINDINGS, name, lb.NAMESPACE)
        await mgmt.delete(ROLES, name, lb.NAMESPACE)
        await mgmt.delete(SERVICE_ACCOUNTS, name, lb.NAMESPACE)


def spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=os.environ | {"KUBELBD_LOG_LEVEL": "info"},
        )


async def test_a_missing_permission_is_named_not_waited_on(
    fleet: FleetHandle, lacking: Path, tmp_path: Path
) -> None:
    lay = fleet.layout
    # A replica of its own: its own ports and config volume; it follows the fleet's leader
    # (same Lease), so it writes nothing whatever happens.
    r = Replica(9, *(free_port() for _ in range(4)))
    args = lb.deployment_args(lay, r, await asyncio.to_thread(manifests.kubelbd_args))
    log_path = tmp_path / "kubelbd.log"
    argv = [sys.executable, "-m", "kubelbd", *args, f"--kubeconfig={lacking}"]
    proc = await asyncio.to_thread(spawn, argv, log_path)
    try:
        readyz = f"http://127.0.0.1:{r.health_port}/readyz"

        async def named() -> str:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            async with aiohttp.ClientSession() as s, s.get(readyz) as resp:
                body = await resp.text()
                assert resp.status == 503, body
                assert "configmaps" in body and "403" in body, body
                return body

        body = await eventually(named, timeout=30, what="readyz to name the refused informer")
        assert "forbidden" in body.lower()
        logged = log_path.read_text()
        assert "Informer(mgmt:configmaps): 403 Forbidden" in logged, logged[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
