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
from functools import lru_cache
from typing import Any, cast

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
#: different validations (UpstreamTLS) one Route record carries, each with its CA bundle:
#: what keeps a record within what etcd stores (16 x 16 KiB)
MAX_PER_ROUTE = 16
MAX_SANS = 16
#: route kinds whose backends a policy applies to (HTTP over TLS)
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")

#: (ok, reason, message) of one condition
State = tuple[bool, str, str]


def kept_config_map(obj: Obj) -> Obj:
    """What the cache keeps of a tenant ConfigMap: its name and a CA bundle small enough to
    be one (a tenant's ConfigMaps may be large and many; kubelbd reads only this)."""
    meta, data = obj.get("metadata"), obj.get("data")
    meta = meta if isinstance(meta, dict) else {}
    out: Obj = {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta
        }
    }
    ca = data.get(CA_KEY) if isinstance(data, dict) else None  # a tenant's API server's
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
    when the rest of it does not fit (then it targets them unusable: never plain text).
    Checked by hand, not by a shape: this runs for every policy on every pass."""
    spec = policy.get("spec")
    refs = spec.get("targetRefs") if isinstance(spec, dict) else None
    out: list[tuple[str, str | None]] = []
    for t in (refs if isinstance(refs, list) else [])[:MAX_TARGETS]:
        if not isinstance(t, dict) or t.get("group") != "" or t.get("kind") != "Service":
            continue
        name, section = t.get("name"), t.get("sectionName")
        if isinstance(name, str) and (section is None or isinstance(section, str)):
            out.append((name, section))
    return out


@dataclass(frozen=True)
class PolicyIndex:
    """A tenant's policies by what they target: for each (namespace, Service, port name or
    None), the oldest policy naming it (the one that applies; the rest are Conflicted)."""

    by_target: dict[tuple[str, str, str | None], Obj]

    @classmethod
    def of(cls, policies: Iterable[Obj]) -> PolicyIndex:
        by_target: dict[tuple[str, str, str | None], Obj] = {}
        for policy in sorted(policies, key=age):
            ns = (policy.get("metadata") or {}).get("namespace")
            if isinstance(ns, str):
                for service, section in targets(policy):
                    by_target.setdefault((ns, service, section), policy)
        return cls(by_target)

    def winner(self, namespace: str, service: str, section: str | None) -> Obj | None:
        """The policy for a Service's port named `section` (None: the port has no name):
        one naming the port, else one naming the whole Service."""
        if section is not None and (namespace, service, section) in self.by_target:
            return self.by_target[(namespace, service, section)]
        return self.by_target.get((namespace, service, None))


def index(view: TenantView) -> PolicyIndex:
    """The tenant's PolicyIndex, built once per change of its policies (kept in the view's
    memo: every backend of every route asks)."""
    policies = list(view.all(BACKEND_TLS_POLICIES))
    key = tuple(
        (m.get("namespace"), m.get("name"), m.get("uid"), m.get("resourceVersion"))
        for m in (p.get("metadata") or {} for p in policies)
    )
    kept = view.memo.get("backendtls.index")
    if isinstance(kept, tuple) and kept[0] == key:
        return cast(PolicyIndex, kept[1])
    built = PolicyIndex.of(policies)
    view.memo["backendtls.index"] = (key, built)
    return built


def for_backend(view: TenantView, namespace: str, service: str, port: int) -> Obj | None:
    """The policy that applies to TCP port `port` of Service namespace/service, if any."""
    policies = index(view)
    if not policies.by_target:
        return None
    svc = view.get(SERVICES, namespace, service) or {}
    section = next(
        (
            p.get("name")
            for p in (svc.get("spec") or {}).get("ports") or []
            if isinstance(p, dict) and p.get("port") == port and p.get("protocol", "TCP") == "TCP"
        ),
        None,
    )
    return policies.winner(namespace, service, section if isinstance(section, str) else None)


@lru_cache(maxsize=256)
def certificates(pem: str) -> str | None:
    """`pem`'s X.509 certificates, each as cryptography writes it back (nothing else of
    what the tenant wrote reaches Envoy: no other PEM block, no text between), at most
    MAX_CERTIFICATES; None when one is not a certificate Envoy takes (Envoy refuses a cluster
    whose trusted CA does not load: never handed one). Only X.509 v3 is taken, every field
    Envoy reads is read here first (a name that is no string of its type, a key that is no
    key), and anything that raises refuses the bundle."""
    try:
        found = x509.load_pem_x509_certificates(pem.encode())
        for cert in found[:MAX_CERTIFICATES]:
            if cert.version != x509.Version.v3:
                return None
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            list(cert.extensions)
            cert.public_key()
    except Exception:  # the tenant's bytes: whatever the parser raises
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


def references(
    view: TenantView, namespace: str, service: str, port: int
) -> set[tuple[Resource, tuple[str, str]]]:
    """What a backend reads through its policy: every policy of its namespace (also one
    made later, which may apply) and the ConfigMaps the one that applies names."""
    out: set[tuple[Resource, tuple[str, str]]] = {(BACKEND_TLS_POLICIES, (namespace, ""))}
    policy = for_backend(view, namespace, service, port)
    validation = ((policy or {}).get("spec") or {}).get("validation")
    refs = validation.get("caCertificateRefs") if isinstance(validation, dict) else None
    for ref in (refs if isinstance(refs, list) else [])[:MAX_CA_REFS]:
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            out.add((CONFIGMAPS, (namespace, ref["name"])))
    return out
