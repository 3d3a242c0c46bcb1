"""What the Gateway API sources (gateway.py, httproute.py) share: where the kinds live,
kubelbd's GatewayClass, which listeners of a Gateway kubelbd serves, record names, and how
a status document the data plane decided is written (its conditions stamped).

Pure. The two source modules import this one, never each other (pyproject.toml).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from ..objects import MANAGED_BY, MANAGER, Obj, Resource
from ..records.conditions import stamp
from ..records.names import GATEWAY_CONTROLLER, dotted
from ..records.policy import Policy
from ..records.problems import Problem
from . import shapes
from .common import HOST, normalize_host
from .dnsnames import not_allowed

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"
GATEWAYS = Resource(API_VERSION, "gateways")
HTTPROUTES = Resource(API_VERSION, "httproutes")
GATEWAY_CLASSES = Resource(API_VERSION, "gatewayclasses", namespaced=False)
REFERENCE_GRANTS = Resource(f"{GROUP}/v1beta1", "referencegrants")

#: listeners served per Gateway, as the Gateway API CRD allows (a tenant may loosen its CRD)
MAX_LISTENERS = 64
#: the GatewayClass kubelbd keeps in every tenant, and the controller it names
CLASS_NAME = "kubelb"
CONTROLLER = GATEWAY_CONTROLLER
#: what this slice does, as Gateway API names its features (pkg/features): core Gateway
#: and HTTPRoute, method and query parameter matches, a parentRef's port; sorted
SUPPORTED_FEATURES = (
    "Gateway",
    "HTTPRoute",
    "HTTPRouteMethodMatching",
    "HTTPRouteParentRefPort",
    "HTTPRouteQueryParamMatching",
    "ReferenceGrant",
)
#: the listener protocols served in this slice
SERVED_PROTOCOLS = ("HTTP",)


def gateway_record(namespace: str, name: str) -> str:
    """A Gateway's LoadBalancer record: `<ns>.<name>.gateway`. A Service's is `<ns>.<svc>`
    and a Service name has no dot, so the two never meet; a name past the limit is cut and
    hashed (records.names.dotted), which makes it longer than any Service's record."""
    return dotted(namespace, f"{name}.gateway")


def httproute_record(namespace: str, name: str) -> str:
    """An HTTPRoute's Route record: `<ns>.<name>.httproute`. An Ingress's is `<ns>.<name>`
    and an Ingress name may have dots, so an Ingress `x.httproute` and an HTTPRoute `x` of
    one namespace would share a record: only the owner of that namespace can make both
    (no other namespace, no other tenant), and a shorter scheme has the same hole."""
    return dotted(namespace, f"{name}.httproute")


def is_our_gateway(gateway: Obj) -> bool:
    if not shapes.fits(shapes.GatewayClassOf, gateway):
        return False  # whose it is cannot be told: not ours to report on either
    return bool((gateway.get("spec") or {}).get("gatewayClassName") == CLASS_NAME)


