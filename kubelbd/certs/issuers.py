"""The certificates routes want issued: ordered over ACME, requested from cert-manager, renewed.

Both write a `kubernetes.io/tls` Secret named `<namespace>.<secretName>` into the tenant's
namespace of the management cluster, labelled `kubelb.io/tls=true`, which the data plane then
serves like a copied tenant Secret (and refuses like one, if it is bad). ACME certificates are
renewed when less than a third of their lifetime is left. A wildcard needs ACME DNS-01: without
DNS publishing (or with its challenge name outside the zone) it is a problem on the Route and
no order at all, until the certificates wanted change. While a certificate is on its way
(or its issuance failed), `pending()` says why, for the Route's CertificateReady condition.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from ..ir.tls import CertificateData, Wanted, renewal_time
from ..kube import ApiError, Kube
from ..objects import SECRETS
from ..records.names import TLS_SOURCE_LABEL, secret_id, tenant_of
from ..records.problems import Problem
from ..retry import Backoff
from .acme import ACMEClient, ACMESettings, PublishChallenges, dns01_problem, issued_secret
from .cert_manager import NOT_INSTALLED, CertManager
from .dns01 import DNS01

log = logging.getLogger(__name__)

#: the longest the issuers sleep without a change: certificates are looked at again anyway
RECHECK = 60.0
#: how soon a Certificate is requested again when cert-manager's kind was not served
NOT_INSTALLED_RETRY = 5.0


@dataclass
class Progress:
    problem: Problem | None = None  # shown on the Route while there is no good certificate
    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=5, maximum=300))
    #: the certificate last issued, until its Secret comes back through the watch
    issued: CertificateData | None = None


class Issuers:
    """Keeps the issued certificates the routes want: ACME orders and cert-manager requests."""

    def __init__(
        self,
        mgmt: Kube,
        settings: ACMESettings,
        certificates: Callable[[], dict[str, CertificateData]],
        publish_challenges: PublishChallenges,
        on_progress: Callable[[], None],
        dns01: DNS01 | None = None,
    ) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self._certificates = certificates
        self._on_progress = on_progress
        self.acme = ACMEClient(mgmt, settings, publish_challenges, dns01)
        self.cert_manager = CertManager(mgmt)
        self.wanted: dict[str, Wanted] = {}
        self.progress: dict[str, Progress] = {}
        self._wake = anyio.Event()
        #: passes completed (what a caller waits on to know the issuers looked at everything)
        self.passes = 0

    def update(self, wanted_now: dict[str, Wanted]) -> None:
        if wanted_now != self.wanted:
            self.wanted = wanted_now
            self._wake.set()

    def pending(self) -> dict[str, Problem]:
        """Per secret id: what to show on the Route while its certificate is not there yet."""
        return {sid: p.problem for sid, p in self.progress.items() if p.problem is not None}

    async def run(self) -> None:
        while True:
            wait = RECHECK
            try:
                wait = await self._pass()
            except (ApiError, ConnectionError) as e:
                log.warning("certificates: %s; retrying", e)
            self.passes += 1
            # Until the next certificate is due (or a retry), so renewal comes when a third of
            # the lifetime is left, not up to a polling interval later.
            with anyio.move_on_after(wait):
                await self._wake.wait()
            self._wake = anyio.Event()

    def _set(self, sid: str, problem: Problem | None) -> None:
        progress = self.progress.setdefault(sid, Progress())
        if progress.problem != problem:
            progress.problem = problem
            self._on_progress()

    async def _pass(self) -> float:
        """Request, issue and renew what is due; returns how long until the next is due."""
        requested = await self.cert_manager.sync(
            {sid: w for sid, w in self.wanted.items() if w.source == "cert-manager"}
        )
        wait = RECHECK
        for sid, problem in requested.items():
            self._set(sid, problem)
            if problem == NOT_INSTALLED:
                wait = NOT_INSTALLED_RETRY  # being installed, perhaps: ask again soon
        certs = self._certificates()
        for sid, w in sorted(self.wanted.items()):
            if w.source != "acme":
                continue
            progress = self.progress.setdefault(sid, Progress())
            now = dt.datetime.now(dt.UTC)
            fraction = self.settings.renew_fraction
            due = max(
                (d for c in (certs.get(sid), progress.issued)
                 if (d := renewal_time(c, w.hosts, fraction)) is not None),
                default=None,
            )  # fmt: skip
            if due is not None and now < due:
                self._set(sid, None)
                wait = min(wait, (due - now).total_seconds())
                continue
            unissuable = dns01_problem(w.hosts, self.acme.dns01)
            if unissuable is not None:
                self._set(sid, unissuable)
                continue
            if anyio.current_time() < progress.retry_at:
                wait = min(wait, progress.retry_at - anyio.current_time())
                continue
            await self._issue(w, progress)
            if progress.retry_at > anyio.current_time():
                wait = min(wait, progress.retry_at - anyio.current_time())
            else:
                wait = 0  # issued: look at its renewal time in the next pass
        for sid in [s for s in self.progress if s not in self.wanted]:
            del self.progress[sid]
        await self._collect_acme_secrets()
        return max(wait, 0.0)

    async def _issue(self, w: Wanted, progress: Progress) -> None:
        if not self.settings.directory:
            self._set(w.secret_id, Problem("NoACMEDirectory", "kubelbd has no --acme-directory"))
            progress.retry_at = anyio.current_time() + 60
            return
        self._set(
            w.secret_id,
            Problem("Issuing", f"requesting a certificate for {', '.join(w.hosts)} over ACME"),
        )
        try:
            fullchain, key = await self.acme.order(w.hosts)
            await self.mgmt.apply(
                SECRETS, issued_secret(w, fullchain, key, self.settings.directory)
            )
            progress.issued = CertificateData(w.secret_id, fullchain, key)
            log.info("certificate %s issued for %s", w.secret_id, ", ".join(w.hosts))
            self._set(w.secret_id, None)
            progress.backoff.reset()
        except Exception as e:  # the protocol library raises many kinds; all mean "retry"
            log.warning("certificate %s: ACME issuance failed: %s", w.secret_id, e)
            self._set(w.secret_id, Problem("IssuanceFailed", f"ACME: {e}"))
            progress.retry_at = anyio.current_time() + progress.backoff.next()

    async def _collect_acme_secrets(self) -> None:
        """Issued Secrets no Route wants any more."""
        items, _ = await self.mgmt.list(SECRETS, labelSelector=f"{TLS_SOURCE_LABEL}=acme")
        for s in items:
            tenant = tenant_of(s)
            if tenant and secret_id(tenant, s["metadata"]["name"]) not in self.wanted:
                await self.mgmt.delete(SECRETS, s["metadata"]["name"], s["metadata"]["namespace"])
