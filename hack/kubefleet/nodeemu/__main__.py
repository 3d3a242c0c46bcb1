"""One emulated node: kubelet (Node, Lease, pods, logs) and kube-proxy (NodePorts) in one
process.

SIGTERM stops it the way a node shuts down gracefully: ports close, its pods and the Node turn
NotReady, then it exits. SIGKILL leaves that to the node lifecycle controller, as in life.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
from pathlib import Path
from typing import Any

from kubelbd.kube import Kube

from .kubelet import Kubelet
from .logserver import KUBELET_PORT, KubeletServer, server_context
from .proxy import KubeProxy

#: Seconds between a graceful stop marking pods NotReady and the ports closing.
SHUTDOWN_DRAIN = 1.0


async def run(args: argparse.Namespace) -> None:
    kube = await Kube.from_file(args.kubeconfig, name=f"{args.cluster}/{args.node}")
    pods_dir = Path(args.pods_dir) if args.pods_dir else None
    if pods_dir is not None:
        # What a previous run left (killed, not stopped): its processes died with it.
        shutil.rmtree(pods_dir, ignore_errors=True)
    server: KubeletServer | None = None
    kubelet = Kubelet(
        kube, args.cluster, args.node, args.ip, args.pod_cidr,
        echo_basic=Path(args.echo_basic) if args.echo_basic else None, pods_dir=pods_dir,
        coredns=Path(args.coredns) if args.coredns else None,
    )  # fmt: skip
    if args.tls_cert:
        ctx = server_context(
            Path(args.tls_cert),
            Path(args.tls_key),
            Path(args.client_ca) if args.client_ca else None,
        )
        server = KubeletServer(kubelet.container_log, args.ip, args.kubelet_port, ctx)
        kubelet.kubelet_port = await server.start()
    proxy = KubeProxy(kube, args.node, args.ip)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await kubelet.register()
    logging.info("node %s/%s registered at %s", args.cluster, args.node, args.ip)
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(kubelet.heartbeat()),
        asyncio.create_task(kubelet.pods.run()),
        asyncio.create_task(kubelet.sync_pods()),
        asyncio.create_task(proxy.run()),
    ]
    waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    everything: list[asyncio.Task[Any]] = [waiter, *tasks]
    done, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
    done.discard(waiter)
    if stop.is_set():
        # Like a graceful node shutdown: pods go NotReady first, the endpoint change reaches
        # every other node's kube-proxy, and only then do the ports close. The kubelet side
        # stops first so it does not mark the pods Ready again; kube-proxy keeps serving.
        logging.info("node %s/%s stopping", args.cluster, args.node)
        for t in tasks[:3]:
            t.cancel()
        await asyncio.gather(*tasks[:3], return_exceptions=True)
        try:
            async with asyncio.timeout(5):
                await kubelet.mark_all_not_ready()
                await kubelet.post_status(False, "KubeletStopped", "node emulator stopped")
            await asyncio.sleep(SHUTDOWN_DRAIN)
        except Exception as e:  # best effort on the way out
            logging.warning("could not report shutdown: %s", e)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await proxy.close()
    if server is not None:
        await server.close()
    await kubelet.stop_all()
    if not stop.is_set():
        for t in done:
            t.result()
    await kube.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(prog="kubefleet.nodeemu")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--pod-cidr", required=True)
    ap.add_argument("--echo-basic", help="echo-basic binary: run it for echo-basic pods")
    ap.add_argument("--coredns", help="CoreDNS binary: run it for CoreDNS pods (with --echo-basic)")
    ap.add_argument("--pods-dir", help="per-pod directories (secrets, logs); emptied at start")
    ap.add_argument("--tls-cert", help="serving certificate: serve /containerLogs on --ip")
    ap.add_argument("--tls-key")
    ap.add_argument("--client-ca", help="accept only clients this CA signed (the API server)")
    ap.add_argument("--kubelet-port", type=int, default=KUBELET_PORT)
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
