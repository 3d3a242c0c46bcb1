"""hack/bench <benchmark> [options]; results go to stdout, to be copied to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys

from . import fleet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("fleet", help="time `fleet up` with cached binaries; the fleet's RSS")
    up.add_argument("--runs", type=int, default=5)
    up.add_argument("--tenants", type=int, default=2)
    up.add_argument("--base-port", type=int, default=18400)
    sub.add_parser("build", help="cold build of the Kubernetes binaries (empty caches)")
    args = ap.parse_args(argv)
    if args.cmd == "fleet":
        fleet.bench_up(args.runs, args.tenants, args.base_port)
    elif args.cmd == "build":
        fleet.bench_build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
