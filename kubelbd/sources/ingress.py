"""The Ingress source: a tenant Ingress (plus the tenant's Services) becomes a Route spec.

Everything about the tenant cluster that the data plane needs is resolved here, once: hosts
lower-cased, paths normalized, Service ports resolved to the nodePorts Envoy will dial. What
cannot be resolved is kept in the record with a `problem`, so that path answers 503 instead of
silently falling through to a shorter, wrong match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..objects import (
    INGRESS_CLASSES,
    INGRESSES,
    MANAGED_BY,
    MANAGER,
    Obj,
    Resource,
    annotations_of,
)
from ..records.names import ROUTE, dotted
from ..records.problems import Problem, Translation
from ..records.status import SourceStatus
from ..records.types import (
    Backend,
    CertificateSource,
    HTTPPath,
    HTTPRule,
    PathType,
    RouteOptions,
    RouteSpec,
    TLSEntry,
)
from . import dnsnames, shapes
from .base import References, StatusPatch, TenantView, load_balancer_status_patch
from .common import HOST, PATH_CHARS, normalize_host, normalize_path, resolve_backend
from .dnsnames import not_allowed

INGRESS_CLASS = "kubelb"
CONTROLLER = "kubelb.io/ingress-controller"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"

PATH_TYPES: tuple[PathType, ...] = ("Exact", "Prefix", "ImplementationSpecific")

SSL_REDIRECT_ANNOTATION = "kubelb.io/ssl-redirect"
ACME_ANNOTATION = "kubelb.io/tls-acme"
CERT_MANAGER_CLUSTER_ISSUER = "cert-manager.io/cluster-issuer"
CERT_MANAGER_ISSUER = "cert-manager.io/issuer"


def certificate_source(annotations: Mapping[str, str]) -> CertificateSource:
    """Who provides an Ingress's certificates: the tenant's Secret, kubelbd's ACME client, or
    cert-manager in the management cluster."""
    if str(annotations.get(ACME_ANNOTATION, "")).lower() == "true":
        return "acme"
    if annotations.get(CERT_MANAGER_CLUSTER_ISSUER) or annotations.get(CERT_MANAGER_ISSUER):
        return "cert-manager"
    return "tenant"


def ingress_class_of(ingress: Obj) -> str | None:
    spec = ingress.get("spec") or {}
    name = spec.get("ingressClassName")
    if name:
        return str(name)
    legacy = annotations_of(ingress).get(CLASS_ANNOTATION)
    return str(legacy) if legacy else None


def is_ours(ingress: Obj, classes: Iterable[Obj]) -> bool:
    """Whether kubelbd serves this Ingress: its class is ours, or it has none and ours is the
    default."""
    ours = {
        c["metadata"].get("name"): c
        for c in classes
        if shapes.fits(shapes.IngressClass, c)
        and (c.get("spec") or {}).get("controller") == CONTROLLER
    }
    if not shapes.fits(shapes.IngressClassOf, ingress):
        return False  # whose it is cannot be told: not ours to report on either
    cls = ingress_class_of(ingress)
    if cls is not None:
        return cls == INGRESS_CLASS or cls in ours
    return any(annotations_of(c).get(DEFAULT_CLASS_ANNOTATION) == "true" for c in ours.values())


def route_name(namespace: str, name: str) -> str:
    return dotted(namespace, name)


def translate(ingress: Obj, view: TenantView) -> Translation[RouteSpec]:
    """The Route spec for one Ingress of ours."""
    malformed = shapes.problem(shapes.Ingress, ingress)
    if malformed is not None:
        return Translation(
            {"source": shapes.source_ref("Ingress", ingress), "rules": [],
             "problems": [malformed.spec()]},
            [malformed],
        )  # fmt: skip
    meta = ingress["metadata"]
    ns = meta["namespace"]
    spec = ingress.get("spec") or {}
    policy = view.policy
    annotations = annotations_of(ingress)
    dns = dnsnames.read(annotations, policy, ns, meta["name"], names=False)
    problems: list[Problem] = list(dns.problems)
    # `kubelb.io/hostname: auto`: what would be the catch-all is served under the automatic
    # name instead (a catch-all is every host nobody claims; few tenants may have it).
    auto = dns.hostnames[0] if dns.auto else ""
    rules: list[HTTPRule] = []
    for rule in spec.get("rules") or []:
        host = normalize_host(rule.get("host") or "") or auto
        if host and not HOST.fullmatch(host):
            problems.append(Problem("InvalidHost", f"host {host!r} is not a DNS name"))
            continue
        if not policy.allows_host(host):
            problems.append(not_allowed(host))
            continue
        paths: list[HTTPPath] = []
        for p in (rule.get("http") or {}).get("paths") or []:
            path_type = p.get("pathType") or "ImplementationSpecific"
            raw = p.get("path") or "/"
            if path_type not in PATH_TYPES:
                problems.append(Problem("InvalidPath", f"pathType {path_type!r} is unknown"))
                continue
            if not PATH_CHARS.fullmatch(raw):
                problems.append(Problem("InvalidPath", f"path {raw!r} cannot be matched"))
                continue
            backend = resolve_backend(ns, p.get("backend") or {}, view, problems)
            paths.append(
                {
                    "path": normalize_path(raw, path_type),
                    "pathType": path_type,
                    "backends": [backend],
                }
            )
        if paths:
            rules.append({"host": host, "paths": paths})
    out: RouteSpec = {
        "source": {
            "kind": "Ingress",
            "namespace": ns,
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "generation": meta.get("generation", 0),
            "creationTimestamp": meta.get("creationTimestamp", ""),
        },
        "rules": rules,
    }
    if spec.get("defaultBackend") and auto:
        backend = resolve_backend(ns, spec["defaultBackend"], view, problems)
        _serve_default_at(rules, auto, backend)
    elif spec.get("defaultBackend"):
        if policy.allows_host(""):
            out["defaultBackend"] = resolve_backend(ns, spec["defaultBackend"], view, problems)
        else:
            problems.append(not_allowed(""))
    if dns.options():
        out["dns"] = dns.options()
    issuer = certificate_source(annotations)
    cluster_issuer = annotations.get(CERT_MANAGER_CLUSTER_ISSUER)
    entries = spec.get("tls") or []
    if issuer == "cert-manager" and cluster_issuer and cluster_issuer not in policy.cluster_issuers:
        # No certificate at all: the operator decides which ClusterIssuers a tenant uses.
        problems.append(
            Problem(
                "IssuerNotAllowed",
                f"ClusterIssuer {cluster_issuer[:253]!r} is not one this tenant may use",
            )
        )
        cluster_issuer, entries = None, []
    tls: list[TLSEntry] = []
    for t in entries:
        named = sorted({normalize_host(h) for h in t.get("hosts") or []})
        # A certificate is served (or issued) for names the tenant may have, never others'.
        hosts = [h for h in named if policy.allows_host(h)]
        problems += [p for h in named if h not in hosts and (p := not_allowed(h)) not in problems]
        if named and not hosts:
            continue
        secret_name = t.get("secretName") or ""
        if not secret_name:
            if issuer == "tenant":
                problems.append(Problem("NoSecretName", "a tls entry has no secretName"))
                continue
            secret_name = f"{meta['name']}-tls"  # issued certificates need a name to live in
        tls.append({"hosts": hosts, "secretName": secret_name, "source": issuer})
    if tls:
        out["tls"] = tls
    options: RouteOptions = {}
    if annotations.get(SSL_REDIRECT_ANNOTATION, "").lower() == "false":
        options["sslRedirect"] = "false"
    if cluster_issuer:
        options["cert-manager.io/cluster-issuer"] = cluster_issuer
    if issuer == "cert-manager" and annotations.get(CERT_MANAGER_ISSUER):
        options["cert-manager.io/issuer"] = annotations[CERT_MANAGER_ISSUER]
    if options:
        out["options"] = options
    if not rules and "defaultBackend" not in out and not problems:
        problems.append(Problem("NoRules", "the Ingress has neither rules nor a defaultBackend"))
    if problems:
        # In the record, so the data plane reports them (as the Accepted condition) in the
        # same status write as Programmed, from what survives a restart.
        out["problems"] = [p.spec() for p in problems]
    return Translation(out, problems)


def _serve_default_at(rules: list[HTTPRule], host: str, backend: Backend) -> None:
    """The defaultBackend under the automatic name: whatever no path of that host matches
    (a `/` Prefix path of the Ingress's own comes first, as a rule does before it)."""
    paths: list[HTTPPath] = [p for r in rules if r["host"] == host for p in r["paths"]]
    if any(p["path"] == "/" and p["pathType"] == "Prefix" for p in paths):
        return
    rules.append(
        {"host": host, "paths": [{"path": "/", "pathType": "Prefix", "backends": [backend]}]}
    )


def referenced_services(ingress: Obj) -> set[str]:
    """Names of Services (in the Ingress's namespace) that its backends point at."""
    spec = ingress.get("spec") or {}
    names = set()
    backends = [spec.get("defaultBackend") or {}]
    for rule in spec.get("rules") or []:
        backends += [p.get("backend") or {} for p in (rule.get("http") or {}).get("paths") or []]
    for b in backends:
        name = (b.get("service") or {}).get("name")
        if name:
            names.add(name)
    return names


def referenced_secrets(ingress: Obj) -> set[str]:
    """Names of the tenant TLS Secrets (in the Ingress's namespace) it is served with; none
    when its certificates are issued (ACME, cert-manager) instead."""
    if certificate_source(annotations_of(ingress)) != "tenant":
        return set()
    return {
        t["secretName"] for t in (ingress.get("spec") or {}).get("tls") or [] if t.get("secretName")
    }


def ingress_class() -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": INGRESS_CLASS, "labels": {MANAGED_BY: MANAGER}},
        "spec": {"controller": CONTROLLER},
    }


