"""`kubelbd why HOST`: which tenant owns a host, which Route serves it and with which
certificate, whether Envoy really holds it, or why not, all from the overview.

A host matches a Route host as Envoy matches it: exactly, else a one-label wildcard
(`*.example.com` for `a.example.com`), else the catch-all `*`."""

from __future__ import annotations

from .model import Answer, Overview, RouteView


def candidates(host: str) -> tuple[str, ...]:
    """The Route hosts that could answer `host`, most specific first."""
    _, dot, rest = host.partition(".")
    wildcard = (f"*.{rest}",) if dot and rest and not host.startswith("*.") else ()
    return (host, *wildcard, "*")


def why(ov: Overview, host: str) -> Answer:
    host = host.strip().lower().rstrip(".")
    for pattern in candidates(host):
        claiming = [r for r in ov.routes if pattern in r.hosts]
        if claiming:
            return _answer(ov, host, pattern, claiming)
    return Answer(host, "", None, None, None, None, *_envoy(ov, host), (
        f"no Route claims {host} (nor a wildcard or catch-all that would answer it)",
    ), ())  # fmt: skip


def _answer(ov: Overview, host: str, pattern: str, claiming: list[RouteView]) -> Answer:
    owner = next((r for r in claiming if pattern in r.served), None)
    ordered = ([owner] if owner else []) + [r for r in claiming if r is not owner]
    # Served: what is off with the serving Route. Not served: what every claimant was told.
    reasons = [
        f"Route {r.id}: {c.type} {c.reason}: {c.message}".rstrip(": ")
        for r in ([owner] if owner else claiming)
        for c in r.checks
        if c.ok is False
    ]
    if owner is None:
        reasons.insert(0, f"{len(claiming)} Route(s) claim {pattern} but none serves it")
    reasons += [
        f"Route {r.id} waits for Envoy to apply it" for r in ordered if r.state == "Pending"
    ]
    cert = owner.certificate_for(pattern) if owner else None
    if cert is not None and cert.problem:
        reasons.append(f"certificate {cert.secret}: {cert.problem}")
    elif cert is not None and cert.days_left is not None and cert.days_left < 0:
        reasons.append(f"certificate {cert.secret} expired on {cert.expires:%Y-%m-%d}")
    http, https = _envoy(ov, pattern)
    reasons += _envoy_disagrees(ov, pattern, owner, http, https, cert is not None)
    return Answer(
        host, pattern,
        owner.tenant if owner else None, owner.id if owner else None,
        owner.source if owner else None, cert, http, https,
        tuple(reasons), tuple(r.id for r in ordered),
    )  # fmt: skip


def _envoy(ov: Overview, pattern: str) -> tuple[str | None, str | None]:
    if ov.envoy is None:
        return None, None
    return ov.envoy.http_hosts.get(pattern), ov.envoy.https_hosts.get(pattern)


def _envoy_disagrees(
    ov: Overview,
    pattern: str,
    owner: RouteView | None,
    http: str | None,
    https: str | None,
    has_tls: bool,
) -> list[str]:
    """Where Envoy's own tables differ from what the records say is served."""
    if ov.envoy is None:
        return []
    if not ov.envoy.reachable:
        return ["Envoy's admin could not be reached: what Envoy holds is unknown"]
    out = []
    if owner is not None and http != owner.tenant:
        held = f"hold it for tenant {http}" if http else "do not hold it"
        out.append(f"Envoy's route tables {held} (not applied yet?)")
    if owner is None and http is not None:
        out.append(f"Envoy still holds {pattern} for tenant {http}")
    if owner is not None and has_tls and https is None:
        out.append(f"Envoy's HTTPS listener has no certificate for {pattern}")
    return out
