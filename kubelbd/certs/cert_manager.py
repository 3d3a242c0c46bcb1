"""cert-manager: a `Certificate` in the tenant's namespace of the management cluster per
certificate a Route wants from it; the Secret cert-manager writes is served like any other."""

from __future__ import annotations

from ..ir.tls import Wanted
from ..kube import ApiError, Kube
from ..objects import Obj, Resource
from ..records.names import TLS_LABEL, TLS_SOURCE_LABEL, labels, namespace_of
from ..records.problems import Problem

CERTIFICATES = Resource("cert-manager.io/v1", "certificates")

NOT_INSTALLED = Problem(
    "CertManagerNotInstalled",
    "cert-manager's Certificate kind is not served by the management cluster",
)


def certificate(w: Wanted) -> Obj:
    kind, name = w.issuer
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": w.secret_name,
            "namespace": namespace_of(w.tenant),
            "labels": labels(w.tenant),
        },
        "spec": {
            "secretName": w.secret_name,
            "dnsNames": list(w.hosts),
            "issuerRef": {"group": "cert-manager.io", "kind": kind, "name": name},
            # So that the Secret cert-manager writes is one the data plane watches.
            "secretTemplate": {
                "labels": labels(w.tenant) | {TLS_LABEL: "true", TLS_SOURCE_LABEL: "cert-manager"}
            },
        },
    }


class CertManager:
    """The Certificates kubelbd has asked cert-manager for."""

    def __init__(self, mgmt: Kube) -> None:
        self.mgmt = mgmt
        self._requested: dict[str, Wanted] = {}

    async def sync(self, want: dict[str, Wanted]) -> dict[str, Problem]:
        """Request what is wanted and not requested yet, delete what is no longer wanted;
        returns, per secret id, what the Route shows meanwhile."""
        out: dict[str, Problem] = {}
        for sid, w in sorted(want.items()):
            if self._requested.get(sid) == w:
                continue
            try:
                await self.mgmt.apply(CERTIFICATES, certificate(w))
            except ApiError as e:
                if e.not_found:  # the Certificate CRD is not installed
                    out[sid] = NOT_INSTALLED
                    continue
                if e.status in (400, 422):
                    # This request is bad (a tenant's Secret name too long for an object
                    # name, ...): its Route says so; every other tenant's goes on.
                    out[sid] = Problem("CertificateRefused", f"cert-manager Certificate: {e}")
                    continue
                raise
            self._requested[sid] = w
            out[sid] = Problem(
                "WaitingForCertManager", f"waiting for cert-manager to write Secret {w.secret_name}"
            )
        for sid in [s for s in self._requested if s not in want]:
            w = self._requested[sid]
            await self.mgmt.delete(CERTIFICATES, w.secret_name, namespace_of(w.tenant))
            del self._requested[sid]  # only now: a failed delete is tried again next pass
        return out