class IngressSource:
    """networking.k8s.io/v1 Ingress → Route."""

    kind = "Ingress"
    api_version = "networking.k8s.io/v1"
    resource = INGRESSES
    depends_on: tuple[Resource, ...] = (INGRESS_CLASSES,)
    referenced: tuple[Resource, ...] = ()
    record = ROUTE

    def is_ours(self, obj: Obj, view: TenantView) -> bool:
        return is_ours(obj, view.all(INGRESS_CLASSES))

    def record_name(self, namespace: str, name: str) -> str:
        return route_name(namespace, name)

    def references(self, obj: Obj, view: TenantView) -> References:
        if not shapes.fits(shapes.Ingress, obj):
            return References()  # translate() says what is wrong with it
        ns = obj["metadata"]["namespace"]
        return References(
            backends=frozenset((ns, s) for s in referenced_services(obj)),
            tls_secrets=frozenset((ns, s) for s in referenced_secrets(obj)),
        )

    def translate(self, obj: Obj, view: TenantView) -> Translation[RouteSpec]:
        return translate(obj, view)

    def status_patch(self, obj: Obj, status: SourceStatus) -> StatusPatch | None:
        return load_balancer_status_patch(obj, status)

    def tenant_objects(self) -> list[tuple[Resource, Obj]]:
        return [(INGRESS_CLASSES, ingress_class())]

    def reported_objects(self, view: TenantView) -> list[tuple[Resource, Obj]]:
        return []
