"""The Gateway model (pure), kept between changes: what the data plane calls on every change
of a Gateway or of a route attached to one.

`build` is the model of some Gateways and routes from nothing. `GatewayModel` is one
tenant's, kept: a route changed moves only its own rules, and only the hosts it is on are
ordered again, so their listeners (and their hosts' Envoy resources, which the renderer
keeps by identity) are new and everything else is the same object as before. A change of
what the listeners are made of (a Gateway, an address, the certificates, the minute they
are checked at, the tenant's node addresses) builds the tenant's model again from its
routes. `build_by_tenant` keeps one model per tenant: tenants' Gateways share no listener
(each has its own address, or its own ports) and a route attaches to its own tenant's
Gateways only, so the parts are independent and their merge is what one build of them all
gives. A property test holds a long series of updates equal to a build from nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..records.types import LBRecord, RouteRecord, TenantRecord
from .gateway import (
    Attachment,
    Chain,
    Entry,
    GatewayChain,
    GatewayHost,
    GatewayHTTPListener,
    GatewayIR,
    Listeners,
    attach,
    forget_compiled,
    listener_name,
    listeners_of,
    ordered,
)
from .gateway_streams import add_streams
from .l4 import Placement
from .tls import CertificateData

#: a host of a chain
Domain = tuple[Chain, str]


def build(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    routes: Iterable[RouteRecord],
    certificates: Mapping[str, CertificateData],
    now: dt.datetime,
    tenants: Mapping[str, TenantRecord] | None = None,
) -> GatewayIR:
    """Every Gateway's listeners with what is attached to them. `gateways`:
    LoadBalancer records with listeners, by id; `placements`: their addresses (a Gateway
    without one is not served yet); `routes`: every route (those without parents are not
    looked at); `certificates`: the management cluster's, by secret id, checked at `now`;
    `tenants`: their node addresses, which TLS, TCP and UDP listeners proxy to."""
    routes = list(routes)
    out = GatewayModel().update(gateways, placements, routes, certificates, now, tenants or {})
    forget_compiled(routes)
    return out


class GatewayModel:
    """One tenant's Gateway model, updated by the routes that changed."""

    def __init__(self) -> None:
        self._inputs: tuple[Any, ...] | None = None
        self._reset(Listeners())

    def _reset(self, listeners: Listeners) -> set[Domain]:
        """Everything from the routes again, on `listeners`: the hosts to order."""
        self._listeners = listeners
        self._routes: dict[str, Attachment] = {}
        #: (chain, domain) -> route id -> its entries there
        self._entries: dict[Domain, dict[str, list[Entry]]] = {}
        #: chain -> domain -> its host, as last ordered
        self._hosts: dict[Chain, dict[str, GatewayHost]] = {}
        self._chains: dict[Chain, GatewayChain] = {}
        self._ports: dict[tuple[str, int], GatewayHTTPListener] = {}
        self._counted: Counter[tuple[str, str]] = Counter()
        self._served: dict[str, list[str]] = {}
        self._named: dict[str, dict[str, list[str]]] = {}
        for key in listeners.served:
            self._hosts[key] = {}
            for name in sorted(listeners.hostnames.get(key, set()) - {""}):
                # A listener's hostname with nothing attached answers 404 itself, rather than
                # let a less specific listener's routes answer for its hosts.
                self._entries[(key, name)] = {}
        return set(self._entries)

    def update(
        self,
        gateways: Mapping[str, LBRecord],
        placements: Mapping[str, Placement],
        routes: Sequence[RouteRecord],
        certificates: Mapping[str, CertificateData],
        now: dt.datetime,
        tenants: Mapping[str, TenantRecord],
        inputs: tuple[Any, ...] | None = None,
    ) -> GatewayIR:
        """The model of `gateways` and `routes` (as `build`'s). `inputs`: what the listeners
        are made of, as the caller tells a change (records by identity, since the data plane
        replaces a record when it changes; None: changed)."""
        dirty: set[Domain] = set()
        if inputs is None or self._inputs is None or not _same(inputs, self._inputs):
            dirty = self._reset(listeners_of(gateways, placements, certificates, now))
            self._inputs = inputs
        self._move(routes, dirty)
        out = self._output(dirty)
        add_streams(gateways, placements, list(routes), certificates, now, tenants, out)
        used = {c.secret for x in out.listeners for c in x.chains}
        used |= {c.secret for x in out.tls_listeners for c in x.chains if c.weights}
        # The certificates Envoy is to hold are those a filter chain it is handed names: one
        # served that none names is never asked for (and never reported held).
        out.secrets = {sid: certificates[sid] for sid in sorted(used - {""})}
        return out

    def _move(self, routes: Sequence[RouteRecord], dirty: set[Domain]) -> None:
        """Attach the routes that are new or replaced, detach those gone; add the hosts whose
        rules that changed to `dirty`."""
        ids = set()
        for route in routes:
            ids.add(route.id)
            held = self._routes.get(route.id)
            if held is not None and held.route is route:
                continue
            if held is not None:
                self._detach(held, dirty)
            new = self._routes[route.id] = attach(route, self._listeners)
            self._counted.update(new.counted)
            if new.served:
                self._served[route.id] = new.served
            if new.named:
                self._named[route.id] = new.named
            for domain, entries in new.entries.items():
                self._entries.setdefault(domain, {})[route.id] = entries
                dirty.add(domain)
        for gone in [rid for rid in self._routes if rid not in ids]:
            self._detach(self._routes.pop(gone), dirty)

    def _detach(self, held: Attachment, dirty: set[Domain]) -> None:
        rid = held.route.id
        self._counted.subtract(held.counted)
        self._served.pop(rid, None)
        self._named.pop(rid, None)
        for domain in held.entries:
            del self._entries[domain][rid]
            dirty.add(domain)

    def _output(self, dirty: set[Domain]) -> GatewayIR:
        """The model, with the hosts in `dirty` ordered again and their listeners new."""
        listeners = self._listeners
        for key, domain in dirty:
            by_route = self._entries[(key, domain)]
            if by_route or domain in listeners.hostnames.get(key, ()):
                rules = ordered(e for rid in sorted(by_route) for e in by_route[rid])
                self._hosts[key][domain] = GatewayHost(domain, rules)
            else:
                del self._entries[(key, domain)]
                self._hosts[key].pop(domain, None)
        moved = {key for key, _ in dirty} | (set(listeners.served) - set(self._chains))
        for key in moved:
            hosts = self._hosts[key]
            server_name, secret = listeners.chains[key]
            ordered_hosts = tuple(hosts[d] for d in sorted(hosts))
            self._chains[key] = GatewayChain(key[2], server_name, secret, ordered_hosts)
        for gid, port in {(key[0], key[1]) for key in moved}:
            chains = tuple(self._chains[k] for k in listeners.served if k[:2] == (gid, port))
            name = listener_name(gid, port)
            self._ports[(gid, port)] = GatewayHTTPListener(
                name, listeners.addresses[gid], port, chains
            )
        return GatewayIR(
            listeners=[self._ports[p] for p in sorted(self._ports)],
            unserved={gid: dict(u) for gid, u in listeners.unserved.items()},
            attached={
                gid: {name: self._counted[(gid, name)] for name in names}
                for gid, names in listeners.attached.items()
            },
            served=dict(self._served),
            hosts=dict(self._named),
        )


