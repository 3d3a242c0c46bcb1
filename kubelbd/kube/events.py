"""Kubernetes Events on the objects users look at (`kubectl describe ingress` shows them).

Each distinct (object, reason, message) is recorded once and then counted, the way
client-go's recorder aggregates, so a reconcile loop cannot flood the API server.
"""

from __future__ import annotations

import hashlib
import logging

from ..objects import EVENTS, Obj
from .client import ApiError, Kube, timestamp

log = logging.getLogger(__name__)

COMPONENT = "kubelbd"


class Recorder:
    def __init__(self, kube: Kube, component: str = COMPONENT) -> None:
        self.kube = kube
        self.component = component
        self._seen: dict[str, int] = {}

    async def emit(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        digest = hashlib.sha256(f"{meta.get('uid')}/{reason}/{message}".encode()).hexdigest()[:12]
        name = f"{meta['name'][:200]}.{digest}"
        count = self._seen.get(name, 0) + 1
        self._seen[name] = count
        if len(self._seen) > 10000:
            self._seen.clear()
        t = timestamp()
        try:
            if count == 1:
                await self.kube.create(
                    EVENTS,
                    {
                        "apiVersion": "v1",
                        "kind": "Event",
                        "metadata": {"name": name, "namespace": ns},
                        "involvedObject": {
                            "apiVersion": obj.get("apiVersion", ""),
                            "kind": obj.get("kind", ""),
                            "name": meta["name"],
                            "namespace": ns,
                            "uid": meta.get("uid", ""),
                            "resourceVersion": meta.get("resourceVersion", ""),
                        },
                        "type": type_,
                        "reason": reason,
                        "message": message,
                        "source": {"component": self.component},
                        "reportingComponent": self.component,
                        "firstTimestamp": t,
                        "lastTimestamp": t,
                        "count": 1,
                    },
                    ns,
                )
            else:
                await self.kube.patch(EVENTS, name, {"count": count, "lastTimestamp": t}, ns)
        except ApiError as e:
            if e.conflict:  # a previous run created it: count on from here
                self._seen[name] = 1
            elif e.not_found:  # expired: start over
                self._seen.pop(name, None)
            log.debug("event %s/%s: %s", ns, name, e)
        except ConnectionError as e:
            log.debug("event %s/%s: %s", ns, name, e)
