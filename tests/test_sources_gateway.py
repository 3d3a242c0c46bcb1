"""The Gateway API sources beyond the golden cases: objects of the wrong shape are problems
naming the field (never exceptions), and status documents are written with their
lastTransitionTimes kept while a condition holds, other controllers' route parents kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubelbd.objects import Obj
from kubelbd.records import parse
from kubelbd.records.problems import Problem
from kubelbd.records.status import SourceStatus
from kubelbd.sources import gateway, gatewayapi, httpfilters, httproute, routes
from kubelbd.tenant.statuses import tenant_object_status

from .test_golden_sources import GATEWAY_KINDS, View

T0, T1 = "2026-01-01T00:00:00Z", "2026-02-02T00:00:00Z"
GW = {"metadata": {"name": "gw", "namespace": "default"},
      "spec": {"gatewayClassName": "kubelb",
               "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}  # fmt: skip


def _view(*objects: Obj) -> View:
    view = View({"gateways": [json.loads(json.dumps(GW))]})
    for obj in objects:
        view.objects[GATEWAY_KINDS[obj.pop("field")]][
            f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        ] = obj
    return view


def _route(spec: Any) -> Obj:
    return {"metadata": {"name": "r", "namespace": "default"}, "spec": spec}


def _reasons(spec: Any) -> list[str]:
    return [p["reason"] for p in spec.get("problems", [])]


# ---- hostile shapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"gatewayClassName": "kubelb", "listeners": {"name": "x"}}, "spec.listeners"),
        (
            {
                "gatewayClassName": "kubelb",
                "listeners": [{"name": "x", "port": "80", "protocol": "HTTP"}],
            },
            "spec.listeners.0.port",
        ),
        ({"gatewayClassName": "kubelb", "addresses": [{"value": 5}]}, "spec.addresses.0.value"),
        (
            {
                "gatewayClassName": "kubelb",
                "listeners": [
                    {
                        "name": "x",
                        "port": 80,
                        "protocol": "HTTP",
                        "allowedRoutes": {"namespaces": {"from": ["All"]}},
                    }
                ],
            },
            "spec.listeners.0.allowedRoutes.namespaces.from",
        ),
    ],
)
def test_a_gateway_of_the_wrong_shape_is_refused_naming_the_field(spec: Any, where: str) -> None:
    obj = {"metadata": {"name": "gw", "namespace": "default"}, "spec": spec}
    assert gateway.GatewaySource().is_ours(obj, _view())
    result = gateway.translate(obj, _view())
    assert parse.lb_spec(result.spec) == result.spec
    assert _reasons(result.spec) == ["InvalidObject"]
    assert result.spec["problems"][0]["message"].startswith(where)


def test_a_gateway_whose_class_cannot_be_told_is_nobodys() -> None:
    for spec in ({"gatewayClassName": ["kubelb"]}, [1], "kubelb"):
        assert not gateway.GatewaySource().is_ours({"metadata": {}, "spec": spec}, _view())


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"parentRefs": [{"name": "gw"}], "hostnames": "a.example.com"}, "spec.hostnames"),
        (
            {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": -1}]}],
            },
            "spec.rules.0.backendRefs.0.weight",
        ),
        (
            {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"matches": [{"headers": [{"name": "a", "value": 1}]}]}],
            },
            "spec.rules.0.matches.0.headers.0.value",
        ),
        (
            {"parentRefs": [{"name": "gw"}], "rules": [{"filters": [{}]}]},
            "spec.rules.0.filters.0.type",
        ),
    ],
)
def test_an_httproute_of_the_wrong_shape_is_refused_naming_the_field(spec: Any, where: str) -> None:
    source, obj, view = httproute.HTTPRouteSource(), _route(spec), _view()
    assert source.is_ours(obj, view)
    assert source.references(obj, view).backends == frozenset()
    result = source.translate(obj, view)
    assert parse.route_spec(result.spec) == result.spec
    assert _reasons(result.spec) == ["InvalidObject"] and result.spec["rules"] == []
    assert result.spec["problems"][0]["message"].startswith(where)


def test_parent_refs_that_cannot_be_read_make_a_route_nobodys() -> None:
    source, view = httproute.HTTPRouteSource(), _view()
    for spec in ({"parentRefs": {"name": "gw"}}, {"parentRefs": [{"name": 5}]}, [1]):
        assert not source.is_ours(_route(spec), view)


def test_malformed_grants_namespaces_and_gateways_grant_and_attach_nothing() -> None:
    source = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": ["default"]}
    grant = {"field": "referenceGrants", "metadata": {"name": "g", "namespace": "data"},
             "spec": {"from": [source], "to": [{"group": "", "kind": "Service"}]}}  # fmt: skip
    view = _view(grant)
    backend = {"name": "db", "namespace": "data", "port": 80}
    route = _route({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [backend]}]})
    result = httproute.translate(route, view)
    assert _reasons(result.spec) == ["RefNotPermitted"]
    view.objects[gatewayapi.GATEWAYS]["default/gw"]["spec"]["listeners"] = [{"name": 1}]
    (parent,) = httproute.translate(route, view).spec["parents"]
    assert parent["reason"] == "NoMatchingParent" and "malformed" in parent["message"]


def test_regular_expressions_envoy_might_refuse_are_not_handed_on() -> None:
    assert routes.regex_problem("^/api/v[0-9]+$") is None
    for bad in ("(?i)x", "(a)\\1", "a{2,3}", "[", "x" * 200, "\\p{Greek}"):
        assert routes.regex_problem(bad) is not None, bad


def test_hostnames_meet_as_gateway_api_says() -> None:
    meet = routes.hostnames_meet
    assert meet("*.example.com", "a.b.example.com") and meet("a.example.com", "*.example.com")
    assert meet("*.example.com", "*.a.example.com") and meet("x.com", "x.com")
    assert not meet("*.example.com", "example.com") and not meet("a.example.com", "b.example.com")


# ---- status documents ------------------------------------------------------------------------


def _cond(type_: str, status: str, since: str | None = None, **more: Any) -> Obj:
    out: Obj = {"type": type_, "status": status, "reason": type_, "message": "", **more}
    if since:
        out["lastTransitionTime"] = since
    return out


def test_a_gateways_status_keeps_the_time_of_a_condition_that_holds() -> None:
    have = {"conditions": [_cond("Accepted", "True", T0), _cond("Programmed", "False", T0)],
            "listeners": [{"name": "http", "conditions": [_cond("Accepted", "True", T0)]}],
            "stale": "x"}  # fmt: skip
    want = {"conditions": [_cond("Accepted", "True"), _cond("Programmed", "True")],
            "listeners": [{"name": "http", "attachedRoutes": 1,
                           "conditions": [_cond("Accepted", "True")]}]}  # fmt: skip
    status = SourceStatus("Gateway", "default", "gw", "u", document=json.dumps(want))
    patch = gateway.status_patch({"status": have}, status, T1)
    assert patch is not None and patch.type == "merge"
    body = patch.body["status"]
    assert [c["lastTransitionTime"] for c in body["conditions"]] == [T0, T1]
    assert body["listeners"][0]["conditions"][0]["lastTransitionTime"] == T0
    assert body["stale"] is None  # the whole status is the document
    # Once written, nothing more to write.
    written = {k: v for k, v in body.items() if v is not None}
    assert gateway.status_patch({"status": written}, status, T1) is None
    # No document: nothing decided.
    assert (
        gateway.status_patch({"status": have}, SourceStatus("Gateway", "d", "g", "u"), T1) is None
    )


def test_a_hostile_status_is_replaced_not_raised_on() -> None:
    want = {"conditions": [_cond("Accepted", "True")]}
    status = SourceStatus("Gateway", "default", "gw", "u", document=json.dumps(want))
    for have in ([1], {"conditions": [{"type": ["x"]}, 5]}, {"conditions": "x"}):
        patch = gateway.status_patch({"status": have}, status, T1)
        assert patch is not None
        assert patch.body["status"]["conditions"][0]["lastTransitionTime"] == T1


def _parent(controller: str, since: str | None = None, status: str = "True") -> Obj:
    return {"parentRef": {"name": "gw"}, "controllerName": controller,
            "conditions": [_cond("Accepted", status, since)]}  # fmt: skip


def test_route_parents_of_other_controllers_are_kept() -> None:
    theirs = _parent("example.com/other", T0)
    route = {"metadata": {"resourceVersion": "7"},
             "status": {"parents": [theirs, _parent(gatewayapi.CONTROLLER, T0)]}}  # fmt: skip
    same = SourceStatus("HTTPRoute", "default", "r", "u",
                        document=json.dumps([_parent(gatewayapi.CONTROLLER)]))  # fmt: skip
    assert routes.status_patch(route, same, T1) is None
    refused = json.dumps([_parent(gatewayapi.CONTROLLER, status="False")])
    moved = SourceStatus("HTTPRoute", "default", "r", "u", document=refused)
    patch = routes.status_patch(route, moved, T1)
    assert patch is not None and patch.body["metadata"] == {"resourceVersion": "7"}
    parents = patch.body["status"]["parents"]
    assert parents[0] == theirs
    assert parents[1]["conditions"][0]["lastTransitionTime"] == T1
    # The record gone: kubelbd's entries go, the others stay.
    final = SourceStatus("HTTPRoute", "default", "r", "u", final=True)
    patch = routes.status_patch(route, final, T1)
    assert patch is not None and patch.body["status"]["parents"] == [theirs]


def test_a_tenant_objects_status_is_observed_at_its_generation() -> None:
    want = gatewayapi.gateway_class()["status"]
    applied: Obj = {"metadata": {"name": "kubelb", "generation": 2}}
    status = tenant_object_status(want, applied, T1)
    assert status is not None
    (accepted,) = status["conditions"]
    assert accepted["observedGeneration"] == 2 and accepted["lastTransitionTime"] == T1
    assert {"name": "Gateway"} in status["supportedFeatures"]
    assert tenant_object_status(want, {**applied, "status": status}, "later") is None
    hostile = {**applied, "status": {"conditions": [{"type": 1}, [2]]}}
    assert tenant_object_status(want, hostile, T1) is not None
    assert tenant_object_status(None, applied, T1) is None


@pytest.mark.parametrize(
    ("lower", "name"), [(True, ""), (True, "a b"), (True, "x\ny"), (True, ":authority"),
                        (False, ""), (False, "q\x00")],
)  # fmt: skip
def test_a_match_envoy_would_refuse_is_never_recorded(lower: bool, name: str) -> None:
    """A tenant may loosen its own CRD: a header or parameter name Envoy's matcher refuses
    would make it reject the whole listener file, so the match is refused here."""
    problems: list[Problem] = []
    got = routes.value_matches([{"name": name, "value": "1"}], "header", lower, problems)
    assert got is None and [p.reason for p in problems] == ["UnsupportedValue"]


def test_listeners_envoy_could_not_take_are_refused() -> None:
    gw: Obj = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "default"},
        "spec": {"gatewayClassName": "kubelb", "listeners": [
            {"name": "zero", "port": 0, "protocol": "HTTP"},
            {"name": "huge", "port": 70000, "protocol": "HTTP"},
            *({"name": f"l{i}", "port": 1000 + i, "protocol": "HTTP"} for i in range(70)),
        ]},
    }  # fmt: skip
    got = gatewayapi.listeners(gw, View({}))
    assert len(got.served) == gatewayapi.MAX_LISTENERS
    reasons = [p.reason for p in got.problems]
    assert reasons[:2] == ["InvalidPort", "InvalidPort"]
    assert reasons[2:] == ["TooManyListeners"] * (70 - gatewayapi.MAX_LISTENERS)


def test_gateways_of_the_tenants_own_classes_naming_kubelbd_are_ours() -> None:
    def cls(name: str, spec: Any) -> Obj:
        return {"metadata": {"name": name}, "spec": spec}

    mine = [cls(f"mine-{i:02}", {"controllerName": gatewayapi.CONTROLLER}) for i in range(20)]
    view = View({"gatewayClasses": [
        *mine, cls("istio", {"controllerName": "istio.io/gateway-controller"}),
        cls("weird", ["kubelb.io/gateway-controller"]), cls("kubelb", {"controllerName": "x"}),
    ]})  # fmt: skip

    def of(name: Any) -> Obj:
        return {"metadata": {"name": "g", "namespace": "d"}, "spec": {"gatewayClassName": name}}

    assert gatewayapi.is_our_gateway(of("mine-03"), view)
    assert gatewayapi.is_our_gateway(of("kubelb"), view)  # kubelbd's own, whatever the cache
    for name in ("istio", "weird", "missing", ["mine-03"]):
        assert not gatewayapi.is_our_gateway(of(name), view), name
    reported = gatewayapi.tenants_classes(view)
    # Bounded, by name; never `kubelb` (kubelbd applies that one whole).
    assert [c["metadata"]["name"] for c in reported] == [
        f"mine-{i:02}" for i in range(gatewayapi.MAX_CLASSES)
    ]
    assert all(
        c["status"] == gatewayapi.class_status() and c["kind"] == "GatewayClass" for c in reported
    )
    assert gateway.GatewaySource().reported_objects(view)[0] == (
        gatewayapi.GATEWAY_CLASSES, reported[0]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("value", "ms"),
    [("0s", 0), ("500ms", 500), ("1h30m", 5_400_000), ("1h1m1s1ms", 3_661_001),
     ("1.5s", None), ("1d", None), ("", None), ("1h1m1s1ms1h", None), ("123456s", None),
     ("-1s", None)],
)  # fmt: skip
def test_durations_are_read_as_gateway_api_writes_them(value: str, ms: int | None) -> None:
    assert httpfilters.duration_ms(value) == ms


def _rewrite(path: dict[str, Any] | None = None, hostname: str | None = None) -> Obj:
    return {"type": "URLRewrite", "urlRewrite": {"hostname": hostname, "path": path}}


@pytest.mark.parametrize(
    ("rule", "want"),
    [
        ({"filters": [_rewrite({"type": "ReplacePrefixMatch", "replacePrefixMatch": "/one"},
                               "Example.org")]},
         {"hostname": "example.org", "path": {"type": "ReplacePrefixMatch", "value": "/one"}}),
        ({"matches": [{"path": {"type": "Exact", "value": "/x"}}],
          "filters": [_rewrite({"type": "ReplaceFullPath", "replaceFullPath": "/y"})]},
         {"path": {"type": "ReplaceFullPath", "value": "/y"}}),
        # Gateway API's CRD refuses these; a loosened CRD gets a problem, never a config
        ({"matches": [{"path": {"type": "Exact", "value": "/x"}}],
          "filters": [_rewrite({"type": "ReplacePrefixMatch", "replacePrefixMatch": "/y"})]},
         "ReplacePrefixMatch needs every match to be a PathPrefix"),
        ({"filters": [_rewrite(hostname="x.org"),
                      {"type": "RequestRedirect", "requestRedirect": {}}]},
         "a rule both redirects and rewrites"),
        ({"filters": [_rewrite({"type": "ReplaceFullPath", "replaceFullPath": "/\\1"})]},
         "is not one kubelbd serves"),  # Envoy would read \1 as a capture group
        ({"filters": [_rewrite({"type": "ReplaceFullPath", "replaceFullPath": "/a b?c"})]},
         "is not one kubelbd serves"),
        ({"filters": [_rewrite({"type": "ReplaceFullPath"})]}, "is not one kubelbd serves"),
        ({"filters": [_rewrite({"type": "Other", "replaceFullPath": "/"})]}, "modifier type"),
        ({"filters": [_rewrite(hostname="*.x.org")]}, "hostname"),
    ],
)  # fmt: skip
def test_a_url_rewrite_is_recorded_checked(rule: Obj, want: Any) -> None:
    filters = httpfilters.of_rule(rule)
    if isinstance(want, str):
        assert filters.problem is not None and want in filters.problem.message
        return
    assert filters.problem is None
    path: Any = {"path": "/", "pathType": "Prefix", "backends": []}
    filters.apply(path)
    assert path["rewrite"] == want


def test_a_grpcroute_gets_no_rewrite_and_a_path_of_any_shape_raises_nothing() -> None:
    """A GRPCRoute's CRD has no redirects or rewrites, and its shape does not check a `path`
    its matches do not have: a loosened CRD gets a problem, never an exception."""
    rule: Obj = {
        "matches": [{"method": {"service": "s"}, "path": "x"}, "not a match"],
        "filters": [_rewrite({"type": "ReplacePrefixMatch", "replacePrefixMatch": "/y"})],
    }
    problem = httpfilters.of_rule(rule, httpfilters.GRPC_SERVED).problem
    assert problem is not None and "URLRewrite is not supported" in problem.message
    problem = httpfilters.of_rule(rule).problem  # as an HTTPRoute's: not a prefix match
    assert problem is not None and "ReplacePrefixMatch" in problem.message


def test_a_path_longer_than_gateway_api_allows_is_not_served() -> None:
    problems: list[Any] = []
    assert httproute.path_of({"path": {"value": "/" + "a" * 1023}}, problems) is not None
    assert httproute.path_of({"path": {"value": "/" + "a" * 1024}}, problems) is None
    assert [p.reason for p in problems] == ["InvalidPath"]


def test_a_redirect_changes_the_path_as_it_says() -> None:
    change = {"type": "ReplaceFullPath", "replaceFullPath": "/full"}
    redirect = httpfilters.redirect_of({"statusCode": 301, "path": change})
    assert redirect == {"statusCode": 301, "path": {"type": "ReplaceFullPath", "value": "/full"}}


def test_an_object_of_any_size_makes_a_bounded_record() -> None:
    """A tenant that loosened its CRDs: 20,000 listeners, or 100 hostnames x 100 rules x 50
    matches, make records of bounded size (Envoy, etcd and the Events never see the rest)."""
    gw: Obj = {"metadata": {"name": "gw", "namespace": "default"}, "spec": {
        "gatewayClassName": "kubelb",
        "listeners": [{"name": f"l{i}", "port": 1000 + i % 60000, "protocol": "TCP"}
                      for i in range(20000)]}}  # fmt: skip
    result = gateway.translate(gw, _view())
    assert len(result.problems) == 32 and result.problems[-1].message.startswith("and ")
    assert len(json.dumps(result.spec)) < 20_000
    rules = [{"matches": [{"path": {"value": f"/r{r}/m{m}"}} for m in range(50)],
              "backendRefs": [{"name": "web", "port": 80}] * 40} for r in range(100)]  # fmt: skip
    hosts = [f"h{i}.example.com" for i in range(100)]
    route = _route({"parentRefs": [{"name": "gw"}] * 1000, "hostnames": hosts, "rules": rules})
    spec = httproute.translate(route, _view()).spec
    assert len(spec["rules"]) == routes.MAX_HOSTNAMES and len(spec["parents"]) == 1
    assert all(len(r["paths"]) == routes.MAX_MATCHES for r in spec["rules"])
    assert all(len(p["backends"]) <= routes.MAX_BACKENDS for r in spec["rules"] for p in r["paths"])
    assert len(spec.get("problems", [])) <= 32


def test_a_policys_ancestors_keep_their_transition_times_and_other_controllers_entries() -> None:
    """A BackendTLSPolicy's status has no conditions of its own: none are written (the API
    server refuses a field its schema lacks); each ancestor's keep their lastTransitionTime
    while their status holds, and another controller's entry, passed on as it is, never
    makes a write of its own."""

    def ancestor(status: str, controller: str = gatewayapi.CONTROLLER) -> Obj:
        return {
            "ancestorRef": {"group": gatewayapi.GROUP, "kind": "Gateway", "name": "gw"},
            "controllerName": controller,
            "conditions": [{"type": "Accepted", "status": status, "reason": "R", "message": "",
                            "observedGeneration": 3}],
        }  # fmt: skip

    theirs = ancestor("True", "example.com/other")
    theirs["conditions"][0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    applied: Obj = {
        "metadata": {"name": "p", "namespace": "d", "generation": 3},
        "status": {"ancestors": [theirs]},  # where kubelbd's source read it from
    }
    status = tenant_object_status({"ancestors": [theirs, ancestor("True")]}, applied, T1)
    assert status is not None and "conditions" not in status
    assert status["ancestors"][0] == theirs  # as the other controller wrote it
    (written,) = status["ancestors"][1]["conditions"]
    assert written["observedGeneration"] == 3 and written["lastTransitionTime"] == T1
    holding = {**applied, "status": status}
    want = {"ancestors": [theirs, ancestor("True")]}
    assert tenant_object_status(want, holding, "later") is None
    flipped = tenant_object_status({"ancestors": [theirs, ancestor("False")]}, holding, "later")
    assert flipped is not None
    assert flipped["ancestors"][1]["conditions"][0]["lastTransitionTime"] == "later"
