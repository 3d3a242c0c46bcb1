"""kubelbd's CustomResourceDefinitions: read from the package, applied at start-up, and
waited for until the API server serves them.

The documents live beside the types they declare (kubelbd/records/crds/); reading them is
I/O, so it happens here, outside the pure records package.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import anyio
import yaml

from ..objects import CRDS
from .client import Kube

log = logging.getLogger(__name__)


def load() -> list[dict[str, Any]]:
    """Every CRD document (LoadBalancer, Route, Tenant), in file name order."""
    folder = resources.files("kubelbd.records").joinpath("crds")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    return [yaml.safe_load(f.read_text()) for f in files]


async def install(kube: Kube, docs: list[dict[str, Any]], timeout: float = 60) -> None:
    """Apply every CRD and wait until the API server serves them."""
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
