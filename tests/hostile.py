"""Hypothesis strategies for hostile tenants: objects a tenant cluster's API server may send.

A tenant owns its API server, so nothing it sends has been validated: any JSON that orjson
decodes can sit in any field (None, a list where a dict belongs, numbers as strings, deep
nesting), names run past every length limit, strings carry control characters and NUL bytes,
hosts and paths are odd in every way Envoy cares about, Service ports are out of range or
repeated, node addresses are not IPs. The strategies stay close enough to a real Ingress or
Service that most examples reach the IR and the renderer rather than failing at the first
field: each field is usually of the right shape with a hostile value, sometimes of any shape.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kubelbd.sources import ingress, loadbalancer, twins

# ---- values ---------------------------------------------------------------------------------

#: JSON as orjson decodes it: integers within 64 bits (larger ones become floats), finite
#: floats, strings without lone surrogates (orjson refuses them); NUL bytes allowed
INT64 = st.integers(-(2**63), 2**64 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


def _nested(depth: int) -> Any:
    return [_nested(depth - 1)] if depth else {"a": None}


#: values of the wrong type, cheap to draw: numbers as strings, empty and odd containers
WRONG: tuple[Any, ...] = (None, True, 0, -1, 2**64 - 1, 1.5, "", "80", "true", "\x00", [], {},
                          [{}], [None], {"": ""}, {"name": []})  # fmt: skip
#: nesting 200 deep, 10,000 items (built, so that no strategy's repr holds them)
huge: st.SearchStrategy[Any] = st.one_of(
    st.builds(_nested, st.just(200)), st.builds(list, st.just(range(10_000)))
)
json_values: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(WRONG),
    st.sampled_from(WRONG),
    huge,
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                    max_size=3),
        max_leaves=4,
    ),
)  # fmt: skip

ODD_STRINGS = (
    "",
    " ",
    "a" * 63,
    "a" * 64,
    "a" * 253,
    "a" * 254,
    "x" * 5000,
    "caf\u00e9",
    "\u6f22\u5b57",
    "\U0001f600",
    "\x00",
    "a\x00b",
    "\n",
    "a\r\nb: c",
    "\t",
    "\x7f",
    "\u0085",
    "\u2028",
    "\ufeff",
    "(.*)",
    "[a-z]+",
    "\\",
    "$1",
    "^",
    "%s%n",
    '"quoted"',
    "{{.}}",
    "../..",
    "a/b",
    "a.b",
    "-",
    "A",
)
odd_strings = st.sampled_from(ODD_STRINGS) | st.text(max_size=12)


#: whether this example's objects have wrong types in them at all: an object with one wrong
#: type is refused as a whole, so the other half of the examples keeps every type right and
#: carries hostile values (hosts, paths, ports, names) to the IR and Envoy
wrong_types = st.shared(st.booleans(), key="wrong types")


def sometimes_wrong(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good`; in examples with wrong types, one time in eight any JSON value at all."""
    return st.tuples(wrong_types, st.integers(0, 7)).flatmap(
        lambda w: json_values if w[0] and w[1] == 0 else good
    )


# ---- names, ports, hosts, paths -------------------------------------------------------------

#: DNS labels at and beyond their limits (63 for a label, 253 for a subdomain)
names = st.sampled_from(
    ("web", "api", "Web", "a" * 63, "a" * 64, "b" * 253, "b" * 254, "w.e.b", "w/b", "w\x00b",
     "caf\u00e9", "-web", "web-", "")
) | st.text(max_size=10)  # fmt: skip
#: Services the generated Ingresses point at, so that backends resolve now and then
SERVICE_NAMES = ("web", "api", "a" * 63, "caf\u00e9", "w\x00b")
service_names = st.sampled_from(SERVICE_NAMES)

PORTS = (80, 80, 80, 443, 0, -1, 1, 8080, 65535, 65536, 2**31, 2**63 - 1, 2**64 - 1, -(2**63), True,
         False, "80", "http", None, 3.5, 80.0, 29999, 30000, 32767, 32768, "")  # fmt: skip
ports = st.one_of(st.sampled_from(PORTS), st.sampled_from(PORTS), st.integers(-5, 70000))
node_ports = st.sampled_from((*PORTS, 30080, 30081, 31000)) | st.integers(29990, 32780)
#: a twin's nodePorts: chosen by kubelbd from the default range, or edited by the tenant since
#: (the twin lives in its cluster)
twin_node_ports = st.integers(*twins.NODE_PORT_RANGE) | node_ports

