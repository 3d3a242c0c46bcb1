"""hack/fleet: up | down | status | stop <component> [cluster] | start <component> [cluster]."""

from __future__ import annotations

import argparse
import sys
import time

from .fleet import Fleet, FleetError, State, describe
from .layout import DEFAULT_BASE_PORT, Layout, fleet_dir, validate_replicas, validate_tenants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/fleet", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the fleet and wait until it is ready")
    up.add_argument("--tenants", type=int, default=2, help="tenant clusters (default 2)")
    up.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    up.add_argument("--replicas", type=int, default=1,
                    help="kubelbd+Envoy pairs on their own ports; one Lease leader")  # fmt: skip
    sub.add_parser("down", help="stop every process the fleet started")
    sub.add_parser("status", help="what runs, with memory; exit 0 only if all of it runs")
    sub.add_parser("env", help="print fleet.env")
    for verb in ("stop", "start"):
        p = sub.add_parser(verb, help=f"{verb} one component (apiserver, node-2, kubelbd, ...)")
        p.add_argument("component")
        p.add_argument("cluster", nargs="?", default=None)
    args = ap.parse_args(argv)

    state = State.load(fleet_dir() / "state.json")
    if args.cmd == "up":
        validate_tenants(args.tenants)
        validate_replicas(args.replicas)
        layout = Layout(args.tenants, args.base_port, fleet_dir(), args.replicas)
    elif state is not None:
        layout = Layout(state.tenants, state.base_port, fleet_dir(), state.replicas)
    else:
        layout = Layout(2, DEFAULT_BASE_PORT, fleet_dir())
    fleet = Fleet(layout)

    try:
        if args.cmd == "up":
            start = time.monotonic()
            fleet.up()
            print(f"fleet: up in {time.monotonic() - start:.1f}s; . {layout.env_file}")
        elif args.cmd == "down":
            fleet.down()
        elif args.cmd == "status":
            print(describe(fleet))
            running = fleet.running()
            return 0 if running and all(running.values()) else 1
        elif args.cmd == "env":
            print(layout.env_file.read_text(), end="")
        elif args.cmd == "stop":
            fleet.stop_component(args.component, args.cluster)
        elif args.cmd == "start":
            fleet.start_component(args.component, args.cluster)
    except FleetError as e:
        print(f"fleet: error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"fleet: error: {e.filename}: not found (is the fleet up?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
