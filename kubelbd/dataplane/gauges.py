"""The data plane's state as metrics: per tenant, what is served and what is refused.

Read when Prometheus scrapes (kubelbd.metrics.observe_state), from the structures the data
plane keeps anyway, so the numbers are exactly what it serves: routes and load balancers
held, certificates served and their expiry, hosts lost to another tenant, and the problems
its records carry. Certificates are parsed once per content (by digest), not every scrape.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from ..ir import tls
from ..ir.http import Model
from ..metrics import CertificateExpiry, Snapshot, TenantState
from ..records.types import LBRecord, RouteRecord
from .l4 import LoadBalancers
from .refusals import Refusals
from .tls import TLSState

#: the reason a record refused as malformed is counted under
INVALID_RECORD = "InvalidRecord"


class StateGauges:
    def __init__(
        self,
        model: Model,
        l4: LoadBalancers,
        certificates: TLSState,
        refused: Iterable[Refusals],
    ) -> None:
        self._model = model
        self._l4 = l4
        self._tls = certificates
        #: records refused as malformed: "<tenant>/<name>", or a Tenant record's "<tenant>"
        self._refused = refused
        self._not_after: dict[str, float] = {}  # certificate digest -> notAfter (epoch)

    def snapshot(self) -> Snapshot:
        routes: Counter[str] = Counter(r.tenant for r in self._model.routes.values())
        lbs: Counter[str] = Counter(r.tenant for r in self._l4.records.values())
        conflicts: Counter[str] = Counter()
        for rid, lost in self._model.ir.conflicts.items():
            conflicts[rid.split("/", 1)[0]] += len(lost)
        refusals: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._count_problems(refusals, self._model.routes.values())
        self._count_problems(refusals, self._l4.records.values())
        for rid, problems in self._tls.plan.problems.items():
            refusals[rid.split("/", 1)[0]].update(p.reason for p in problems)
        for rid, failure in self._l4.failures.items():
            refusals[rid.split("/", 1)[0]][failure.reason] += 1
        for refused in self._refused:
            for rid in refused.ids():
                refusals[rid.split("/", 1)[0]][INVALID_RECORD] += 1
        served: Counter[str] = Counter(sid.split("/", 1)[0] for sid in self._tls.plan.secrets)
        names = set(self._model.tenants) | set(routes) | set(lbs) | set(refusals)
        tenants = {
            name: TenantState(
                routes[name], lbs[name], served[name], conflicts[name], dict(refusals[name])
            )
            for name in names
        }
        return Snapshot(tenants, self._expiries())

    @staticmethod
    def _count_problems(
        into: defaultdict[str, Counter[str]], records: Iterable[RouteRecord | LBRecord]
    ) -> None:
        for rec in records:
            for problem in rec.spec.get("problems", []):
                into[rec.tenant][problem["reason"]] += 1

    def _expiries(self) -> list[CertificateExpiry]:
        plan = self._tls.plan
        known, self._not_after = self._not_after, {}
        out = []
        for host in sorted(plan.hosts.values(), key=lambda h: h.host):
            data = plan.secrets.get(host.secret)
            if data is None:
                continue
            not_after = known.get(data.digest) or self._not_after.get(data.digest)
            if not_after is None:
                cert = tls.inspect(data)
                if not isinstance(cert, tls.Certificate):
                    continue  # never served: the plan holds only certificates that passed
                not_after = cert.not_after.timestamp()
            self._not_after[data.digest] = not_after
            tenant, certificate = host.secret.split("/", 1)
            out.append(CertificateExpiry(tenant, certificate, host.host, not_after))
        return out
