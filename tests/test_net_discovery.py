"""Peer discovery (crdt_kv/net/discovery.py): the announcement codec against hostile
datagrams, the announce/listen logic over an in-memory transport, and real UDP multicast
on the loopback interface between nodes that then replicate. Static peers need none of it.
"""

from __future__ import annotations

import math
import random
import socket
import struct
from typing import Any

import cbor2
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from net_helpers import assert_converged, free_udp_port, wait_until

import crdt_kv
from crdt_kv import ConfigError, RemoteProtocolError
from crdt_kv.net.discovery import (
    MAX_DATAGRAM,
    Announcement,
    Discovery,
    MulticastTransport,
)

GROUP = "239.255.42.99"

# --- the codec ------------------------------------------------------------------------

short_text = st.text(max_size=40)


@given(
    cluster=short_text,
    peer=short_text.filter(bool),
    host=st.sampled_from(["", "127.0.0.1", "10.1.2.3", "::1", "fe80::1"]),
    port=st.integers(1, 65535),
)
def test_announcement_round_trips(cluster: str, peer: str, host: str, port: int) -> None:
    ann = Announcement(cluster, peer, host, port)
    data = ann.encode()
    assert len(data) <= MAX_DATAGRAM
    assert Announcement.decode(data) == ann


def enc(*items: Any) -> bytes:
    return bytes(cbor2.dumps(list(items)))


GOOD = ("crdt-kv", 1, "c", "p", "127.0.0.1", 9000)

BAD_DATAGRAMS: dict[str, bytes] = {
    "empty": b"",
    "not cbor": b"\xff\xff\xff",
    "truncated": enc(*GOOD)[:-1],
    "too large": enc("crdt-kv", 1, "c", "p", "", 9000) + b"\x00" * MAX_DATAGRAM,
    "not an array": bytes(cbor2.dumps({"crdt-kv": 1})),
    "wrong magic": enc("riak", *GOOD[1:]),
    "wrong length": enc(*GOOD, 0),
    "newer version": enc("crdt-kv", 2, *GOOD[2:]),
    "bool version": enc("crdt-kv", True, *GOOD[2:]),
    "empty peer": enc("crdt-kv", 1, "c", "", "127.0.0.1", 9000),
    "port zero": enc("crdt-kv", 1, "c", "p", "127.0.0.1", 0),
    "port too big": enc("crdt-kv", 1, "c", "p", "127.0.0.1", 70000),
    "port as text": enc("crdt-kv", 1, "c", "p", "127.0.0.1", "9000"),
    "host name": enc("crdt-kv", 1, "c", "p", "evil.example", 9000),
    "peer not text": enc("crdt-kv", 1, "c", b"p", "127.0.0.1", 9000),
    "long cluster": enc("crdt-kv", 1, "c" * 256, "p", "127.0.0.1", 9000),
    "trailing bytes": enc(*GOOD) + b"\x00",
    "bignum port (CBOR tag)": enc(*GOOD[:5], cbor2.CBORTag(2, b"\x23\x28")),
    "tagged text": enc("crdt-kv", 1, cbor2.CBORTag(32, "c"), "p", "127.0.0.1", 9000),
    "deep nesting": b"\x81" * 900 + b"\x00",
}


def test_good_datagram_decodes() -> None:
    assert Announcement.decode(enc(*GOOD)) == Announcement("c", "p", "127.0.0.1", 9000)


@pytest.mark.parametrize("case", sorted(BAD_DATAGRAMS))
def test_malformed_datagrams_are_rejected(case: str) -> None:
    with pytest.raises(RemoteProtocolError):
        Announcement.decode(BAD_DATAGRAMS[case])


# --- the logic over an in-memory transport ------------------------------------------------


class Hub:
    """A broadcast medium: every datagram sent reaches every member (like a group)."""

    def __init__(self) -> None:
        self.members: list[MemoryTransport] = []


class MemoryTransport:
    def __init__(self, hub: Hub, host: str) -> None:
        self.hub = hub
        self.host = host
        self.send_ch, self.recv_ch = trio.open_memory_channel[tuple[bytes, str]](math.inf)
        self.closed = False
        self.sent: list[bytes] = []

    def join(self) -> MemoryTransport:
        """Start hearing the medium (a real socket hears nothing before it is opened)."""
        self.hub.members.append(self)
        return self

    async def send(self, data: bytes) -> None:
        self.sent.append(data)
        for m in self.hub.members:
            if not m.closed:
                m.send_ch.send_nowait((data, self.host))

    async def receive(self) -> tuple[bytes, str]:
        return await self.recv_ch.receive()

    def close(self) -> None:
        self.closed = True


