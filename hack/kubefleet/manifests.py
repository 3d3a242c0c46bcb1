"""deploy/ as the management cluster gets it, for the fleet and the tests.

The fleet runs kubelbd as a process, not a pod, but it should run it as deployed: with the
ServiceAccount and RBAC of deploy/ (so a missing permission fails the end-to-end tests, not a
production rollout) and with the Deployment's arguments. Both are read from the rendered
kustomization here, so there is one source of truth.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .fleet import build_binaries
from .layout import ROOT

DEPLOY = ROOT / "deploy"

#: What `rbac_documents` returns: who kubelbd is and what it may do, nothing that runs.
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
              "RoleBinding")  # fmt: skip

Document = dict[str, Any]


def kubectl() -> str:
    """$KUBECTL, else the fleet's own (hack/build-kube; returns at once once built)."""
    return os.environ.get("KUBECTL") or str(build_binaries() / "kubectl")


def render(directory: Path = DEPLOY) -> list[Document]:
    """`kubectl kustomize directory`, as documents."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rbac_documents(docs: list[Document] | None = None) -> list[Document]:
    """The Namespace, ServiceAccount, ClusterRoles, Roles and their bindings, in the order
    the kustomization renders them (namespaces and accounts first)."""
    return [d for d in (render() if docs is None else docs) if d.get("kind") in RBAC_KINDS]


def kubelbd_args(docs: list[Document] | None = None) -> list[str]:
    """The kubelbd container's arguments in the Deployment (`serve` first), unexpanded:
    `$(VAR)` references are the caller's to substitute."""
    deployments = [d for d in (render() if docs is None else docs) if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        raise ValueError(f"deploy/ renders {len(deployments)} Deployments, not one")
    containers = deployments[0]["spec"]["template"]["spec"]["containers"]
    for c in containers:
        if c["name"] == "kubelbd":
            return [str(a) for a in c.get("args") or []]
    raise ValueError("the Deployment has no container named kubelbd")


#: the Component that turns on Layer 4's service mode (its RBAC and the flag)
L4_SERVICE_MODE = DEPLOY / "l4-service-mode"
#: the Component that publishes names through external-dns's DNSEndpoints (RBAC and flag)
DNS_ENDPOINTS = DEPLOY / "dns-endpoints"
#: external-dns's DNSEndpoint CRD, for a management cluster without external-dns (the fleet)
DNSENDPOINT_CRD = Path(__file__).parent / "dnsendpoints.externaldns.k8s.io.yaml"

#: the flags of --dns-provider=rfc2136, which the fleet adds for its BIND (lb.kubelbd_proc)
RFC2136_FLAGS = ("--dns-server", "--dns-zone", "--dns-tsig-name", "--dns-tsig-algorithm",
                 "--dns-tsig-secret-file")  # fmt: skip


def dns_provider(args: list[str]) -> str:
    """The --dns-provider the arguments choose (the last one given; rfc2136 by default)."""
    chosen = [a.partition("=")[2] for a in args if a.startswith("--dns-provider=")]
    return chosen[-1] if chosen else "rfc2136"


def without_rfc2136(args: list[str]) -> list[str]:
    """`args` without the RFC 2136 flags: kubelbd refuses them with --dns-provider=dnsendpoint."""
    return [a for a in args if a.partition("=")[0] not in RFC2136_FLAGS]


def with_components(tmp: Path, *components: Path) -> list[Document]:
    """The base with these Components, rendered through an overlay in `tmp` (kustomize wants
    relative paths to what an overlay includes), as an operator's overlay would."""
    rel = [os.path.relpath(p, tmp) for p in (DEPLOY, *components)]
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": rel[:1], "components": rel[1:]})
    )
    return render(tmp)


def component_rbac(component: Path) -> list[Document]:
    """The RBAC a Component adds (its rbac.yaml), as written."""
    docs = yaml.safe_load_all((component / "rbac.yaml").read_text())
    return [d for d in docs if d and d.get("kind") in RBAC_KINDS]
