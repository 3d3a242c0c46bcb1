"""TLS in the data plane: certificates in the management cluster, which hosts are served over
HTTPS with which one, what kubelbd must have issued, and the ACME answers Envoy gives.

Certificates come from Secrets labelled `kubelb.io/tls=true` in the tenants' namespaces
(copies of tenant Secrets, ACME issued, cert-manager written). Every one is checked
(kubelbd.ir.tls) before it reaches Envoy; a bad one keeps its host off HTTPS alone.

ACME answers: the leader orders certificates, but the CA's validation request may reach any
replica, so the answers go through the API (a ConfigMap in kubelbd's namespace, not secret:
each is served to anyone who asks) and every replica serves them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable

import anyio

from ..certs.acme import ACMESettings
from ..certs.dns01 import DNS01
from ..certs.issuers import Issuers
from ..envoy.ads import DiscoveryServer
from ..envoy.renderer import Files, Renderer
from ..envoy.scopes import FALLBACK, scope_file
from ..ir import tls
from ..ir.http import Delta, Model
from ..kube import Kube
from ..objects import CONFIGMAPS, MANAGED_BY, MANAGER, Obj
from ..records.names import secret_id, tenant_of

log = logging.getLogger(__name__)

RECHECK_INTERVAL = 60.0
#: the ConfigMap holding the ACME HTTP-01 answers every replica serves (token -> answer)
CHALLENGES = "kubelbd-acme-challenges"


class TLSState:
    def __init__(
        self,
        mgmt: Kube,
        acme: ACMESettings,
        wake: Callable[[], None],
        file_applied: Callable[[str, float], Awaitable[bool]],
        secrets: DiscoveryServer,
        dns01: DNS01 | None = None,
    ) -> None:
        self._wake = wake
        self.mgmt = mgmt
        self.namespace = acme.namespace
        #: serves the certificates to Envoy; `_served` are the ones the listener may name
        self.secrets = secrets
        self._served: set[str] = set()
        self._gateways_served: set[str] = set()  # the Gateways' HTTPS listeners'
        self._gateways_waiting = False  # a Gateway's HTTPS listener has no certificate
        #: counts changes of `certificates` (and their rechecks): what Gateways re-render on
        self.version = 0
        self._file_applied = file_applied
        self.certificates: dict[str, tls.CertificateData] = {}  # secret id -> content
        #: ACME HTTP-01 answers being served: token -> key authorization
        self.challenges: dict[str, str] = {}
        self.plan = tls.TLSPlan()
        self.dirty = True
        self.routes: set[str] = set()  # ids of routes with a tls section
        self._challenges_published = anyio.Event()
        self._challenges_rendered = False
        self._acme = acme
        self._dns01 = dns01
        self.issuers = self._issuers()

    def _issuers(self) -> Issuers:
        return Issuers(
            self.mgmt, self._acme, lambda: self.certificates, self.publish_challenges,
            self.changed, self._dns01,
        )  # fmt: skip

    def new_term(self) -> None:
        """A new leadership term: issuers that remember nothing (another leader may have
        requested or deleted certificates meanwhile), told what is wanted at the next render."""
        self.issuers = self._issuers()
        self.dirty = True

    def changed(self) -> None:
        self.dirty = True
        self._wake()

    def on_secret(self, kind: str, obj: Obj) -> None:
        tenant = tenant_of(obj)
        if tenant is None:
            return
        sid = secret_id(tenant, obj["metadata"]["name"])
        if kind == "DELETED":
            self.certificates.pop(sid, None)
        else:
            self.certificates[sid] = tls.certificate_data(sid, obj)
        self.version += 1
        self.changed()

    def on_challenges(self, kind: str, obj: Obj) -> None:
        """The answers as the leader published them (every replica, the leader included)."""
        data = {} if kind == "DELETED" else obj.get("data") or {}
        answers = {str(k): str(v) for k, v in data.items()}
        if answers != self.challenges:
            self.challenges = answers
            self.changed()

    async def publish_challenges(self, challenges: dict[str, str]) -> bool:
        """ACME HTTP-01 (the leader): serve these answers on plain HTTP, for any host, on
        every replica; True once this replica's Envoy reports them applied (the front table
        that holds them: nothing else need be). The others apply the same file within
        milliseconds of the watch event; the CA retries a validation that came too early."""
        await self.mgmt.apply(
            CONFIGMAPS,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": CHALLENGES,
                    "namespace": self.namespace,
                    "labels": {MANAGED_BY: MANAGER},
                },
                "data": dict(challenges),
            },
        )
        self.challenges = dict(challenges)
        self._challenges_published = anyio.Event()
        self.changed()
        with anyio.move_on_after(30):
            await self._challenges_published.wait()
            return await self._file_applied(scope_file(FALLBACK), 30)
        return False

    def published(self) -> None:
        """The files of the last render are written: certificates the listener no longer
        names stop being served (Envoy drops them itself with their filter chains)."""
        self.secrets.remove(self.secrets.names() - self._served - self._gateways_served)
        if self._challenges_rendered:
            self._challenges_rendered = False
            self._challenges_published.set()

    def render(
        self, model: Model, changed: Iterable[str], delta: Delta, renderer: Renderer, files: Files
    ) -> set[str]:
        """Certificates (to the secret server, before the listener that names them is
        written), SNI chains, redirects and ACME answers (into `files`), when anything TLS
        changed. Returns the routes whose certificate problems changed."""
        for rid in changed:
            route = model.routes.get(rid)
            if route is not None and route.spec.get("tls"):
                self.routes.add(rid)
                self.dirty = True
            elif rid in self.routes:
                self.routes.discard(rid)
                self.dirty = True
        if self.routes and (delta.hosts or delta.catch_all):
            self.dirty = True  # ownership may have moved a TLS host
        if not self.dirty:
            return set()
        self.dirty = False
        before = self.plan.problems
        routes = [model.routes[r] for r in self.routes]
        self.issuers.update(tls.wanted(model.ir, routes))
        self.plan = tls.plan(
            model.ir, routes, self.certificates, dt.datetime.now(dt.UTC), self.issuers.pending(),
            previous=self.plan,
        )  # fmt: skip
        self.secrets.put(self.plan.secrets.values())
        self._served = set(self.plan.secrets)
        files.update(
            renderer.update_tls(self.plan, self.challenges, model.ir.catch_all is not None)
        )
        self._challenges_rendered = True
        problems = self.plan.problems
        moved = set(before) ^ set(problems)
        moved |= {r for r in before if before.get(r) != problems.get(r)}
        return moved

    def serve_gateways(self, secrets: dict[str, tls.CertificateData], unserved: bool) -> None:
        """The certificates the Gateways' HTTPS listeners are served with (checked by
        ir.gateway), to the secret server before the listeners naming them are written;
        `unserved`: some listener has none (one not valid yet may be by the next look)."""
        self.secrets.put(secrets.values())
        self._gateways_served = set(secrets)
        self._gateways_waiting = unserved

    async def recheck(self) -> None:
        """Certificates expire while being served: look again every minute."""
        while True:
            await anyio.sleep(RECHECK_INTERVAL)
            gateways = bool(self._gateways_served) or self._gateways_waiting
            if gateways:
                self.version += 1
            if self.routes or gateways:
                self.changed()