def make_discovery(
    transport: MemoryTransport, peer: str, port: int, found: list[str], **kw: Any
) -> Discovery:
    async def open_transport() -> MemoryTransport:
        return transport.join()

    def on_peer(address: str) -> bool:
        if address in found:
            return False
        found.append(address)
        return True

    return Discovery(
        cluster_id=kw.pop("cluster_id", "c"),
        peer_id=peer,
        host=kw.pop("host", ""),
        port=port,
        on_peer=on_peer,
        open_transport=open_transport,
        rng=random.Random(1),
        **kw,
    )


async def test_discovery_logic_finds_peers_answers_newcomers_ignores_others() -> None:
    hub = Hub()
    t1, t2 = MemoryTransport(hub, "10.0.0.1"), MemoryTransport(hub, "10.0.0.2")
    t3, t4 = MemoryTransport(hub, "10.0.0.3"), MemoryTransport(hub, "10.0.0.4")
    found1: list[str] = []
    found2: list[str] = []
    found3: list[str] = []
    d1 = make_discovery(t1, "p1", 7001, found1, interval_s=30)
    d2 = make_discovery(t2, "p2", 7002, found2, interval_s=30, host="10.9.9.9")
    d3 = make_discovery(t3, "p3", 7003, found3, interval_s=30, cluster_id="other")
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            await n.start(d1.run)
            await n.start(d3.run)
            await trio.sleep(0.1)
            assert found1 == [] and found3 == []  # different clusters
            await n.start(d2.run)
            # d2's first announcement reaches d1, which answers at once, long before
            # its 30 s period: d2 learns d1 without waiting.
            await wait_until(lambda: found2 == ["10.0.0.1:7001"], what="answer to newcomer")
            assert found1 == ["10.9.9.9:7002"]  # an announced host beats the source
            t4.join()
            await t4.send(b"junk")
            await t4.send(enc("crdt-kv", 1, "c", "p1", "", 7001))  # someone claiming p1
            await wait_until(lambda: d1.invalid == 1 and len(found2) == 2)
            n.cancel_scope.cancel()
    assert found3 == []
    assert d1.ignored >= 2  # its own datagrams, the other cluster's, the fake p1
    assert d3.ignored >= 2 and d3.found == 0
    # d1 ignores a datagram naming it; d2 cannot tell a spoof from a peer (the TCP
    # handshake will: it checks peer id and cluster), so it adds the address.
    assert d1.found == 1 and found2 == ["10.0.0.1:7001", "10.0.0.4:7001"]
    assert t1.closed and t2.closed and t3.closed
    assert d1.stats()["sent"] == len(t1.sent) >= 2


def test_discovery_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        make_discovery(MemoryTransport(Hub(), "x"), "p", 1, [], interval_s=0)


async def test_multicast_transport_rejects_bad_group() -> None:
    with pytest.raises(ConfigError, match="not a multicast"):
        await MulticastTransport.open("127.0.0.1", free_udp_port())
    with pytest.raises(ConfigError):
        await MulticastTransport.open(GROUP, free_udp_port(), interface="not-an-ip")


# --- real multicast on loopback ------------------------------------------------------------


def multicast_works(port: int) -> bool:
    """Can this sandbox send a loopback multicast datagram to itself?"""
    iface = socket.inet_aton("127.0.0.1")
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
        ):
            r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            r.bind((GROUP, port))
            r.setsockopt(
                socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + iface
            )
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            s.sendto(b"probe", (GROUP, port))
            r.settimeout(1.0)
            return r.recv(16) == b"probe"
    except OSError:
        return False


@pytest.fixture
def mcast_port() -> int:
    port = free_udp_port()
    if not multicast_works(port):
        pytest.skip("this sandbox cannot deliver IPv4 multicast on the loopback interface")
    return port


