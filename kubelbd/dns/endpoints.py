"""external-dns's DNSEndpoint objects for kubelbd's names (pure): what --dns-provider=dnsendpoint
writes into the management cluster instead of updating a DNS server itself.

One DNSEndpoint per record whose names are published (dns.desired's Key), in the record's own
namespace `tenant-<tenant>`, so that an operator who already runs external-dns (any provider,
its own registry and owner id) publishes kubelbd's names with it. Its content is exactly
`Desired.endpoints` of the record: only names the record owns, allowed and served.

The object is named after the record (`route.<record name>`, `loadbalancer.<record name>`), so
a record always finds its own again after a restart, and carries an ownerReference to the
record once the record's uid is known: deleting the record (or its tenant's namespace) takes
the DNSEndpoint with it through the garbage collector, even while no kubelbd runs. No
blockOwnerDeletion: that would need a permission on the records' finalizers, for nothing
kubelbd waits on.

What external-dns says back is `status.observedGeneration`: its crd source sets it to the
object's generation once it has read that generation (not once the provider applied it).
"""

from __future__ import annotations

import hashlib
import re

from ..objects import MANAGED_BY, MANAGER, Obj, Resource, labels_of
from ..records.names import API_VERSION, MAX_NAME, TENANT_LABEL, namespace_of
from .records import Endpoint

GROUP = "externaldns.k8s.io"
DNSENDPOINTS = Resource(f"{GROUP}/v1alpha1", "dnsendpoints")
KIND = "DNSEndpoint"

#: the record kind (Route, LoadBalancer) a DNSEndpoint is for
RECORD_KIND_LABEL = "kubelb.io/dns-record-kind"
#: the record's name, as far as a label value can hold it (the annotation holds it all)
RECORD_LABEL = "kubelb.io/dns-record"
RECORD_ANNOTATION = "kubelb.io/dns-record"

_MAX_LABEL_VALUE = 63
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _hashed(value: str, limit: int) -> str:
    """`value` when it fits, else a prefix and a digest of the whole: still unique, still a
    valid name (the prefix never ends in a dot or dash before the digest's dash)."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{value[: limit - 11].rstrip('.-_')}-{digest}"


def endpoint_name(kind: str, record_name: str) -> str:
    """`<kind>.<record name>` in lower case: a DNS subdomain (record names are), unique per
    record in its namespace, at most 253 characters (hashed when longer)."""
    return _hashed(f"{kind.lower()}.{record_name}", MAX_NAME)


def record_label(record_name: str) -> str:
    value = _hashed(record_name, _MAX_LABEL_VALUE)
    return value if _LABEL_VALUE.match(value) else hashlib.sha256(value.encode()).hexdigest()[:16]


def dns_endpoint(
    kind: str, record_id: str, endpoints: list[Endpoint], owner_uid: str | None
) -> Obj:
    """The DNSEndpoint kubelbd wants for record `record_id` (`<tenant>/<name>`) of `kind`."""
    tenant, _, name = record_id.partition("/")
    meta: Obj = {
        "name": endpoint_name(kind, name),
        "namespace": namespace_of(tenant),
        "labels": {
            MANAGED_BY: MANAGER,
            TENANT_LABEL: tenant,
            RECORD_KIND_LABEL: kind,
            RECORD_LABEL: record_label(name),
        },
        "annotations": {RECORD_ANNOTATION: f"{kind}/{name}"},
    }
    if owner_uid:
        meta["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": owner_uid,
             "controller": True},
        ]  # fmt: skip
    spec = [
        {"dnsName": e.name, "recordType": e.rtype, "targets": list(e.targets), "recordTTL": e.ttl}
        for e in sorted(endpoints, key=lambda e: (e.name, e.rtype))
    ]
    return {
        "apiVersion": DNSENDPOINTS.group_version,
        "kind": KIND,
        "metadata": meta,
        "spec": {"endpoints": spec},
    }


def same(have: Obj, want: Obj) -> bool:
    """Whether `have` (as stored) already says what `want` says: the endpoints, kubelbd's
    labels and annotation, and the owner once `want` names one. Fields others add are
    theirs (external-dns writes only the status)."""
    if (have.get("spec") or {}).get("endpoints") != want["spec"]["endpoints"]:
        return False
    hmeta, wmeta = have.get("metadata") or {}, want["metadata"]
    labels = labels_of(have)
    if any(labels.get(k) != v for k, v in wmeta["labels"].items()):
        return False
    annotations = hmeta.get("annotations") or {}
    if any(annotations.get(k) != v for k, v in wmeta["annotations"].items()):
        return False
    if "ownerReferences" in wmeta:
        owners = {r.get("uid") for r in hmeta.get("ownerReferences") or []}
        return owners == {r["uid"] for r in wmeta["ownerReferences"]}
    return True


def observed(obj: Obj) -> bool:
    """external-dns has read this generation of the object (its status.observedGeneration)."""
    generation = (obj.get("metadata") or {}).get("generation")
    seen = (obj.get("status") or {}).get("observedGeneration")
    return generation is not None and seen == generation