HOSTS = (
    "",
    "a.example.com",
    "b.example.com",
    "*.example.com",
    "example.com",
    "a" * 63 + ".example.com",
    ".".join(["a" * 63] * 3) + "." + "b" * 61,  # 253
    "10.0.0.1",
    "xn--caf-dma.example",
    "*",
    "example.com",
    "EXAMPLE.com",
    "example.com.",
    "example.com..",
    " example.com ",
    "*.example.com",
    "a.*.example.com",
    "*.*.example.com",
    "foo.*",
    "*.com",
    "*example.com",
    "a..b",
    ".example.com",
    "-a.example.com",
    "a-.example.com",
    "xn--caf-dma.example",
    "caf\u00e9.example",
    "\u6f22\u5b57.example",
    "10.0.0.1",
    "[::1]",
    "::1",
    "example.com:80",
    "exa mple.com",
    "example.com\x00",
    "a_b.example.com",
    "a" * 63 + ".example.com",
    "a" * 64 + ".example.com",
    ".".join(["a" * 63] * 4),
    ".".join(["a" * 63] * 4) + ".b",
    "localhost",
    "example.com\n",
)
hosts = st.one_of(
    st.sampled_from(HOSTS), st.sampled_from(HOSTS), st.text(alphabet="ab.*-_:[]1\x00 ", max_size=12)
)

PATHS = (
    "/",
    "",
    "//",
    "/a",
    "/a/",
    "/a//",
    "/a/../b",
    "/./",
    "/a?b",
    "/a#b",
    "/(.*)",
    "/[a-z]+",
    "/a\\b",
    "/$",
    "/^a",
    "/a|b",
    "/a b",
    "/a\x00",
    "/a\n",
    "/%00",
    "/%2F",
    "/%",
    "*",
    "a",
    "/.*",
    "/\u00e9",
    "/\U0001f600",
    "/~a",
    "/" + "a" * 10000,
    "/{id}",
    "/a;b=c",
)
paths = st.sampled_from(PATHS) | st.text(alphabet="/a.%?#()[]*\\ \x00\u00e9", max_size=10)
path_types = st.sampled_from((*ingress.PATH_TYPES, "exact", "", None, 5))

ANNOTATION_KEYS = (
    ingress.SSL_REDIRECT_ANNOTATION,
    ingress.ACME_ANNOTATION,
    ingress.CERT_MANAGER_CLUSTER_ISSUER,
    ingress.CERT_MANAGER_ISSUER,
    ingress.CLASS_ANNOTATION,
    loadbalancer.PROXY_PROTOCOL_ANNOTATION,
    "kubelb.io/unknown",
)
annotation_values = st.sampled_from(
    ("true", "false", "TRUE", "False", "v2", "v1", "kubelb", "letsencrypt", "")
) | odd_strings  # fmt: skip
annotation_maps = sometimes_wrong(
    st.dictionaries(
        st.sampled_from(ANNOTATION_KEYS) | st.text(max_size=8),
        sometimes_wrong(annotation_values),
        max_size=4,
    )
)

TIMESTAMPS = ("2026-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "", "yesterday", "9999")


NAMESPACES = ("default",) * 6 + ("prod", "a" * 63, "n.s", "n\x00s")


def metadata(name: st.SearchStrategy[str] = names) -> st.SearchStrategy[dict[str, Any]]:
    """An object's metadata: a name and namespace always (the informer keys its cache by
    them), everything else hostile."""
    return st.fixed_dictionaries(
        {"name": name, "namespace": st.sampled_from(NAMESPACES)},
        optional={
            "uid": sometimes_wrong(st.sampled_from(("uid-1", "", "\x00"))),
            "generation": sometimes_wrong(st.sampled_from((1, 0, -1, 2**63 - 1))),
            "creationTimestamp": sometimes_wrong(st.sampled_from(TIMESTAMPS)),
            "annotations": annotation_maps,
            "labels": sometimes_wrong(st.dictionaries(odd_strings, odd_strings, max_size=2)),
        },
    )


# ---- Ingress --------------------------------------------------------------------------------


_port_refs = sometimes_wrong(
    st.one_of(
        st.fixed_dictionaries({"number": ports}),
        st.fixed_dictionaries({"name": sometimes_wrong(odd_strings)}),
        st.fixed_dictionaries({"number": ports, "name": odd_strings}),
        st.just({}),
    )
)
backends = sometimes_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {"service": st.fixed_dictionaries({"name": sometimes_wrong(service_names)},
                                              optional={"port": _port_refs})}
        ),
        st.fixed_dictionaries({"resource": json_values}),
    )
)  # fmt: skip


ingress_paths = sometimes_wrong(
    st.fixed_dictionaries(
        {"backend": backends},
        optional={"path": sometimes_wrong(paths), "pathType": sometimes_wrong(path_types)},
    )
)
ingress_rules = sometimes_wrong(
    st.fixed_dictionaries(
        {
            "http": sometimes_wrong(
                st.fixed_dictionaries({"paths": sometimes_wrong(st.lists(ingress_paths,
                                                                         min_size=1, max_size=3))})
            ),
        },
        optional={"host": sometimes_wrong(hosts)},
    )
)  # fmt: skip
tls_entries = sometimes_wrong(
    st.fixed_dictionaries(
        {},
        optional={
            "hosts": sometimes_wrong(st.lists(sometimes_wrong(hosts), max_size=3)),
            "secretName": sometimes_wrong(odd_strings),
        },
    )
)
CLASSES = (ingress.INGRESS_CLASS, ingress.INGRESS_CLASS, "other", "")


