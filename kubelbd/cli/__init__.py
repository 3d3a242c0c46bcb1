"""The `kubelbd` command: `serve` runs the load balancer; the other subcommands are the
operator's (registering tenants, asking what is served and why). Built with click, a kept
library, rather than argparse sub-parsers by hand: each subcommand lives in its own module and
is added here with one line."""

from __future__ import annotations

import anyio
import click

from . import inspect
from .register import register, unregister


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Layer 7 and Layer 4 load balancing for a fleet of Kubernetes clusters."""


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the load balancer (flags: `kubelbd serve --help`)."""
    from ..app import run
    from ..config import parse_args

    anyio.run(run, parse_args(ctx.args))


main.add_command(inspect.status)
main.add_command(inspect.routes)
main.add_command(inspect.why)
main.add_command(register)
main.add_command(unregister)
