"""Registration kubeconfigs, checked before kubernetes-asyncio's loader sees them.

A registration kubeconfig is written by a tenant, and the loader does whatever a kubeconfig
asks, as kubelbd: it runs exec plugins, runs auth-provider plugins (oidc calls an issuer the
kubeconfig names, gcp reads the host's Google credentials), reads any file a path names
(tokenFile, client-certificate, client-key, certificate-authority: kubelbd's own
ServiceAccount token among them, sent on to a server the tenant chose), and connects through
any proxy-url, which reaches networks the server URL alone does not. So unless the operator
trusts the kubeconfigs (`trusted`, the flag --trust-kubeconfigs), each of those is refused,
naming what was refused, and the loader is handed a kubeconfig rebuilt from the current
context's cluster and user with only the keys in `_KEPT`, each checked: nothing it could act
on reaches it unchecked, whatever a later version of it learns to read.

insecure-skip-tls-verify is allowed, with a warning: it weakens only the tenant's own
connection (its credentials, and objects the tenant controls anyway), and it reads nothing
and reaches nothing the server URL and the inline data could not. Plain http likewise.

Both modes check the shape of what the loader uses (types, the server URL, the size), so
whatever a tenant writes ends in KubeconfigError, never another exception.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

import yaml

from ..objects import Obj
from .transport import KubeconfigError

log = logging.getLogger(__name__)

#: far beyond any real kubeconfig (a few certificates)
MAX_KUBECONFIG_BYTES = 1024 * 1024
#: YAML events (scalars, mappings, ...): a real kubeconfig has tens per context. A megabyte
#: of `[1,1,...` has half a million, which take seconds to build, holding the GIL.
MAX_KUBECONFIG_EVENTS = 20_000
TRUST_FLAG = "--trust-kubeconfigs"


class KubeconfigRefused(KubeconfigError):
    """A kubeconfig that asks kubelbd for what only a trusted one may: run a plugin, read a
    file on kubelbd's host, or connect through a proxy."""


_FILE = "reads a file on kubelbd's host; inline it as {}"
_PROXY = "sends kubelbd's connections through a proxy of the kubeconfig's choosing"
#: what the loader does for these keys, which a tenant may not have kubelbd do
_REFUSED: dict[str, dict[str, str]] = {
    "cluster": {
        "certificate-authority": _FILE.format("certificate-authority-data"),
        "proxy-url": _PROXY,
    },
    "user": {
        "exec": "runs a command on kubelbd's host",
        "auth-provider": "runs a credential plugin inside kubelbd",
        "tokenFile": _FILE.format("token"),
        "client-certificate": _FILE.format("client-certificate-data"),
        "client-key": _FILE.format("client-key-data"),
    },
}
#: the keys of an untrusted kubeconfig the loader is given, and their types
_KEPT: dict[str, dict[str, type]] = {
    "cluster": {
        "server": str,
        "certificate-authority-data": str,
        "tls-server-name": str,
        "insecure-skip-tls-verify": bool,
    },
    "user": {
        "client-certificate-data": str,
        "client-key-data": str,
        "token": str,
        "username": str,
        "password": str,
    },
}


#: libyaml's, where PyYAML has it: ten times faster than the pure-Python one
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_kubeconfig(raw: bytes | str, *, trusted: bool = False, name: str = "") -> Obj:
    """The kubeconfig to hand the loader: checked, and unless `trusted`, rebuilt from the
    current context alone. KubeconfigRefused for what only a trusted one may ask, and
    KubeconfigError for anything else wrong; `name` (the tenant) is for log lines. Parsing
    a large one takes a while: call it off the event loop."""
    try:
        text = raw.encode() if isinstance(raw, str) else raw
    except UnicodeEncodeError as e:
        raise KubeconfigError(f"kubeconfig is not text: {e}") from e
    if len(text) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigError(f"kubeconfig is {len(text)} bytes, more than {MAX_KUBECONFIG_BYTES}")
    try:
        data = _load(text)
    except yaml.YAMLError as e:
        raise KubeconfigError(f"kubeconfig is not valid YAML: {e}") from e
    except RecursionError as e:  # nesting deeper than the composer's recursion
        raise KubeconfigError("kubeconfig is not valid YAML: nested too deeply") from e
    if not isinstance(data, dict):
        raise KubeconfigError("kubeconfig is not a mapping")
    entries = _current(data)
    (_, cluster), (_, user) = entries
    for section, (_, body) in zip(("cluster", "user"), entries, strict=True):
        _check_types(section, body)
    _check_server(cluster.get("server"))
    if not trusted:
        refused = [
            f"{section} {_shown(entry)}: {key} ({why})"
            for section, (entry, body) in zip(("cluster", "user"), entries, strict=True)
            for key, why in _REFUSED[section].items()
            if key in body
        ]
        if refused:
            raise KubeconfigRefused(
                f"kubeconfig refused, {TRUST_FLAG} not set: {'; '.join(refused)}"
            )
    for weakness in _weaknesses(cluster):
        log.warning("kubeconfig of %s: %s", name or "(unnamed)", weakness)
    return data if trusted else _rebuilt(cluster, user)