#: an Ingress, mostly of ours (its class is kubelb), hostile in every field
ingresses = st.fixed_dictionaries(
    {
        "apiVersion": st.just("networking.k8s.io/v1"),
        "kind": st.just("Ingress"),
        "metadata": metadata(),
        "spec": sometimes_wrong(
            st.fixed_dictionaries(
                {
                    "ingressClassName": sometimes_wrong(st.sampled_from(CLASSES)),
                    "rules": sometimes_wrong(st.lists(ingress_rules, max_size=3)),
                },
                optional={
                    "defaultBackend": backends,
                    "tls": sometimes_wrong(st.lists(tls_entries, max_size=2)),
                },
            )
        ),
    },
    optional={"status": json_values},
)


# ---- Services -------------------------------------------------------------------------------

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName", None, "loadbalancer")
PROTOCOLS = ("TCP", "UDP", "SCTP", "tcp", "", None)
ADDRESSES = ("10.0.0.5", "fd00::5", "999.1.1.1", "10.0.0.5/32", "abc", "", " 10.0.0.5",
             "0.0.0.0", "10.200.0.1", "10.200.0.0", "10.200.0.255")  # fmt: skip

service_ports = sometimes_wrong(
    st.fixed_dictionaries(
        {"port": ports},
        optional={
            "name": sometimes_wrong(st.sampled_from(("http", "", "a" * 64)) | odd_strings),
            "protocol": sometimes_wrong(st.sampled_from(PROTOCOLS)),
            "nodePort": node_ports,
            "targetPort": sometimes_wrong(ports),
        },
    )
)


_port_lists = st.lists(service_ports, max_size=4)
_service_specs = st.fixed_dictionaries(
    {
        "type": sometimes_wrong(st.sampled_from(SERVICE_TYPES)),
        # now and then an entry twice
        "ports": sometimes_wrong(_port_lists | _port_lists.map(lambda ps: ps + ps[:1])),
    },
    optional={
        "loadBalancerClass": sometimes_wrong(st.sampled_from((loadbalancer.LB_CLASS, "other"))),
        "sessionAffinity": sometimes_wrong(st.sampled_from(("None", "ClientIP", "clientip", ""))),
        "loadBalancerIP": sometimes_wrong(st.sampled_from(ADDRESSES)),
        "selector": json_values,
    },
)
#: a backend (ClusterIP, NodePort, ExternalName) or a LoadBalancer; its ports out of range,
#: repeated, of any protocol
services = st.fixed_dictionaries(
    {
        "apiVersion": st.just("v1"),
        "kind": st.just("Service"),
        "metadata": metadata(st.one_of(service_names, service_names, names)),
        "spec": sometimes_wrong(_service_specs),
    },
    optional={"status": json_values},
)


# ---- Nodes ----------------------------------------------------------------------------------

NODE_ADDRESSES = ("10.0.0.1", "10.0.0.2", "fd00::1", "node-1", "node-1.example.com", "",
                  "10.0.0.256", "10.0.0.1/24", "::ffff:10.0.0.3", "0.0.0.0", "255.255.255.255",
                  "fe80::1%eth0", " 10.0.0.1", "10.0.0.1\x00", "1e3", "010.000.000.001",
                  "[fd00::1]")  # fmt: skip
node_address_entries = sometimes_wrong(
    st.fixed_dictionaries(
        {
            "type": sometimes_wrong(st.sampled_from(("InternalIP", "ExternalIP", "Hostname"))),
            "address": sometimes_wrong(st.sampled_from(NODE_ADDRESSES) | st.text(max_size=8)),
        }
    )
)


_ready = st.fixed_dictionaries(
    {"type": st.just("Ready"), "status": st.sampled_from(("True", "False", "Unknown"))}
)
nodes = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries({"name": names}),
        "status": sometimes_wrong(
            st.fixed_dictionaries(
                {},
                optional={
                    "addresses": sometimes_wrong(st.lists(node_address_entries, max_size=3)),
                    "conditions": sometimes_wrong(st.lists(sometimes_wrong(_ready), max_size=2)),
                },
            )
        ),
    }
)
ingress_classes = st.builds(
    lambda name, spec, meta_annotations: {
        "metadata": {"name": name, "annotations": meta_annotations},
        "spec": spec,
    },
    st.sampled_from(CLASSES[1:]) | names,
    sometimes_wrong(st.fixed_dictionaries({"controller": st.sampled_from((ingress.CONTROLLER,
                                                                          "x"))})),
    sometimes_wrong(st.dictionaries(st.just(ingress.DEFAULT_CLASS_ANNOTATION),
                                    sometimes_wrong(st.sampled_from(("true", "false"))))),
)  # fmt: skip
