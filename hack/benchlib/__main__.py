"""hack/bench <benchmark> [options]; results go to stdout, to be copied to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import sys

from . import (
    certs,
    churn,
    convergence,
    dataplane,
    dns,
    fleet,
    heap,
    l4,
    memory,
    names,
    render,
    restart,
    status,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("fleet", help="time `fleet up` with cached binaries; the fleet's RSS")
    up.add_argument("--runs", type=int, default=5)
    up.add_argument("--tenants", type=int, default=2)
    up.add_argument("--base-port", type=int, default=18400)
    sub.add_parser("build", help="cold build of the Kubernetes binaries (empty caches)")
    conv = sub.add_parser("convergence", help="Ingress write → first 200 through Envoy")
    conv.add_argument("--scales", default="10,100,1000", help="routes present, comma-separated")
    conv.add_argument("--changes", type=int, default=100, help="changes measured per scale")
    conv.add_argument("--kinds", default="route,backend,burst",
                      help="route, backend (new Service), burst, httproute")  # fmt: skip
    conv.add_argument("--fill", default="ingress", choices=("ingress", "httproute"),
                      help="what the routes present are")  # fmt: skip
    conv.add_argument("--burst", type=int, default=20, help="Ingresses written at once (burst)")
    conv.add_argument("--keep", action="store_true", help="leave the routes (for `heap`)")
    l4b = sub.add_parser("l4", help="LoadBalancer Service write → first echo through Envoy")
    l4b.add_argument("--changes", type=int, default=100)
    db = sub.add_parser("dns", help="Ingress write → its name answered by the DNS server")
    db.add_argument("--scales", default="10,100,1000", help="hosts present, comma-separated")
    db.add_argument("--changes", type=int, default=50, help="changes measured per scale")
    cb = sub.add_parser("certs", help="N certificates on one Envoy: start, rotation, RSS")
    cb.add_argument("--n", type=int, default=1000, help="certificates (one host each)")
    cb.add_argument("--runs", type=int, default=5)
    cb.add_argument("--designs", default=",".join(certs.DESIGNS), help="files, inline, ads")
    dp = sub.add_parser("dataplane", help="a request's cost: kubelbd's Envoy, a minimal one, none")
    dp.add_argument("--rounds", type=int, default=5)
    dp.add_argument("--connections", type=int, default=8)
    dp.add_argument("--seconds", type=int, default=8)
    st = sub.add_parser("status", help="Ingresses written at once until all have their status")
    st.add_argument("--ingresses", type=int, default=1000)
    st.add_argument("--runs", type=int, default=5)
    rs = sub.add_parser(
        "restart", help="kubelbd and Envoy restarted with N routes: until all served"
    )
    rs.add_argument("--routes", type=int, default=10000, help="routes present across the tenants")
    rs.add_argument("--runs", type=int, default=3)
    ch = sub.add_parser(
        "churn", help="constant load (wrk, h2load) while things change: every failure"
    )
    ch.add_argument("--others", type=int, default=150, help="other Ingresses that come and go")
    ch.add_argument("--node-down", type=float, default=15.0, help="seconds node-3 is stopped")
    mb = sub.add_parser("memory", help="what kubelbd's stages hold per route (offline)")
    mb.add_argument("--routes", type=int, default=10000)
    mb.add_argument(
        "--caches", action="store_true", help="also the fleet's objects as kubelbd caches them"
    )
    nb = sub.add_parser("names", help="one change's cost in the DNS stages (offline)")
    nb.add_argument("--routes", type=int, default=10000)
    nb.add_argument("--changes", type=int, default=30)
    rb = sub.add_parser("render", help="one route change's cost in the pure stages (offline)")
    rb.add_argument("--routes", type=int, default=10000)
    rb.add_argument("--changes", type=int, default=200)
    hp = sub.add_parser("heap", help="a running kubelbd's live heap, by what holds it (a signal)")
    hp.add_argument("--pid", type=int, default=0, help="default: the fleet's kubelbd")
    args = ap.parse_args(argv)
    if args.cmd == "fleet":
        fleet.bench_up(args.runs, args.tenants, args.base_port)
    elif args.cmd == "build":
        fleet.bench_build()
    elif args.cmd == "convergence":
        scales = [int(x) for x in args.scales.split(",")]
        layout = convergence.ensure_fleet()
        kinds = args.kinds.split(",")
        asyncio.run(
            convergence.run(layout, scales, args.changes, kinds, args.burst, args.fill, args.keep)
        )
    elif args.cmd == "certs":
        asyncio.run(certs.run(args.n, args.runs, args.designs.split(",")))
    elif args.cmd == "dns":
        scales = [int(x) for x in args.scales.split(",")]
        asyncio.run(dns.run(convergence.ensure_fleet(), scales, args.changes))
    elif args.cmd == "dataplane":
        layout = convergence.ensure_fleet()
        asyncio.run(dataplane.run(layout, args.rounds, args.connections, args.seconds))
    elif args.cmd == "status":
        asyncio.run(status.run(convergence.ensure_fleet(), args.ingresses, args.runs))
    elif args.cmd == "churn":
        asyncio.run(churn.run(convergence.ensure_fleet(), args.others, args.node_down))
    elif args.cmd == "restart":
        asyncio.run(restart.run(convergence.ensure_fleet(), args.routes, args.runs))
    elif args.cmd == "heap":
        heap.run(args.pid or fleet.kubelbd_pid())
    elif args.cmd == "memory":
        memory.run(args.routes, convergence.ensure_fleet() if args.caches else None)
    elif args.cmd == "names":
        names.run(args.routes, args.changes)
    elif args.cmd == "render":
        render.run(args.routes, args.changes)
    elif args.cmd == "l4":
        asyncio.run(l4.run(convergence.ensure_fleet(), args.changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