def build_by_tenant(
    gateways: Mapping[str, LBRecord],
    placements: Mapping[str, Placement],
    routes: Sequence[RouteRecord],
    certificates: Mapping[str, CertificateData],
    certificates_version: int,
    now: dt.datetime,
    tenants: Mapping[str, TenantRecord],
    models: dict[str, GatewayModel],
) -> GatewayIR:
    """What `build` returns, kept one model per tenant (`models`, the caller's, across
    calls): a tenant's listeners are made again when something they are made of changed (a
    Gateway record replaced, its placement, the tenant's node addresses, the certificates'
    `certificates_version`, the minute they are checked at), and its routes moved when
    their records are replaced."""
    by_tenant: dict[str, tuple[dict[str, LBRecord], list[RouteRecord]]] = {}
    for gid, gw in gateways.items():
        by_tenant.setdefault(gw.tenant, ({}, []))[0][gid] = gw
    for route in routes:
        by_tenant.setdefault(route.tenant, ({}, []))[1].append(route)
    minute = now.replace(second=0, microsecond=0)
    out = GatewayIR()
    # Sorted as a build sorts Gateway ids (`<tenant>/<record>`): the parts' listeners then
    # come in the order one build of them all gives.
    for tenant in sorted(by_tenant, key=lambda t: f"{t}/"):
        gws, rts = by_tenant[tenant]
        ids = sorted(gws)
        inputs = (
            tuple(gws[g] for g in ids), tuple(placements.get(g) for g in ids),
            tenants.get(tenant), certificates_version, minute,
        )  # fmt: skip
        model = models.setdefault(tenant, GatewayModel())
        _merge(out, model.update(gws, placements, rts, certificates, now, tenants, inputs))
    for gone in set(models) - set(by_tenant):
        del models[gone]
    out.l4_clusters.sort(key=lambda c: c.name)
    forget_compiled(routes)
    return out


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Gateway records by identity (replaced when they change), the rest by value."""
    return (
        len(a[0]) == len(b[0])
        and all(p is q for p, q in zip(a[0], b[0], strict=True))
        and a[1:] == b[1:]
    )


def _merge(out: GatewayIR, part: GatewayIR) -> None:
    out.listeners += part.listeners
    out.tls_listeners += part.tls_listeners
    out.l4_listeners += part.l4_listeners
    out.l4_clusters += part.l4_clusters
    out.secrets.update(part.secrets)
    out.unserved.update(part.unserved)
    out.attached.update(part.attached)
    out.served.update(part.served)
    out.hosts.update(part.hosts)
