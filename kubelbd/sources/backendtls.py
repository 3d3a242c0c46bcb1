"""BackendTLSPolicy: Envoy speaks TLS to a tenant Service that a policy targets, and checks
the certificate it is shown (Gateway API's BackendTLSPolicy, GEP-1897). Pure.

A policy targets Services of its own namespace, a whole Service or one port of it (by the
port's name, `sectionName`). For each backend of an HTTPRoute or GRPCRoute, the policy that
applies is the one naming the port, else one naming the whole Service; among several for the
same target the oldest wins (then the first by name) and the rest are `Conflicted`, as
GEP-713 says. The route's backend then carries what Envoy needs (`UpstreamTLS`: the SNI
hostname, the CA certificates from the tenant's ConfigMaps, the names to check), kept once
per Route record and named by a digest. A policy that cannot be used (no CA certificate that
resolves and parses, a hostname that is not one, system CAs) leaves its backends unserved:
they answer 500, never plain text to a backend that asked for TLS.

Here is how policies are read (routes.py resolves backends with it); their statuses and
their Source are backendtlspolicy.py.

ConfigMaps are watched only for CA certificates: the cache keeps each one's `ca.crt` (when
it is small enough to be one) and its name, nothing else (`kept_config_map`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..objects import CONFIGMAPS, SERVICES, Obj, Resource
from ..records.types import SubjectAltName, UpstreamTLS
from . import shapes
from .base import TenantView
from .common import HOST, normalize_host
from .gatewayapi import API_VERSION

BACKEND_TLS_POLICIES = Resource(API_VERSION, "backendtlspolicies")
#: the ConfigMap key a CA certificate is read from, as Gateway API says
CA_KEY = "ca.crt"
#: a CA bundle kubelbd takes (PEM characters): every backend's cluster carries it to Envoy
MAX_CA_BUNDLE = 16 * 1024
#: what one policy may list, as the CRD allows (more is not read)
MAX_TARGETS = 16
MAX_CA_REFS = 8
MAX_CERTIFICATES = 16
MAX_SANS = 16
#: route kinds whose backends a policy applies to (HTTP over TLS)
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")

#: (ok, reason, message) of one condition
State = tuple[bool, str, str]


def kept_config_map(obj: Obj) -> Obj:
    """What the cache keeps of a tenant ConfigMap: its name and a CA bundle small enough to
    be one (a tenant's ConfigMaps may be large and many; kubelbd reads only this)."""
    meta = obj.get("metadata") or {}
    out: Obj = {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta
        }
    }
    ca = (obj.get("data") or {}).get(CA_KEY)
    if isinstance(ca, str):
        out["data"] = {CA_KEY: ca} if len(ca) <= MAX_CA_BUNDLE else {}
        out["tooLarge"] = len(ca) > MAX_CA_BUNDLE
    return out


@dataclass(frozen=True)
class Verdict:
    """A policy as kubelbd reads it: the TLS it asks for (None: it cannot be used), and
    its Accepted and ResolvedRefs conditions."""

    tls: UpstreamTLS | None
    accepted: State
    resolved: State