def gateway_class() -> Obj:
    """kubelbd's GatewayClass, with the status the tenant side applies to it (each
    condition's observedGeneration is the generation the apply left it at)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "GatewayClass",
        "metadata": {"name": CLASS_NAME, "labels": {MANAGED_BY: MANAGER}},
        "spec": {
            "controllerName": CONTROLLER,
            "description": "kubelbd: served by the provider's shared Envoy",
        },
        "status": {
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "True",
                    "reason": "Accepted",
                    "message": "handled by kubelbd",
                }
            ],
            "supportedFeatures": [{"name": f} for f in SUPPORTED_FEATURES],
        },
    }


# ---- listeners -------------------------------------------------------------------------------


def listener_problem(listener: Mapping[str, Any], reason: str, message: str) -> Problem:
    """A problem with one listener: its message starts `listener <name>: ` so that whoever
    reports listener conditions can tell which one (the record lists served ones only)."""
    return Problem(reason, f"listener {str(listener.get('name'))[:253]}: {message}")


@dataclass
class Listeners:
    """A Gateway's listeners as kubelbd serves them: `served` (raw listeners, hostnames
    normalized), in the Gateway's order; the others refused with a problem each."""

    served: list[Obj] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: every listener name the Gateway has (a parentRef's sectionName may name a refused one)
    names: set[str] = field(default_factory=set)


def listeners(gateway: Obj, policy: Policy) -> Listeners:
    """Which listeners of a Gateway (of the right shape) are served: HTTP, a hostname that
    is a DNS name the tenant may have, and no earlier listener with the same name or with
    the same port and hostname."""
    out = Listeners()
    seen: dict[tuple[int, str], str] = {}
    for listener in (gateway.get("spec") or {}).get("listeners") or []:
        name = listener["name"]
        if name in out.names:
            out.problems.append(listener_problem(listener, "DuplicateName", "listed twice"))
            continue
        out.names.add(name)
        protocol = listener["protocol"]
        port = listener.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            # Envoy refuses a listener on no port: never handed one, whatever the CRD allows.
            out.problems.append(listener_problem(listener, "InvalidPort", f"port {port!r}"))
            continue
        if len(out.served) >= MAX_LISTENERS:
            message = f"more than {MAX_LISTENERS} listeners (Gateway API's own limit)"
            out.problems.append(listener_problem(listener, "TooManyListeners", message))
            continue
        if protocol not in SERVED_PROTOCOLS:
            message = f"protocol {protocol[:32]!r} is not supported (HTTP only, for now)"
            out.problems.append(listener_problem(listener, "UnsupportedProtocol", message))
            continue
        host = normalize_host(listener.get("hostname") or "")
        if host and not HOST.fullmatch(host):
            message = f"hostname {host[:253]!r} is not a DNS name"
            out.problems.append(listener_problem(listener, "InvalidHostname", message))
            continue
        if host and not policy.allows_host(host):
            refused = not_allowed(host)
            out.problems.append(listener_problem(listener, refused.reason, refused.message))
            continue
        other = seen.get((listener["port"], host))
        if other is not None:
            message = f"port {listener['port']} and hostname {host!r} are listener {other}'s"
            out.problems.append(listener_problem(listener, "HostnameConflict", message))
            continue
        seen[(listener["port"], host)] = name
        served = dict(listener)
        if host:
            served["hostname"] = host
        else:
            served.pop("hostname", None)
        out.served.append(served)
    return out


# ---- status documents ------------------------------------------------------------------------


def document(text: str) -> Any:
    """The data plane's status document (canonical JSON), parsed."""
    return json.loads(text)


def without_times(value: Any) -> Any:
    """A status with every condition's lastTransitionTime left out: what the data plane's
    documents are compared with."""
    if isinstance(value, dict):
        return {
            k: (
                [without_times(c) for c in v]
                if k == "conditions" and isinstance(v, list)
                else without_times(v)
            )
            for k, v in value.items()
            if k != "lastTransitionTime"
        }
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def _identity(item: Any) -> str | None:
    """What an entry of a status list is matched by across writes: a listener by name, a
    Route's parent by parentRef and controller."""
    if not isinstance(item, dict):
        return None
    if "name" in item:
        return f"name:{json.dumps(item['name'], sort_keys=True)}"
    if "parentRef" in item:
        return json.dumps([item.get("parentRef"), item.get("controllerName")], sort_keys=True)
    return None


def stamped(new: Any, old: Any, now: str) -> Any:
    """`new` (a status document without times) with a lastTransitionTime on every condition:
    the one `old` (what the object holds) has for it while its status holds, else `now`.
    Conditions in lists are matched by type; other list entries by identity (see above)."""
    if isinstance(new, dict):
        before = old if isinstance(old, dict) else {}
        out: dict[str, Any] = {}
        for k, v in new.items():
            if k == "conditions" and isinstance(v, list):
                out[k] = stamp(v, _conditions(before.get(k)), now)
            else:
                out[k] = stamped(v, before.get(k), now)
        return out
    if isinstance(new, list):
        olds = old if isinstance(old, list) else []
        by_id = {i: o for o in olds if (i := _identity(o)) is not None}
        return [stamped(v, by_id.get(_identity(v) or ""), now) for v in new]
    return new


def _conditions(value: Any) -> list[Obj]:
    """The conditions a tenant object holds that a lastTransitionTime can be kept from."""
    if not isinstance(value, list):
        return []
    return [
        c
        for c in value
        if isinstance(c, dict)
        and isinstance(c.get("type"), str)
        and isinstance(c.get("lastTransitionTime"), str)
    ]


def now() -> str:
    """The time a condition that changed now is stamped with (as the API server writes it)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_status(obj: Obj) -> dict[str, Any]:
    status = obj.get("status")
    return cast(dict[str, Any], status) if isinstance(status, dict) else {}


def ours(entries: Iterable[Any]) -> list[Any]:
    """Route parent statuses kubelbd wrote (controllerName ours)."""
    return [e for e in entries if isinstance(e, dict) and e.get("controllerName") == CONTROLLER]
