"""The operator's tenant policy (records/policy.py), host claims (records/claims.py) and node
addresses across tenants (ir/nodes.py): pure, what the sources and the IR apply."""

from __future__ import annotations

from typing import Any

import pytest

from kubelbd.config import parse_args
from kubelbd.ir.nodes import exclusive
from kubelbd.records.claims import with_claims
from kubelbd.records.policy import (
    Limits,
    Policy,
    canonical,
    domain_covers,
    for_tenant,
    parse_networks,
    policy_of,
)
from kubelbd.records.types import RouteSpec, TenantRecord


@pytest.mark.parametrize(
    ("pattern", "host", "covered"),
    [
        ("shop.example.com", "shop.example.com", True),
        ("shop.example.com", "x.shop.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", False),  # one label only
        ("*.example.com", "example.com", False),  # never the apex
        ("*.example.com", "*.example.com", True),
        ("*.example.com", "*.a.example.com", False),
        ("**.example.com", "a.b.example.com", True),
        ("**.example.com", "*.a.example.com", True),
        ("**.example.com", "*.example.com", True),
        ("**.example.com", "example.com", False),
        ("**.example.com", "badexample.com", False),  # a suffix, not a label boundary
        ("**.example.com", "a.badexample.com", False),
        ("**", "anything.example.org", True),
        ("**", "", True),  # the catch-all
        ("*.example.com", "", False),
        ("shop.example.com", "", False),
    ],
)
def test_domain_patterns_follow_kubelbs_syntax(pattern: str, host: str, covered: bool) -> None:
    assert domain_covers(pattern, host) is covered


def test_a_spec_overrides_the_defaults_field_by_field() -> None:
    defaults = Policy(limits=Limits(routes=10, load_balancers=2), cluster_issuers=frozenset({"x"}))
    spec = {"allowedDomains": ["Shop.Example.com."], "limits": {"routes": 3},
            "nodeCIDRs": ["10.0.0.0/24", "10.1.0.1"]}  # fmt: skip
    p = policy_of(spec, defaults)
    assert p.allowed_domains == ("shop.example.com",)
    assert p.limits == Limits(routes=3, load_balancers=2)
    assert [str(n) for n in p.node_cidrs] == ["10.0.0.0/24", "10.1.0.1/32"]
    assert p.cluster_issuers == {"x"}
    assert policy_of(None, defaults) == defaults
    assert policy_of({"allowedDomains": []}, defaults).allows_host("a.example.com") is False


