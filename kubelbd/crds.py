"""kubelbd's CustomResourceDefinitions: shipped in the package, applied at start-up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import yaml

from .kube import CRDS, Kube

log = logging.getLogger(__name__)

CRD_DIR = Path(__file__).resolve().parent / "crds"


def load() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]


async def install(kube: Kube, timeout: float = 60) -> None:
    """Apply every CRD and wait until the API server serves them."""
    docs = await anyio.to_thread.run_sync(load)
    for doc in docs:
        await kube.apply(CRDS, doc)
    with anyio.fail_after(timeout):
        for doc in docs:
            while True:
                crd = await kube.get(CRDS, doc["metadata"]["name"])
                established = any(
                    c.get("type") == "Established" and c.get("status") == "True"
                    for c in (crd.get("status") or {}).get("conditions") or []
                )
                if established:
                    break
                await anyio.sleep(0.1)
    log.info("CRDs installed: %s", ", ".join(d["metadata"]["name"] for d in docs))