def _load(text: bytes) -> Any:
    """The YAML document, once its events are counted (cheap: nothing is built for them)."""
    for count, _ in enumerate(yaml.parse(text, Loader=_LOADER)):
        if count > MAX_KUBECONFIG_EVENTS:
            raise KubeconfigError(f"kubeconfig has more than {MAX_KUBECONFIG_EVENTS} YAML nodes")
    return yaml.load(text, Loader=_LOADER)


Entry = tuple[str, Mapping[str, Any]]


def _current(data: Obj) -> tuple[Entry, Entry]:
    """The cluster and the user of the current context, by name (the only ones the loader
    reads; the user is empty when the context names none)."""
    current = data.get("current-context")
    if not isinstance(current, str) or not current:
        raise KubeconfigError("kubeconfig has no current-context")
    context = _named(data, "contexts", "context", current)
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if not isinstance(cluster_name, str):
        raise KubeconfigError(f"context {_shown(current)} names no cluster")
    cluster = (cluster_name, _named(data, "clusters", "cluster", cluster_name))
    if user_name is None or user_name == "":
        return cluster, ("", {})
    if not isinstance(user_name, str):
        raise KubeconfigError(f"context {_shown(current)}: user is not a string")
    return cluster, (user_name, _named(data, "users", "user", user_name))


def _named(data: Obj, section: str, field: str, name: str) -> Mapping[str, Any]:
    entries = data.get(section)
    if not isinstance(entries, list):
        raise KubeconfigError(f"kubeconfig has no list of {section}")
    found: list[Any] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise KubeconfigError(f"{section}[{i}] is not a mapping with a name")
        if entry["name"] == name:
            found.append(entry.get(field))
    if len(found) != 1:
        many = "more than one" if found else "no"
        raise KubeconfigError(f"kubeconfig has {many} {field} named {_shown(name)} in {section}")
    body = found[0] if found[0] is not None else {}
    if not isinstance(body, dict):
        raise KubeconfigError(f"{field} {_shown(name)} is not a mapping")
    return body


def _check_types(section: str, body: Mapping[str, Any]) -> None:
    for key, kind in _KEPT[section].items():
        value = body.get(key)
        if value is not None and not isinstance(value, kind):
            raise KubeconfigError(f"{section} {key} is not a {kind.__name__}")
    token = body.get("token")
    if token is not None and not _visible_ascii(token):
        raise KubeconfigError("user token has characters a header cannot carry")
    server_name = body.get("tls-server-name")
    if server_name is not None and not (
        _visible_ascii(server_name, spaces=False) and len(server_name) <= 253
    ):
        raise KubeconfigError("cluster tls-server-name is not a host name")


def _check_server(server: Any) -> None:
    """An http(s) URL of a host: anything else makes the requests themselves fail oddly.
    Credentials in the URL are refused too: aiohttp will not send them with a token."""
    if not isinstance(server, str) or not server:
        raise KubeconfigError("cluster has no server")
    if not _visible_ascii(server, spaces=False) or not server.startswith(("https://", "http://")):
        raise KubeconfigError(f"cluster server {_shown(server)} is not an http(s) URL")
    try:
        url = urllib.parse.urlsplit(server)
        url.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        raise KubeconfigError(f"cluster server {_shown(server)} is not a URL: {e}") from e
    if not url.hostname or url.username is not None or url.query or url.fragment:
        raise KubeconfigError(
            f"cluster server {_shown(server)} must name a host, without credentials, a query "
            "or a fragment"
        )


def _weaknesses(cluster: Mapping[str, Any]) -> list[str]:
    out = []
    if cluster.get("insecure-skip-tls-verify") is True:
        out.append("insecure-skip-tls-verify: the API server's certificate is not checked")
    if str(cluster["server"]).startswith("http://"):
        out.append("plain http: its credentials and objects travel unencrypted")
    return out


def _rebuilt(cluster: Mapping[str, Any], user: Mapping[str, Any]) -> Obj:
    """A kubeconfig of the current context alone, with only the keys kept."""

    def kept(section: str, body: Mapping[str, Any]) -> Obj:
        return {k: body[k] for k in _KEPT[section] if body.get(k) is not None}

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tenant", "cluster": kept("cluster", cluster)}],
        "users": [{"name": "tenant", "user": kept("user", user)}],
        "contexts": [{"name": "tenant", "context": {"cluster": "tenant", "user": "tenant"}}],
        "current-context": "tenant",
    }


def _visible_ascii(text: str, spaces: bool = True) -> bool:
    """Whether `text` can go into a header or a URL as it is (no line breaks, no Unicode)."""
    return all(" " < c <= "~" or (spaces and c == " ") for c in text)


def _shown(text: str) -> str:
    """A name from the kubeconfig, quoted and short, for messages (it is the tenant's)."""
    return repr(text[:64] + ("…" if len(text) > 64 else ""))
