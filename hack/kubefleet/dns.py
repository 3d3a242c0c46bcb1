"""The fleet's authoritative DNS server: BIND 9 (Debian's `named`) on loopback.

kubelbd publishes the names it serves by RFC 2136 dynamic updates signed with a TSIG key, as it
would to a real primary; a real server, not a fake, so that what it refuses (unsigned updates,
failed prerequisites) is what production refuses. Every e2e test's hosts are under one zone,
`example.test`, so the fleet can publish all of them.

The key is generated at every `up` and lives only in the fleet directory (0600); fleet.env
carries it to the tests and to kubelbd as DNS_TSIG_*.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from .layout import Layout
from .procs import Proc

if TYPE_CHECKING:
    from .fleet import Fleet

#: the fleet component's name (hack/fleet stop dns / start dns)
COMPONENT = "dns"
ZONE = "example.test"
#: kubelbd's --dns-base-domain: each tenant's automatic names are under <tenant>.BASE_DOMAIN
BASE_DOMAIN = f"lb.{ZONE}"
TSIG_NAME = "kubelbd-fleet"
TSIG_ALGORITHM = "hmac-sha256"
#: Debian's path; not on a non-root user's PATH, so never looked up there
NAMED = Path("/usr/sbin/named")
#: how long a resolver may cache "no such name": short, so that a test looking up a name just
#: before kubelbd publishes it sees the record seconds later
NEGATIVE_TTL = 5


def conf_dir(layout: Layout) -> Path:
    return layout.dir / "dns"


def secret_file(layout: Layout) -> Path:
    return conf_dir(layout) / "tsig.secret"


def ports(fleet: Fleet) -> dict[int, str]:
    return {fleet.layout.dns_port: "DNS server (named)"}


def new_secret() -> str:
    """A TSIG secret as BIND and dnspython take it: 32 random bytes (HMAC-SHA256's output
    length, as `tsig-keygen -a hmac-sha256` makes them), base64."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def write_config(directory: Path, port: int, secret: str) -> Path:
    """named.conf, the zone and the key in a fresh `directory`; named.conf's path.

    A fresh directory each time: a journal left from an earlier run would replay another
    fleet's records onto the new zone file. named.conf holds the secret, so it is 0600 like
    the secret file itself."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    secret_path = directory / "tsig.secret"
    secret_path.write_text(secret + "\n")
    secret_path.chmod(0o600)
    zone_file = directory / f"{ZONE}.zone"
    zone_file.write_text(
        f"$ORIGIN {ZONE}.\n"
        f"$TTL {NEGATIVE_TTL}\n"
        f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 {NEGATIVE_TTL}\n"
        f"@ IN NS ns.{ZONE}.\n"
        "ns IN A 127.0.0.1\n"
    )
    conf = directory / "named.conf"
    conf.write_text(
        "options {\n"
        f'    directory "{directory}";\n'
        f'    pid-file "{directory / "named.pid"}";\n'
        # Not the default /run/named/session.key, which every named on the machine shares.
        f'    session-keyfile "{directory / "session.key"}";\n'
        f"    listen-on port {port} {{ 127.0.0.1; }};\n"
        "    listen-on-v6 { none; };\n"
        "    recursion no;\n"
        "    notify no;\n"
        # Nothing to validate on an authoritative-only server, and no trust anchors to keep.
        "    dnssec-validation no;\n"
        "};\n"
        # No control channel: rndc would bind port 953, shared by every fleet on the machine.
        "controls { };\n"
        f'key "{TSIG_NAME}" {{\n'
        f"    algorithm {TSIG_ALGORITHM};\n"
        f'    secret "{secret}";\n'
        "};\n"
        f'zone "{ZONE}" {{\n'
        "    type primary;\n"
        f'    file "{zone_file}";\n'
        f"    update-policy {{ grant {TSIG_NAME} zonesub ANY; }};\n"
        f"    allow-transfer {{ key {TSIG_NAME}; }};\n"
        "};\n"
    )
    conf.chmod(0o600)
    return conf


def named_argv(conf: Path) -> list[str]:
    """named in the foreground (-g: and logging to stderr, which is the component's log), IPv4
    only, one worker thread (it serves a handful of names). No -u: it runs as whoever starts
    the fleet, which may be root (-u would then drop to `bind`, who cannot write here)."""
    return [str(NAMED), "-g", "-4", "-n", "1", "-c", str(conf)]


def answers(port: int, timeout: float = 1.0) -> bool:
    """Whether named on 127.0.0.1:`port` serves the zone: an SOA answer (named listens before
    it has loaded its zones, and answers SERVFAIL until then). Over TCP, where a port nobody
    listens on is refused at once; over UDP the query would wait out its timeout."""
    query = dns.message.make_query(ZONE, dns.rdatatype.SOA)
    try:
        reply = dns.query.tcp(query, "127.0.0.1", port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def dns_procs(fleet: Fleet) -> list[Proc]:
    """named with a freshly generated zone and key (what `up` starts)."""
    lay = fleet.layout
    conf = write_config(conf_dir(lay), lay.dns_port, new_secret())
    return [Proc(COMPONENT, named_argv(conf), str(lay.logs / f"{COMPONENT}.log"))]


def start(fleet: Fleet) -> None:
    from .fleet import FleetError

    if not os.access(NAMED, os.X_OK):
        raise FleetError(f"{NAMED} is missing: run hack/install (Debian's bind9)")
    for p in dns_procs(fleet):
        fleet.spawn(p)
    wait_ready(fleet)


def wait_ready(fleet: Fleet) -> None:
    port = fleet.layout.dns_port
    fleet.wait_for(f"the DNS server to serve {ZONE}", lambda: answers(port), [COMPONENT])


def env(fleet: Fleet) -> dict[str, str]:
    lay = fleet.layout
    return {
        "DNS_SERVER_ADDR": f"127.0.0.1:{lay.dns_port}",
        "DNS_ZONE": ZONE,
        "DNS_TSIG_NAME": TSIG_NAME,
        "DNS_TSIG_SECRET": secret_file(lay).read_text().strip(),
        "DNS_TSIG_ALGORITHM": TSIG_ALGORITHM,
        "DNS_BASE_DOMAIN": BASE_DOMAIN,
    }