def key_of(tls: UpstreamTLS) -> str:
    """The name a Route record keeps an UpstreamTLS under: a digest, so that equal ones
    are one (and one Envoy cluster per nodePort)."""
    text = json.dumps(tls, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def age(policy: Obj) -> tuple[str, str]:
    meta = policy.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def targets(policy: Obj) -> list[tuple[str, str | None]]:
    """(Service name, port name or None) of each Service the policy targets: read even
    when the rest of it does not fit (then it targets them unusable: never plain text)."""
    spec = policy.get("spec")
    refs = spec.get("targetRefs") if isinstance(spec, dict) else None
    return [
        (t["name"], t.get("sectionName"))
        for t in (refs if isinstance(refs, list) else [])[:MAX_TARGETS]
        if shapes.fits(shapes.PolicyTargetRef, t)
        and t.get("group") == ""
        and t.get("kind") == "Service"
    ]


def in_namespace(view: TenantView, namespace: str) -> list[Obj]:
    return sorted(
        (
            p
            for p in view.all(BACKEND_TLS_POLICIES)
            if (p.get("metadata") or {}).get("namespace") == namespace
        ),
        key=age,
    )


def winner(policies: Iterable[Obj], service: str, section: str | None) -> Obj | None:
    """Of `policies` (oldest first), the one that applies to a Service's port named
    `section` (None: the port has no name): one naming the port, else the whole Service."""
    listed = list(policies)
    if section is not None:
        for policy in listed:
            if (service, section) in targets(policy):
                return policy
    for policy in listed:
        if (service, None) in targets(policy):
            return policy
    return None


def for_backend(view: TenantView, namespace: str, service: str, port: int) -> Obj | None:
    """The policy that applies to port `port` of Service namespace/service, if any."""
    policies = in_namespace(view, namespace)
    if not policies:
        return None
    svc = view.get(SERVICES, namespace, service) or {}
    section = next(
        (
            p.get("name")
            for p in (svc.get("spec") or {}).get("ports") or []
            if isinstance(p, dict) and p.get("port") == port
        ),
        None,
    )
    return winner(policies, service, section if isinstance(section, str) else None)


def certificates(pem: str) -> str | None:
    """`pem`'s X.509 certificates, each as cryptography writes it back (nothing else of
    what the tenant wrote reaches Envoy: no other PEM block, no text between), at most
    MAX_CERTIFICATES; None when it holds none (Envoy refuses a cluster whose trusted CA
    does not parse, and with it every cluster of the same file: never handed one)."""
    try:
        found = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return None
    return "".join(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in found[:MAX_CERTIFICATES]
    )


def _subject_alt_names(validation: Mapping[str, Any]) -> list[SubjectAltName] | str:
    """The names to check the certificate for, or why one cannot be."""
    out: list[SubjectAltName] = []
    for san in (validation.get("subjectAltNames") or [])[:MAX_SANS]:
        if san["type"] == "Hostname" and isinstance(san.get("hostname"), str):
            host = normalize_host(san["hostname"])
            if not HOST.fullmatch(host):
                return f"subjectAltName {host[:253]!r} is not a DNS name"
            out.append({"type": "Hostname", "value": host})
        elif san["type"] == "URI" and isinstance(san.get("uri"), str):
            uri = san["uri"]
            if not (0 < len(uri) <= 253 and uri.isprintable() and ":" in uri):
                return f"subjectAltName {uri[:253]!r} is not a URI"
            out.append({"type": "URI", "value": uri})
        else:
            return f"subjectAltName of type {str(san['type'])[:32]!r} without its value"
    return out


def read(policy: Obj, view: TenantView) -> Verdict:
    """What a policy asks for, and its conditions (but for a conflict, see `statuses`)."""
    malformed = shapes.problem(shapes.BackendTLSPolicy, policy)
    if malformed is not None:
        return Verdict(None, (False, "Invalid", malformed.message), (True, "ResolvedRefs", ""))
    ns = policy["metadata"].get("namespace", "")
    validation = policy["spec"]["validation"]
    hostname = normalize_host(validation["hostname"])
    if not HOST.fullmatch(hostname) or hostname.startswith("*."):
        why = f"hostname {hostname[:253]!r} is not a DNS name"
        return Verdict(None, (False, "Invalid", why), (True, "ResolvedRefs", "resolved"))
    if validation.get("wellKnownCACertificates"):
        why = "wellKnownCACertificates is not supported: name CA certificates"
        return Verdict(None, (False, "Invalid", why), (True, "ResolvedRefs", "resolved"))
    sans = _subject_alt_names(validation)
    if isinstance(sans, str):
        return Verdict(None, (False, "Invalid", sans), (True, "ResolvedRefs", "resolved"))
    bundles: list[str] = []
    refused: State | None = None
    for ref in (validation.get("caCertificateRefs") or [])[:MAX_CA_REFS]:
        name = ref["name"]
        if ref["group"] != "" or ref["kind"] != "ConfigMap":
            why = f"{ref['kind'][:64]} {name[:253]}: CA certificates come from ConfigMaps"
            refused = refused or (False, "InvalidKind", why)
            continue
        cm = view.get(CONFIGMAPS, ns, name)
        ca = ((cm or {}).get("data") or {}).get(CA_KEY)
        if cm is None:
            why = f"ConfigMap {ns}/{name[:253]} not found"
        elif cm.get("tooLarge"):
            why = f"ConfigMap {ns}/{name[:253]}: {CA_KEY} is over {MAX_CA_BUNDLE} characters"
        elif not isinstance(ca, str) or (canonical := certificates(ca)) is None:
            why = f"ConfigMap {ns}/{name[:253]}: {CA_KEY} holds no PEM certificate"
        else:
            bundles.append(canonical)
            continue
        refused = refused or (False, "InvalidCACertificateRef", why)
    bundle = "".join(bundles)
    if not bundles or len(bundle) > MAX_CA_BUNDLE:
        why = refused[2] if refused else "no CA certificate is named"
        if bundles:
            why = f"the CA certificates are over {MAX_CA_BUNDLE} characters in all"
        resolved = refused or (True, "ResolvedRefs", "resolved")
        return Verdict(None, (False, "NoValidCACertificate", why), resolved)
    tls: UpstreamTLS = {"hostname": hostname, "caCertificates": bundle}
    if sans:
        tls["subjectAltNames"] = sans
    return Verdict(
        tls, (True, "Accepted", "accepted"), refused or (True, "ResolvedRefs", "resolved")
    )


def upstream(view: TenantView, namespace: str, service: str, port: int) -> UpstreamTLS | str | None:
    """How Envoy speaks to port `port` of a Service: plain (None), TLS, or not at all (why:
    a policy applies that cannot be used)."""
    policy = for_backend(view, namespace, service, port)
    if policy is None:
        return None
    verdict = read(policy, view)
    if verdict.tls is None:
        name = (policy.get("metadata") or {}).get("name", "")
        return f"BackendTLSPolicy {namespace}/{name}: {verdict.accepted[2]}"
    return verdict.tls


def references(view: TenantView, namespace: str) -> set[tuple[Resource, tuple[str, str]]]:
    """What a backend in `namespace` reads through its policies: every policy of the
    namespace (also one made later) and the ConfigMaps they name."""
    out: set[tuple[Resource, tuple[str, str]]] = {(BACKEND_TLS_POLICIES, (namespace, ""))}
    for policy in in_namespace(view, namespace):
        if shapes.fits(shapes.BackendTLSPolicy, policy):
            for ref in (policy["spec"]["validation"].get("caCertificateRefs") or [])[:MAX_CA_REFS]:
                out.add((CONFIGMAPS, (namespace, ref["name"])))
    return out
