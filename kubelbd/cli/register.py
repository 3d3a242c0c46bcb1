"""`kubelbd register` and `kubelbd unregister`: a tenant cluster in or out in one command.

The work is registration.py's; this is the command line: options, checks that need no
cluster (a bad flag is a usage error before anything is written), messages.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import click

from ..kube import ApiError, Kube, KubeconfigError
from ..records.names import NAMESPACE_PREFIX, namespace_of, valid_tenant_name
from ..records.parse import tenant_spec
from ..records.policy import Policy, parse_networks, policy_of
from ..records.types import TenantSpec
from . import registration
from .registration import Registration, RegistrationError

DEFAULT_NAMESPACE = "kubelb"


def tenant_spec_of(
    allowed_domains: Sequence[str] = (),
    node_cidrs: Sequence[str] = (),
    max_routes: int | None = None,
    max_load_balancers: int | None = None,
    max_certificates: int | None = None,
    cluster_issuers: Sequence[str] = (),
) -> TenantSpec:
    """The Tenant spec the policy flags say: only the fields given (kubelbd's --default-*
    flags fill in the others), checked as kubelbd will read it; ValueError says what is
    wrong."""
    spec: dict[str, Any] = {}
    if allowed_domains:
        spec["allowedDomains"] = list(allowed_domains)
    if node_cidrs:
        spec["nodeCIDRs"] = list(node_cidrs)
    limits = {
        field: value
        for field, value in (
            ("routes", max_routes),
            ("loadBalancers", max_load_balancers),
            ("certificates", max_certificates),
        )
        if value is not None
    }
    if limits:
        spec["limits"] = limits
    if cluster_issuers:
        spec["clusterIssuers"] = list(cluster_issuers)
    policy_of(spec, Policy())  # what kubelbd does with the record: it must not fall back
    return tenant_spec(spec)


def _tenant_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not valid_tenant_name(value):
        limit = 63 - len(NAMESPACE_PREFIX)
        raise click.BadParameter(f"a DNS label (a-z, 0-9, '-') of at most {limit} characters")
    return value


def _cidrs(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        parse_networks(values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    return values


def _mgmt_source(path: str | None) -> str | None:
    """The management kubeconfig to use (None: in-cluster), or a usage error."""
    if path and os.pathsep in path:
        raise click.UsageError("$KUBECONFIG lists several files: name one with --mgmt-kubeconfig")
    if not path and "KUBERNETES_SERVICE_HOST" not in os.environ:
        raise click.UsageError("no --mgmt-kubeconfig, no $KUBECONFIG, and not in a cluster")
    return path


def _run(main: Callable[[], Awaitable[None]]) -> None:
    """Run `main`; what goes wrong with a cluster is a message and exit status 1, not a
    traceback."""
    try:
        anyio.run(main)
    except (RegistrationError, ApiError, ConnectionError, KubeconfigError) as e:
        raise click.ClickException(str(e)) from e


def _say(message: str) -> None:
    click.echo(message, err=True)


_name = click.argument("name", callback=_tenant_name)
_mgmt_option = click.option(
    "--mgmt-kubeconfig",
    envvar="KUBECONFIG",
    help="the management cluster's kubeconfig (default: $KUBECONFIG, else in-cluster)",
)
_namespace = click.option(
    "--namespace",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="kubelbd's namespace in the management cluster (its --namespace)",
)
_admin_file = click.Path(exists=True, dir_okay=False)


@click.command(short_help="Register a tenant cluster: its side and the management side.")
@_name
@click.option(
    "--kubeconfig",
    "admin_kubeconfig",
    required=True,
    type=_admin_file,
    help="a tenant admin's kubeconfig: used here once, never given to kubelbd",
)
@click.option(
    "--server",
    help="the tenant's API server URL as kubelbd reaches it (default: the admin kubeconfig's)",
)
@_mgmt_option
@_namespace
@click.option(
    "--allowed-domain",
    multiple=True,
    help="a host the tenant may claim: name, *.name, **.name, ** (repeatable)",
)
@click.option(
    "--node-cidr",
    multiple=True,
    callback=_cidrs,
    help="where the tenant's node addresses may be (repeatable)",
)
@click.option("--max-routes", type=click.IntRange(min=0), help="Routes served at most")
@click.option("--max-load-balancers", type=click.IntRange(min=0), help="LoadBalancers at most")
@click.option("--max-certificates", type=click.IntRange(min=0), help="certificates at most")
@click.option(
    "--cluster-issuer",
    multiple=True,
    help="a cert-manager ClusterIssuer the tenant may name (repeatable)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="seconds to wait for the token, and for an earlier unregister to finish",
)
def register(
    name: str,
    admin_kubeconfig: str,
    server: str | None,
    mgmt_kubeconfig: str | None,
    namespace: str,
    allowed_domain: tuple[str, ...],
    node_cidr: tuple[str, ...],
    max_routes: int | None,
    max_load_balancers: int | None,
    max_certificates: int | None,
    cluster_issuer: tuple[str, ...],
    timeout: float,
) -> None:
    """Register tenant cluster NAME: in the tenant, a ServiceAccount with kubelbd's
    least-privilege ClusterRole and a long-lived token; in the management cluster, the
    Tenant record with the policy flags given (the others take kubelbd's defaults) and the
    registration Secret holding a kubeconfig of that token. Run again to update."""
    try:
        spec = tenant_spec_of(
            allowed_domain,
            node_cidr,
            max_routes,
            max_load_balancers,
            max_certificates,
            cluster_issuer,
        )
    except ValueError as e:
        raise click.UsageError(f"tenant policy: {e}") from e
    mgmt_path = _mgmt_source(mgmt_kubeconfig)

    async def main() -> None:
        async with await Kube.from_file(admin_kubeconfig, name) as tenant:
            async with await Kube.management(mgmt_path) as mgmt:
                reg = Registration(name, server or tenant.host, namespace, spec, timeout)
                await registration.register(tenant, mgmt, reg, _say)
            click.echo(
                f"tenant {name} registered: ServiceAccount kubelb-system/kubelbd in the tenant "
                f"({reg.server}); Tenant {namespace_of(name)}/{name} and Secret "
                f"{namespace}/{name} in the management cluster"
            )

    _run(main)


@click.command(short_help="Unregister a tenant cluster: both sides, kubelbd's clean-up first.")
@_name
@click.option(
    "--kubeconfig",
    "admin_kubeconfig",
    type=_admin_file,
    help="a tenant admin's kubeconfig, to remove kubelbd's ServiceAccount and role (without "
    "it they stay)",
)
@_mgmt_option
@_namespace
@click.option(
    "--force",
    is_flag=True,
    help="remove kubelbd's role from the tenant without waiting for kubelbd to clean "
    "up there (its twins and IngressClass then stay)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="seconds to wait for kubelbd's clean-up",
)
def unregister(
    name: str,
    admin_kubeconfig: str | None,
    mgmt_kubeconfig: str | None,
    namespace: str,
    force: bool,
    timeout: float,
) -> None:
    """Unregister tenant cluster NAME: delete its registration Secret, wait until kubelbd
    has removed what it made (in the tenant; in the management cluster the namespace
    tenant-NAME, Tenant record and policy included), then remove kubelbd's ServiceAccount,
    token and ClusterRole from the tenant."""
    mgmt_path = _mgmt_source(mgmt_kubeconfig)

    async def main() -> None:
        async with await Kube.management(mgmt_path) as mgmt:
            if admin_kubeconfig is None:
                await registration.unregister(mgmt, None, name, namespace, _say, not force, timeout)
            else:
                async with await Kube.from_file(admin_kubeconfig, name) as tenant:
                    await registration.unregister(
                        mgmt, tenant, name, namespace, _say, not force, timeout
                    )
        click.echo(f"tenant {name} unregistered")

    _run(main)
