"""`kubelbd status`, `kubelbd routes [TENANT]`, `kubelbd why HOST`: what is served, what is
refused, and why, for the operator.

They read what anyone with access could read (the records in the management cluster, Envoy's
admin), never kubelbd's memory, and render the same overview the status page does
(kubelbd.overview): the two can never tell different stories."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import click
import orjson

from ..envoy.admin import EnvoyAdmin
from ..kube import ApiError, Kube
from ..overview.build import overview
from ..overview.model import Answer, CertificateView, Overview
from ..overview.why import why as answer_for
from ..snapshots import load_snapshot

F = TypeVar("F", bound=Callable[..., Any])

#: refusals `status` lists (newest first); `-o json` has them all
STATUS_REFUSALS = 10


def reading_options(f: F) -> F:
    """Where to read from, and how to print: the options every read-only command takes."""
    for option in reversed(
        (
            click.option(
                "--kubeconfig",
                envvar="KUBECONFIG",
                type=click.Path(dir_okay=False),
                help="The management cluster's kubeconfig (default: $KUBECONFIG, else the "
                "pod's service account).",
            ),
            click.option(
                "--envoy-admin",
                default="127.0.0.1:9901",
                show_default=True,
                help="Envoy's admin address, to say what Envoy really holds ('' to skip).",
            ),
            click.option(
                "-o",
                "--output",
                type=click.Choice(["text", "json"]),
                default="text",
                show_default=True,
            ),
        )
    ):
        f = option(f)
    return f


def load(kubeconfig: str | None, envoy_admin: str, tenant: str | None = None) -> Overview:
    async def read() -> Overview:
        try:
            mgmt = await Kube.management(kubeconfig)
        except Exception as e:  # whatever the loader raises: the operator's to fix, not a bug
            where = kubeconfig or "the pod's service account (no --kubeconfig, no $KUBECONFIG)"
            raise click.ClickException(f"cannot use {where}: {e}") from e
        admin = EnvoyAdmin(envoy_admin) if envoy_admin else None
        try:
            snap = await load_snapshot(mgmt, admin, tenant)
        except (ApiError, ConnectionError) as e:
            raise click.ClickException(f"cannot read the records: {e}") from e
        finally:
            if admin is not None:
                await admin.aclose()
            await mgmt.aclose()
        return overview(snap, dt.datetime.now(dt.UTC))

    return anyio.run(read)


def printable(text: str) -> str:
    """Text a tenant may have written (messages, names), safe for the operator's terminal:
    every control character but the newline shown escaped, so no escape sequence reaches the
    terminal (a hostile message could otherwise retitle, clear or rewrite it)."""
    return "".join(ch if ch == "\n" or ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def say(text: str) -> None:
    """Every line of text output goes through here (JSON is escaped by its encoder)."""
    click.echo(printable(text))


def emit_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on the widest cell, the last left ragged."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in [headers, *rows]
    ]
    return "\n".join(lines)


def expiry(c: CertificateView) -> str:
    if c.problem or c.expires is None:
        return f"{c.secret}: {c.problem}"
    left = "expired" if (c.days_left or 0) < 0 else f"{c.days_left}d left"
    return f"{c.secret} ({c.source}, expires {c.expires:%Y-%m-%d}, {left})"


@click.command()
@reading_options
def status(kubeconfig: str | None, envoy_admin: str, output: str) -> None:
    """Tenants with their health, and the newest refusals."""
    ov = load(kubeconfig, envoy_admin)
    if output == "json":
        emit_json(ov)
        return
    rows = [
        [t.name, "healthy" if t.healthy else "UNHEALTHY", str(t.routes), str(t.load_balancers),
         "; ".join(f"{c.type}: {c.reason} {c.message}".strip() for c in t.checks
                   if c.ok is False) or t.last_error]
        for t in ov.tenants
    ]  # fmt: skip
    say(table(["TENANT", "HEALTH", "ROUTES", "LBS", "PROBLEMS"], rows))
    serving = sum(r.state == "Serving" for r in ov.routes)
    say(f"\n{len(ov.routes)} routes, {serving} serving; "
               f"{len(ov.load_balancers)} load balancers")  # fmt: skip
    if ov.envoy is not None:
        say(f"Envoy admin: {'reachable' if ov.envoy.reachable else 'UNREACHABLE'}")
    if ov.refusals:
        say(f"\nRecent refusals ({min(len(ov.refusals), STATUS_REFUSALS)} of "
                   f"{len(ov.refusals)}):")  # fmt: skip
        say(table(
            ["SINCE", "TENANT", "RECORD", "REASON", "MESSAGE"],
            [[f.since, f.tenant, f"{f.kind} {f.name}", f"{f.type}/{f.reason}", f.message]
             for f in ov.refusals[:STATUS_REFUSALS]],
        ))  # fmt: skip


@click.command()
@click.argument("tenant", required=False)
@reading_options
def routes(tenant: str | None, kubeconfig: str | None, envoy_admin: str, output: str) -> None:
    """Routes with their hosts, state and certificates (of TENANT, or of all)."""
    ov = load(kubeconfig, envoy_admin, tenant)
    if output == "json":
        emit_json(ov.routes)
        return
    rows = [
        [r.tenant, r.name, r.source,
         ",".join(h if h in r.served else f"{h}(not served)" for h in r.hosts),
         r.state, "; ".join(expiry(c) for c in r.certificates)]
        for r in ov.routes
    ]  # fmt: skip
    say(table(["TENANT", "ROUTE", "FROM", "HOSTS", "STATE", "CERTIFICATE"], rows))


@click.command()
@click.argument("host")
@reading_options
@click.pass_context
def why(ctx: click.Context, host: str, kubeconfig: str | None, envoy_admin: str,
        output: str) -> None:  # fmt: skip
    """Who serves HOST, with which Route and certificate, or why nobody does (exit status 1
    when it is not served)."""
    a = answer_for(load(kubeconfig, envoy_admin), host)
    if output == "json":
        emit_json(a)
    else:
        say(explain(a))
    ctx.exit(0 if a.served else 1)


def explain(a: Answer) -> str:
    lines = [f"{a.host}: " + (f"served by tenant {a.owner}" if a.served else "NOT served")]
    if a.matched and a.matched != a.host:
        lines.append(f"  matched as:   {a.matched}")
    if a.route:
        lines.append(f"  route:        {a.route} (from {a.source})")
    if a.certificate:
        lines.append(f"  certificate:  {expiry(a.certificate)}")
    elif a.served:
        lines.append("  certificate:  none (plain HTTP only)")
    if a.envoy_http or a.envoy_https:
        lines.append(f"  envoy:        HTTP for tenant {a.envoy_http or '-'}, "
                     f"HTTPS with {a.envoy_https or '-'}")  # fmt: skip
    others = [c for c in a.claimants if c != a.route]
    if others:
        lines.append(f"  also claimed: {', '.join(others)}")
    lines += [f"  - {r}" for r in a.reasons]
    return "\n".join(lines)