async def test_nodes_discover_each_other_by_multicast_and_converge(
    stores: Any, mcast_port: int
) -> None:
    a, b, x = stores("a"), stores("b"), stores("x")
    a.put("from a", 1)
    b.put("from b", 2)
    x.put("from x", 3)
    opts: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "discovery": True,
        "multicast_port": mcast_port,
        "multicast_ttl": 0,
        "announce_interval_s": 0.2,
        "live": True,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
    }
    with trio.fail_after(20):
        async with (
            crdt_kv.serve(a, **opts) as na,
            crdt_kv.serve(b, **opts) as nb,
            crdt_kv.serve(x, cluster_id="elsewhere", **opts) as nx,
        ):
            # Hostile datagrams on the group are counted and change nothing.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
                )
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
                s.sendto(b"\xff garbage", (GROUP, mcast_port))
                s.sendto(struct.pack(">I", 7) + b"x" * 2000, (GROUP, mcast_port))
            await wait_until(lambda: a.get("from b") == 2 and b.get("from a") == 1)
            await wait_until(lambda: na.peers != [] and nb.peers != [], what="both heard")
            assert na.peers == [f"127.0.0.1:{nb.address[1]}"]
            assert nb.peers == [f"127.0.0.1:{na.address[1]}"]
            assert na.stats()["b"]["discovered"]
            b.put("live", 4)
            await wait_until(lambda: a.get("live") == 4, what="live over a discovered peer")
            await wait_until(lambda: na.discovery.invalid >= 2)
            assert nx.peers == [] and "from x" not in a
            assert na.discovery.ignored > 0 and nx.discovery.found == 0
            stats = na.discovery.stats()
            assert stats["sent"] > 0 and stats["found"] == 1
    assert_converged([a, b])
    assert "from a" not in x


# --- forged announcements against a real node -------------------------------------------


async def test_forged_announcements_are_bounded_and_forgotten(stores: Any) -> None:
    """Announcements are unauthenticated: a flood of forged ones pointing at dead
    addresses must neither make the node dial without bound nor be kept forever."""
    a = stores("a")
    hub = Hub()
    mine = MemoryTransport(hub, "127.0.0.1").join()
    forger = MemoryTransport(hub, "127.0.0.1").join()
    async with crdt_kv.serve(
        a,
        live=True,
        discovery=True,
        discovery_transport=mine,
        backoff_base_s=0.02,
        backoff_max_s=0.05,
        rng=random.Random(1),
    ) as na:
        most = 0
        add_peer = na.add_peer

        def counting_add(address: str, *, discovered: bool = False) -> bool:
            nonlocal most
            added = add_peer(address, discovered=discovered)
            most = max(most, len(na.peers))
            return added

        na.add_peer = counting_add  # type: ignore[method-assign]
        for i in range(200):
            await forger.send(enc("crdt-kv", 1, "default", f"ghost{i}", "127.0.0.1", 1 + i))
        await wait_until(lambda: na.discovery.received >= 201)
        # The cap bounds the peers known at once, however fast the dead ones are forgotten
        # (on a loaded machine they may all be tried in turn, so "found" is not bounded).
        assert 0 < most <= 64 and len(na.peers) <= 64
        # Every forged address is refused (nothing listens on ports 1..200 here) and
        # forgotten after a few failures.
        await wait_until(lambda: na.peers == [], timeout=40, what="forged peers forgotten")
        # A real peer announcing itself is still welcome afterwards.
        b = stores("b")
        b.put("real", 1)
        async with crdt_kv.serve(b, live=True) as nb:
            await forger.send(enc("crdt-kv", 1, "default", "b", "127.0.0.1", nb.address[1]))
            await wait_until(lambda: a.get("real") == 1, what="real peer after the flood")


# --- the node contract ------------------------------------------------------------------


class FakeHost:
    """The least a node must offer discovery (:class:`DiscoveryHost`), with no sockets."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.cluster_id = "c"
        self.peer_id = "me"
        self.rng = random.Random(0)
        self.added: list[tuple[str, bool]] = []

    def add_peer(self, address: str, *, discovered: bool = False) -> bool:
        self.added.append((address, discovered))
        return True


@pytest.mark.parametrize(
    ("listen", "announced_host"), [(("127.0.0.1", 7000), "127.0.0.1"), (("0.0.0.0", 7000), "")]
)
def test_for_node_needs_only_the_host_protocol(
    listen: tuple[str, int], announced_host: str
) -> None:
    host = FakeHost(listen)
    d = Discovery.for_node(host)
    assert d.announcement == Announcement("c", "me", announced_host, 7000)
    assert d.on_peer("[::1]:9") is True
    assert host.added == [("[::1]:9", True)]