@pytest.mark.parametrize(
    "spec",
    [
        {"nodeCIDRs": ["10.0.0.0/33"]},
        {"nodeCIDRs": "10.0.0.0/8"},
        {"allowedDomains": [3]},
        {"limits": {"routes": -1}},
        {"limits": {"routes": True}},
        {"limits": []},
        [],
    ],
)
def test_a_spec_that_does_not_parse_is_refused(spec: Any) -> None:
    with pytest.raises(ValueError):
        policy_of(spec, Policy())


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("10.0.0.1", None),
        ("2001:db8::1", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("10.96.0.1", "management"),
        ("node-1.example.com", "not an IP"),
        ("", "not an IP"),
        ("10.0.0.1%eth0", "not an IP"),
        ("fe80::1%eth0", "zone"),
        ("::ffff:127.0.0.1", "loopback"),  # the IPv4 address inside counts
        ("::ffff:10.96.0.1", "management"),
        ("64:ff9b::a60:1", "management"),  # NAT64 to 10.96.0.1
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_node_addresses_by_default(address: str, refused: str | None) -> None:
    policy = Policy(forbidden=parse_networks(["10.96.0.0/12"]))
    problem = policy.node_address_problem(address)
    assert (problem is None) if refused is None else (refused in (problem or ""))


def test_node_cidrs_allow_a_special_range_but_never_a_forbidden_address() -> None:
    policy = Policy(
        node_cidrs=parse_networks(["127.0.0.0/8"]), forbidden=parse_networks(["127.0.0.1"])
    )
    assert policy.node_address_problem("127.0.3.1") is None
    assert "management" in (policy.node_address_problem("127.0.0.1") or "")
    assert "outside" in (policy.node_address_problem("10.0.0.1") or "")


@pytest.mark.parametrize("port", [30000, 32767])
def test_node_ports_inside_the_range(port: int) -> None:
    assert Policy().node_port_problem(port) is None


@pytest.mark.parametrize("port", [29999, 32768, 22, 0, -1, True, "30080", None, 2**70])
def test_node_ports_outside_the_range_or_not_ports(port: Any) -> None:
    assert Policy().node_port_problem(port) is not None


def spec(*hosts: str, claims: dict[str, str] | None = None) -> RouteSpec:
    out: Any = {
        "source": {
            "kind": "Ingress",
            "namespace": "d",
            "name": "n",
            "uid": "u",
            "creationTimestamp": "1999-01-01T00:00:00Z",
        },
        "rules": [{"host": h, "paths": []} for h in hosts],
    }
    if claims:
        out["claims"] = claims
    return out  # type: ignore[no-any-return]


def test_claims_keep_their_time_and_new_hosts_get_now() -> None:
    before = spec("a.example.com", claims={"a.example.com": "T1"})
    after = with_claims(spec("a.example.com", "b.example.com"), before, "T0", "T2")
    assert after["claims"] == {"a.example.com": "T1", "b.example.com": "T2"}
    # The tenant's creationTimestamp never counts.
    assert "1999" not in str(after["claims"])


def test_a_record_from_before_claims_counts_from_when_it_was_stored() -> None:
    after = with_claims(spec("a.example.com", "b.example.com"), spec("a.example.com"), "T0", "T2")
    assert after["claims"] == {"a.example.com": "T0", "b.example.com": "T2"}
    dropped = with_claims(spec("b.example.com"), after, "T0", "T3")
    assert dropped["claims"] == {"b.example.com": "T2"}
    again = with_claims(spec("a.example.com", "b.example.com"), dropped, "T0", "T4")
    assert again["claims"]["a.example.com"] == "T4"  # given up, then claimed anew


def test_an_address_two_tenants_list_stays_with_the_first_claim() -> None:
    first = TenantRecord(
        "zeta", ("10.0.0.1", "10.0.0.2"), (("10.0.0.1", "2026-01-01"), ("10.0.0.2", "2026-01-01"))
    )
    later = TenantRecord("alpha", ("10.0.0.1", "10.0.0.3"), (("10.0.0.1", "2026-02-01"),))
    tenants, lost = exclusive([first, later])
    by_name = {t.name: t.addresses for t in tenants}
    assert by_name == {"zeta": ("10.0.0.1", "10.0.0.2"), "alpha": ("10.0.0.3",)}
    assert lost == {"alpha/10.0.0.1": "zeta"}
    unclaimed = TenantRecord("beta", ("10.0.0.2",))  # no time: the youngest claim
    assert exclusive([first, unclaimed])[1] == {"beta/10.0.0.2": "zeta"}


def test_the_fleet_wide_defaults_come_from_flags() -> None:
    cfg = parse_args(
        ["--envoy-admin=127.0.0.1:9901", "--http-listen=127.0.0.2:8080",
         "--l4-address-pool=127.0.200.0/24", "--management-cidrs=10.96.0.0/12",
         "--default-allowed-domains=**.example.com,Shop.Example.org.",
         "--default-max-routes=5", "--default-cluster-issuers=le,internal",
         "--node-port-range=20000-40000"]
    )  # fmt: skip
    policy = cfg.policy
    assert {str(n) for n in policy.forbidden} == {
        "10.96.0.0/12", "127.0.200.0/24", "127.0.0.1/32", "127.0.0.2/32"
    }  # fmt: skip
    assert policy.allowed_domains == ("**.example.com", "shop.example.org")
    assert policy.limits == Limits(routes=5)
    assert policy.cluster_issuers == {"le", "internal"}
    assert policy.node_ports == (20000, 40000)
    # Envoy's own addresses are never a node's, whatever a tenant's CIDRs say.
    assert "management" in (policy.node_address_problem("127.0.0.1") or "")


@pytest.mark.parametrize(
    "flag",
    ["--node-port-range=40000-20000", "--management-cidrs=10.0.0.0/33",
     "--default-max-routes=-1", "--default-node-cidrs=nonsense",
     "--dns-base-domain=not_a.name"],
)  # fmt: skip
def test_bad_defaults_are_refused_at_start(flag: str) -> None:
    with pytest.raises(SystemExit):
        parse_args([flag])


def test_one_address_has_one_spelling() -> None:
    assert canonical("2001:DB8:0::5") == canonical("2001:0db8::5") == "2001:db8::5"
    assert canonical("::ffff:10.1.0.5") == "10.1.0.5"


def test_a_base_domain_gives_each_tenant_its_own_and_nothing_of_anothers() -> None:
    fleet = parse_args(["--dns-base-domain=LB.Example.test."]).policy
    assert fleet.base_domain == "lb.example.test"
    # Even a tenant allowed every name has no name below another tenant's domain.
    alpha = for_tenant(policy_of({"allowedDomains": ["**"]}, fleet), "alpha")
    assert alpha.auto_domain == "alpha.lb.example.test"
    for host in (
        "alpha.lb.example.test",
        "x.alpha.lb.example.test",
        "*.alpha.lb.example.test",
        "shop.example.test",
    ):
        assert alpha.allows_host(host), host
    for host in (
        "beta.lb.example.test",
        "x.beta.lb.example.test",
        "lb.example.test",
        "*.lb.example.test",
        "x.alpha-lb.example.test.lb.example.test",
    ):
        assert not alpha.allows_host(host), host
    # A tenant allowed only its own names may still use its domain.
    narrow = for_tenant(policy_of({"allowedDomains": ["shop.example.org"]}, fleet), "beta")
    assert narrow.allows_host("db.beta.lb.example.test")
    assert not narrow.allows_host("other.example.org")
    # Without a base domain nothing changes.
    plain = for_tenant(Policy(), "alpha")
    assert plain == Policy() and plain.auto_domain == ""
