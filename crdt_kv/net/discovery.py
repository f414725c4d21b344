"""Find peers on the local network by UDP multicast announcements (level-replicator style).

Every node periodically sends one small datagram to a multicast group: its cluster id,
peer id and TCP address. Nodes listening on the group add every announcer of their own
cluster as a peer (:meth:`Node.add_peer`), and answer a newcomer with an announcement
right away so it learns of them without waiting a full period. Discovery only adds
addresses: replication itself, its checks (cluster, self-connection, clock skew) and its
failures are the TCP sessions' business, and statically configured peers work without it.

Datagrams are hostile input: anything that is not a well-formed announcement is ignored
and counted. The socket is pluggable (:class:`DatagramTransport`), so announcements can
travel over something else where multicast is unavailable.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import random
import socket as _socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cbor2
import trio

from crdt_kv.errors import ConfigError, RemoteProtocolError
from crdt_kv.net.addresses import format_address
from crdt_kv.protocol.fields import NoTags

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "Announcement",
    "DatagramTransport",
    "Discovery",
    "DiscoveryHost",
    "MulticastTransport",
]

log = logging.getLogger("crdt_kv.net.discovery")

DEFAULT_GROUP = "239.255.42.99"
DEFAULT_PORT = 47474
MAGIC = "crdt-kv"
VERSION = 1
MAX_DATAGRAM = 1024


_NO_TAGS = NoTags("an announcement")


@dataclass(frozen=True, slots=True)
class Announcement:
    """One node saying where it listens; ``host`` empty means "the datagram's source"."""

    cluster_id: str
    peer_id: str
    host: str
    port: int

    def encode(self) -> bytes:
        """CBOR ``["crdt-kv", 1, cluster_id, peer_id, host, port]``."""
        return bytes(
            cbor2.dumps([MAGIC, VERSION, self.cluster_id, self.peer_id, self.host, self.port])
        )

    @staticmethod
    def decode(data: bytes) -> Announcement:
        """Parse and validate one datagram; raises :class:`RemoteProtocolError`.

        Strict like the wire protocol: exactly one CBOR item, no tags, exact types.
        """
        if len(data) > MAX_DATAGRAM:
            raise RemoteProtocolError(f"announcement of {len(data)} bytes is too large")
        try:
            fp = io.BytesIO(data)
            obj = cbor2.CBORDecoder(fp, semantic_decoders=_NO_TAGS).decode()
        except RemoteProtocolError:
            raise
        except (
            cbor2.CBORError,
            ValueError,
            TypeError,
            EOFError,
            RecursionError,
            OverflowError,
        ) as exc:
            raise RemoteProtocolError(f"announcement is not valid CBOR: {exc}") from None
        if fp.tell() != len(data):
            raise RemoteProtocolError(f"{len(data) - fp.tell()} trailing bytes after announcement")
        if type(obj) is not list or len(obj) != 6 or obj[0] != MAGIC:
            raise RemoteProtocolError("datagram is not a crdt-kv announcement")
        _, version, cluster, peer, host, port = obj
        if type(version) is not int or version != VERSION:
            raise RemoteProtocolError(f"announcement version {version!r} is not {VERSION}")
        for name, value in (("cluster_id", cluster), ("peer_id", peer), ("host", host)):
            if type(value) is not str or len(value.encode("utf-8")) > 255:
                raise RemoteProtocolError(f"announcement field {name} is not short text")
        if not peer:
            raise RemoteProtocolError("announcement has an empty peer id")
        if type(port) is not int or not 0 < port <= 65535:
            raise RemoteProtocolError(f"announcement port {port!r} is out of range")
        if host:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise RemoteProtocolError(f"announcement host {host!r} is not an IP") from None
        return Announcement(cluster, peer, host, port)


class DatagramTransport(Protocol):
    """Where announcements go and come from (a multicast socket by default)."""

    async def send(self, data: bytes) -> None:
        """Send one announcement to every listener."""

    async def receive(self) -> tuple[bytes, str]:
        """The next datagram and its source host."""

    def close(self) -> None:
        """Release the socket."""


class DiscoveryHost(Protocol):
    """What :meth:`Discovery.for_node` needs of a node (a :class:`~crdt_kv.net.node.Node`).

    A protocol rather than the class itself, so discovery does not import the node (which
    starts discovery: the two modules would form an import cycle), and tests can hand it
    a small fake.
    """

    @property
    def address(self) -> tuple[str, int]:
        """The bound listen ``(host, port)``."""

    @property
    def cluster_id(self) -> str:
        """The cluster announced; announcements of other clusters are ignored."""

    @property
    def peer_id(self) -> str:
        """Our own peer id: our own announcements are ignored."""

    @property
    def rng(self) -> random.Random:
        """Randomness for the announcement jitter (injected, so runs replay)."""

    def add_peer(self, address: str, *, discovered: bool = False) -> bool:
        """Dial ``address`` from now on; True if it was new."""


class MulticastTransport:
    """A UDP socket joined to an IPv4 multicast group on one interface.

    ``interface`` picks the local address whose interface sends and joins (``"0.0.0.0"``:
    the kernel's default route); ``ttl`` bounds how many routers a datagram crosses (1:
    this link only; 0: this host only). Several nodes on one host can share the group and
    port (``SO_REUSEADDR``); loopback delivery is on, so they hear each other.
    """

    def __init__(self, sock: trio.socket.SocketType, group: str, port: int) -> None:
        self.sock = sock
        self.group = group
        self.port = port

    @classmethod
    async def open(
        cls, group: str, port: int, *, interface: str = "0.0.0.0", ttl: int = 1
    ) -> MulticastTransport:
        """Bind and join; raises :class:`ConfigError` for a bad group or interface."""
        try:
            if not ipaddress.IPv4Address(group).is_multicast:
                raise ConfigError(f"multicast_group {group!r} is not a multicast address")
            iface = _socket.inet_aton(str(ipaddress.IPv4Address(interface)))
        except ValueError as exc:
            raise ConfigError(f"bad multicast group or interface: {exc}") from None
        if not 0 <= port <= 65535 or not 0 <= ttl <= 255:
            raise ConfigError(f"multicast port {port!r} or ttl {ttl!r} out of range")
        sock = trio.socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM, _socket.IPPROTO_UDP)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            await sock.bind((group, port))
            sock.setsockopt(
                _socket.IPPROTO_IP,
                _socket.IP_ADD_MEMBERSHIP,
                _socket.inet_aton(group) + iface,
            )
            sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_IF, iface)
            sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_LOOP, 1)
        except BaseException:
            sock.close()
            raise
        return cls(sock, group, port)

    async def send(self, data: bytes) -> None:
        """Send to the group."""
        await self.sock.sendto(data, (self.group, self.port))

    async def receive(self) -> tuple[bytes, str]:
        """The next datagram (truncated ones are rejected by the decoder's size check)."""
        data, addr = await self.sock.recvfrom(MAX_DATAGRAM + 1)
        return data, str(addr[0])

    def close(self) -> None:
        """Close the socket (leaves the group)."""
        self.sock.close()


def _specific_ipv4(host: str) -> str | None:
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    return None if addr.is_unspecified else str(addr)


class Discovery:
    """Announce ourselves and report the peers we hear; run with ``nursery.start(d.run)``.

    ``on_peer(address)`` receives ``"host:port"`` of every announcer of our cluster other
    than ourselves and returns True if the peer was new (we then announce back at once).
    ``transport`` is the already-open transport, or ``open_transport`` an async factory
    called by :meth:`run`. Announcements are spaced ``interval_s`` apart, jittered by
    +-20% with ``rng`` so nodes started together do not keep announcing in unison.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        peer_id: str,
        host: str,
        port: int,
        on_peer: Callable[[str], bool],
        open_transport: Callable[[], Any],
        interval_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"announce interval must be positive, got {interval_s!r}")
        self.announcement = Announcement(cluster_id, peer_id, host, port)
        self.on_peer = on_peer
        self.open_transport = open_transport
        self.interval_s = interval_s
        self.rng = rng if rng is not None else random.Random()
        self.sent = 0
        self.received = 0
        self.ignored = 0
        self.invalid = 0
        self.found = 0
        self.send_errors = 0
        self._wake = trio.Event()

    @classmethod
    def for_node(
        cls,
        node: DiscoveryHost,
        *,
        group: str | None = None,
        port: int | None = None,
        interface: str | None = None,
        ttl: int = 1,
        interval_s: float = 2.0,
        transport: DatagramTransport | None = None,
    ) -> Discovery:
        """Discovery announcing ``node.address`` and adding what it hears to ``node``."""
        listen_host, listen_port = node.address
        specific = _specific_ipv4(listen_host)
        the_group = group or DEFAULT_GROUP
        the_port = DEFAULT_PORT if port is None else port
        iface = interface or specific or "0.0.0.0"

        async def open_transport() -> DatagramTransport:
            if transport is not None:
                return transport
            return await MulticastTransport.open(the_group, the_port, interface=iface, ttl=ttl)

        return cls(
            cluster_id=node.cluster_id,
            peer_id=node.peer_id,
            host=specific or "",
            port=listen_port,
            on_peer=lambda address: node.add_peer(address, discovered=True),
            open_transport=open_transport,
            interval_s=interval_s,
            rng=node.rng,
        )

    def stats(self) -> dict[str, int]:
        """Datagrams sent, received, ignored (ours or another cluster's), invalid; peers found."""
        return {
            "sent": self.sent,
            "received": self.received,
            "ignored": self.ignored,
            "invalid": self.invalid,
            "found": self.found,
            "send_errors": self.send_errors,
        }

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the transport, then announce and listen until cancelled."""
        transport: DatagramTransport = await self.open_transport()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce_loop, transport)
                nursery.start_soon(self._listen_loop, transport)
                task_status.started()
        finally:
            transport.close()

    async def _announce_loop(self, transport: DatagramTransport) -> None:
        data = self.announcement.encode()
        while True:
            try:
                await transport.send(data)
                self.sent += 1
            except OSError as exc:
                self.send_errors += 1
                log.warning("discovery: announcing failed: %r", exc)
            delay = self.interval_s * (0.8 + 0.4 * self.rng.random())
            with trio.move_on_after(delay):
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(min(0.05, delay))  # coalesce a burst of newcomers

    async def _listen_loop(self, transport: DatagramTransport) -> None:
        me = self.announcement
        while True:
            try:
                data, source = await transport.receive()
            except OSError as exc:
                log.warning("discovery: receiving failed: %r", exc)
                await trio.sleep(min(1.0, self.interval_s))
                continue
            self.received += 1
            try:
                ann = Announcement.decode(data)
            except RemoteProtocolError as exc:
                self.invalid += 1
                log.debug("discovery: ignored a datagram from %s: %s", source, exc)
                continue
            if ann.peer_id == me.peer_id or ann.cluster_id != me.cluster_id:
                self.ignored += 1
                continue
            host = ann.host or source
            address = format_address(host, ann.port)
            with contextlib.suppress(ConfigError):
                if self.on_peer(address):
                    self.found += 1
                    self._wake.set()
