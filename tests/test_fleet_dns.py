"""The fleet's DNS server (hack/kubefleet/dns.py): a real named started from the config the
fleet generates, on a free loopback port, checked the way kubelbd's publisher will use it:
only TSIG-signed updates change the zone, and the key also allows a zone transfer."""

from __future__ import annotations

import base64
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.xfr
import dns.zone
import pytest
from kubefleet import dns as fleet_dns
from kubefleet import lb
from kubefleet.fleet import Fleet, State
from kubefleet.layout import DEFAULT_BASE_PORT, MAX_REPLICAS, Layout
from kubefleet.procs import Proc, alive, spawn, stop

from .bind_server import free_port

ZONE = fleet_dns.ZONE


@dataclass
class Named:
    """A running named, and how its clients talk to it."""

    port: int
    secret: str
    dir: Path

    def keyring(self, secret: str | None = None) -> dict[dns.name.Name, dns.tsig.Key]:
        return dns.tsigkeyring.from_text(
            {fleet_dns.TSIG_NAME: (fleet_dns.TSIG_ALGORITHM, secret or self.secret)}
        )

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)
        return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=5)

    def signed_update(self) -> dns.update.UpdateMessage:
        """An update signed with the fleet's key, as kubelbd's publisher sends them."""
        return dns.update.UpdateMessage(
            ZONE, keyring=self.keyring(), keyalgorithm=fleet_dns.TSIG_ALGORITHM
        )

    def send(self, update: dns.update.UpdateMessage) -> dns.message.Message:
        return dns.query.tcp(update, "127.0.0.1", port=self.port, timeout=5)


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Named]:
    directory = tmp_path_factory.mktemp("named")
    port = free_port()
    secret = fleet_dns.new_secret()
    conf = fleet_dns.write_config(directory / "dns", port, secret)
    proc = Proc("dns", fleet_dns.named_argv(conf), str(directory / "named.log"))
    spawn(proc, directory)
    try:
        deadline = time.monotonic() + 30
        while not fleet_dns.answers(port):
            assert alive(proc), Path(proc.log).read_text()
            assert time.monotonic() < deadline, "named did not serve the zone within 30 s"
            time.sleep(0.05)
        yield Named(port, secret, directory / "dns")
    finally:
        stop(proc)


