"""Gateway API in the fleet: its CRDs in every tenant API server, and the conformance build.

The CRDs come from the same pinned release as the conformance suite (hack/build-conformance
copies `config/crd/` of sigs.k8s.io/gateway-api next to the binaries), because the suite refuses
to start unless every installed Gateway API CRD carries its own bundle-version.

One channel only: the suite also refuses CRDs of mixed channels ("multiple gateway API CRDs
channels detected"). The standard channel of v1.6.3 already holds every kind kubelbd can serve
(GatewayClass, Gateway, HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, UDPRoute, ListenerSet,
ReferenceGrant, BackendTLSPolicy); the experimental channel's extra kinds (XBackend,
XBackendTrafficPolicy, XMesh) would make the install mixed. The safe-upgrades
ValidatingAdmissionPolicy in the same folder is not a CRD and is left out: it would only stop
someone switching a tenant to the experimental channel by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .fleet import run_build

if TYPE_CHECKING:
    from .fleet import Fleet

CHANNEL = "standard"
BUNDLE_VERSION = "gateway.networking.k8s.io/bundle-version"
CHANNEL_ANNOTATION = "gateway.networking.k8s.io/channel"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

#: The kinds a Gateway hangs off first, then the routes, then what routes refer to; the order
#: matters to nobody (the API server takes CRDs in any order) but makes a slow install read
#: sensibly and keeps the order stable across releases that add a file.
ORDER = ("gatewayclasses", "gateways", "listenersets", "httproutes", "grpcroutes", "tlsroutes",
         "tcproutes", "udproutes", "referencegrants", "backendtlspolicies")  # fmt: skip

Document = dict[str, Any]

#: libyaml's loader when PyYAML has it: 1.2 MB of schemas in 0.4 s instead of 5 s.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def build() -> Path:
    """The conformance bin directory (the suite's test binary and echo-basic), built by
    hack/build-conformance on first use (~4 minutes cold), at once when cached."""
    return run_build("build-conformance")


def crd_dir(bin_dir: Path, channel: str = CHANNEL) -> Path:
    """Where hack/build-conformance put a channel's CRDs: next to its bin directory."""
    return bin_dir.parent / "crd" / channel


def _rank(path: Path) -> tuple[int, str]:
    plural = path.stem.rpartition("_")[2]
    return (ORDER.index(plural) if plural in ORDER else len(ORDER), path.name)


def crd_files(directory: Path) -> list[Path]:
    """The CRD manifests of one channel's folder, in install order: every `*.yaml` except the
    kustomization and the admission policy (they are not CRDs)."""
    files = [
        p
        for p in directory.glob("*.yaml")
        if p.name != "kustomization.yaml" and "_vap_" not in p.name
    ]
    return sorted(files, key=_rank)


def crd_documents(files: Iterable[Path]) -> list[Document]:
    """The CustomResourceDefinitions in these files, in file order (anything else skipped)."""
    out = []
    for f in files:
        for doc in yaml.load_all(f.read_text(), Loader=_LOADER):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out.append(doc)
    return out


def served_path(crd: Document) -> str:
    """A collection URL that answers once the CRD is served (its storage version)."""
    spec = crd["spec"]
    version = next(v["name"] for v in spec["versions"] if v.get("storage"))
    return f"/apis/{spec['group']}/{version}/{spec['names']['plural']}?limit=1"


def missing(installed: Iterable[Document], wanted: Iterable[Document]) -> list[Document]:
    """The wanted CRDs that are not installed with the same bundle version and channel.

    `installed` may be metadata only (a PartialObjectMetadataList's items): only names and
    annotations are compared, so the check costs one small list, not 1.2 MB of schemas."""

    def stamp(d: Document) -> tuple[str | None, str | None]:
        ann = d["metadata"].get("annotations") or {}
        return ann.get(BUNDLE_VERSION), ann.get(CHANNEL_ANNOTATION)

    have = {d["metadata"]["name"]: stamp(d) for d in installed}
    return [d for d in wanted if have.get(d["metadata"]["name"]) != stamp(d)]


METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def install(fleet: Fleet, cluster: str, crds: list[Document]) -> int:
    """Server-side apply the CRDs that are missing or of another release into one cluster, then
    wait until each kind is served. Returns how many were applied (0: nothing to do)."""
    listed = fleet.request(cluster, "GET", CRDS, accept=METADATA_ONLY, timeout=15.0)
    todo = missing(listed.get("items") or [], crds)
    for doc in todo:
        name = doc["metadata"]["name"]
        # Server-side: HTTPRoute's schema alone is ~430 KB, too big for the last-applied
        # annotation a client-side apply would write.
        fleet.request(
            cluster,
            "PATCH",
            f"{CRDS}/{name}?fieldManager=hack-fleet&force=true",
            doc,
            timeout=30.0,
            content_type="application/apply-patch+yaml",
        )
    paths = [served_path(doc) for doc in todo]

    def served() -> bool:
        while paths:
            fleet.api(cluster, paths[0])  # raises (and is retried) until served
            paths.pop(0)
        return True

    fleet.wait_for(f"{cluster}: the Gateway API kinds to be served", served,
                   [f"{cluster}/apiserver"], timeout=60.0)  # fmt: skip
    return len(todo)


def install_all(fleet: Fleet, clusters: list[str]) -> None:
    """The CRDs of the pinned release into every one of these clusters, a few at a time: each
    takes seconds (1.2 MB of schemas, then the kinds to be served), mostly waiting."""
    crds = crd_documents(crd_files(crd_dir(build())))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in pool.map(lambda c: install(fleet, c, crds), clusters):
            pass  # an error in any cluster is raised here