def test_the_zone_is_served_with_a_short_negative_ttl(named: Named) -> None:
    reply = named.query(ZONE, "SOA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    soa = reply.answer[0][0]
    assert soa.mname == dns.name.from_text(f"ns.{ZONE}")
    assert soa.minimum == fleet_dns.NEGATIVE_TTL
    over_udp = dns.query.udp(
        dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=named.port, timeout=5
    )
    assert over_udp.answer == reply.answer
    ns = named.query(f"ns.{ZONE}", "A")
    assert [r.address for r in ns.answer[0]] == ["127.0.0.1"]


def test_an_unsigned_update_is_refused(named: Named) -> None:
    update = dns.update.UpdateMessage(ZONE)
    update.add("unsigned", 30, "A", "127.0.0.9")
    assert named.send(update).rcode() == dns.rcode.REFUSED
    assert named.query(f"unsigned.{ZONE}", "A").rcode() == dns.rcode.NXDOMAIN


def test_an_update_signed_with_another_key_is_not_applied(named: Named) -> None:
    update = dns.update.UpdateMessage(
        ZONE, keyring=named.keyring(fleet_dns.new_secret()), keyalgorithm=fleet_dns.TSIG_ALGORITHM
    )
    update.add("forged", 30, "A", "127.0.0.9")
    # BIND answers NOTAUTH with the TSIG error BADSIG.
    with pytest.raises(dns.tsig.PeerBadSignature):
        named.send(update)
    assert named.query(f"forged.{ZONE}", "A").rcode() == dns.rcode.NXDOMAIN


def test_a_signed_update_publishes_a_record(named: Named) -> None:
    update = named.signed_update()
    update.add("app", 30, "A", "127.0.0.1")
    update.add("app", 30, "TXT", '"heritage=external-dns,external-dns/owner=fleet"')
    assert named.send(update).rcode() == dns.rcode.NOERROR
    reply = named.query(f"app.{ZONE}", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.address for r in reply.answer[0]] == ["127.0.0.1"]
    assert reply.answer[0].ttl == 30


def test_the_key_allows_a_zone_transfer_and_nothing_else_does(named: Named) -> None:
    update = named.signed_update()
    update.add("transferred", 30, "A", "127.0.0.7")
    assert named.send(update).rcode() == dns.rcode.NOERROR

    signed = dns.zone.from_xfr(
        dns.query.xfr(
            "127.0.0.1", ZONE, port=named.port, timeout=5, keyring=named.keyring(),
            keyname=fleet_dns.TSIG_NAME, keyalgorithm=fleet_dns.TSIG_ALGORITHM,
        )
    )  # fmt: skip
    a = signed.get_rdataset("transferred", "A")
    assert a is not None and [r.address for r in a] == ["127.0.0.7"]
    assert signed.get_rdataset("@", "SOA") is not None
    with pytest.raises(dns.xfr.TransferError):
        dns.zone.from_xfr(dns.query.xfr("127.0.0.1", ZONE, port=named.port, timeout=5))


def test_the_key_is_readable_only_by_the_fleets_user(named: Named) -> None:
    for name in ("tsig.secret", "named.conf"):
        assert stat.S_IMODE((named.dir / name).stat().st_mode) == 0o600, name
    assert (named.dir / "tsig.secret").read_text().strip() == named.secret
    assert len(base64.b64decode(named.secret)) == 32
    assert fleet_dns.new_secret() != named.secret


def test_the_dns_port_is_no_other_fleet_ports(tmp_path: Path) -> None:
    fleet = Fleet(Layout(50, 16400, tmp_path, MAX_REPLICAS))
    lay = fleet.layout
    assert fleet_dns.ports(fleet) == {16474: "DNS server (named)"}
    others = {lay.etcd_client_port, lay.etcd_peer_port, *lb.ports(fleet)}
    others |= {c.apiserver_port for c in lay.clusters}
    assert lay.dns_port not in others


def test_up_generates_a_fresh_key_and_fleet_env_carries_it(tmp_path: Path) -> None:
    fleet = Fleet(Layout(2, 16400, tmp_path))
    (stale := fleet_dns.conf_dir(fleet.layout)).mkdir()
    (stale / f"{ZONE}.zone.jnl").write_text("another fleet's journal")
    [proc] = fleet_dns.dns_procs(fleet)
    assert proc.name == fleet_dns.COMPONENT == "dns"
    assert proc.argv[-2:] == ["-c", str(stale / "named.conf")]
    assert not (stale / f"{ZONE}.zone.jnl").exists()
    env = fleet_dns.env(fleet)
    secret = (stale / "tsig.secret").read_text().strip()
    assert env == {
        "DNS_SERVER_ADDR": "127.0.0.1:16474",
        "DNS_ZONE": "example.test",
        "DNS_TSIG_NAME": "kubelbd-fleet",
        "DNS_TSIG_SECRET": secret,
        "DNS_BASE_DOMAIN": "lb.example.test",
        "DNS_TSIG_ALGORITHM": "hmac-sha256",
    }
    assert f'secret "{secret}";' in (stale / "named.conf").read_text()
    fleet_dns.dns_procs(fleet)
    assert fleet_dns.env(fleet)["DNS_TSIG_SECRET"] != secret


def test_the_fleet_starts_stops_and_restarts_it_as_a_component(tmp_path: Path) -> None:
    """`hack/fleet up`'s DNS step, then `stop dns` and `start dns`, on a Fleet of its own
    (a base port whose DNS port is free: never the default fleet's)."""
    while (base := free_port() - 74) == DEFAULT_BASE_PORT or base < 1024:
        pass
    fleet = Fleet(Layout(1, base, tmp_path))
    fleet.state = State(1, base, str(tmp_path / "bin"))
    try:
        fleet_dns.start(fleet)
        assert fleet.running() == {"dns": True}
        server = Named(fleet.layout.dns_port, fleet_dns.env(fleet)["DNS_TSIG_SECRET"], tmp_path)
        update = server.signed_update()
        update.add("kept", 30, "A", "127.0.0.5")
        assert server.send(update).rcode() == dns.rcode.NOERROR

        fleet.stop_component("dns", None)
        assert fleet.running() == {"dns": False}
        assert not fleet_dns.answers(fleet.layout.dns_port)
        fleet.start_component("dns", None)
        assert fleet.running() == {"dns": True}
        # A restart keeps what was published (named replays its journal), as a real primary.
        reply = server.query(f"kept.{ZONE}", "A")
        assert [r.address for r in reply.answer[0]] == ["127.0.0.5"]
    finally:
        fleet.down(quiet=True)
    assert not fleet_dns.answers(fleet.layout.dns_port)
