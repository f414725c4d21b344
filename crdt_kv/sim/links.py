"""The simulator's driver of :class:`~crdt_kv.protocol.PeerLink` objects.

It does for simulated nodes what :class:`crdt_kv.net.driver.LinkDriver` does over TCP, and
nothing more: it answers :class:`DialDue` by pairing the link with a fresh accepting link
on the target node (or failing the dial when the target is down or partitioned away),
carries bytes through the faulty :class:`~crdt_kv.sim.network.Network` as
:class:`Message` objects, performs storage requests inline, closes connections as
:class:`CloseConnection` says, and calls ``handle_timer`` when ``get_timer`` comes due on
the virtual clock. Every decision (when to dial, back off, time out, keep alive, close)
is the link's, so the simulator runs the production policy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Protocol

from crdt_kv.protocol import (
    CloseConnection,
    ConnectionClosed,
    DialDue,
    LinkConfig,
    LinkRole,
    PeerLink,
    SessionEnded,
    SessionFailed,
    StorageRequest,
)
from crdt_kv.store import Store

__all__ = ["Connection", "LinkShell", "Message", "SimLink", "StorageObserver"]

US = 1_000_000


class SimNode(Protocol):
    """What the shell uses of a :class:`~crdt_kv.sim.nodes.SimNode`."""

    index: int
    peer_id: str
    state: str
    store: Store | None
    rng: random.Random
    links: list[SimLink]
    conns: dict[int, list[Connection]]


class SimLink:
    """A link and where it lives: its node, its dial target, its current connection."""

    __slots__ = ("conn", "kind", "last", "link", "node", "sched", "side", "target")

    def __init__(self, link: PeerLink, node: SimNode, target: int | None, kind: str) -> None:
        self.link = link
        self.node = node
        self.target = target
        self.kind = kind
        self.conn: Connection | None = None
        self.last: Connection | None = None
        """The connection it had last (still set once ``conn`` is cleared)."""
        self.side = 0
        self.sched: int | None = None

    def __repr__(self) -> str:
        return f"<SimLink {self.node.peer_id}->{self.target} {self.kind} {self.link.state.value}>"


class Connection:
    """Two links joined by two simulated one-way channels."""

    __slots__ = ("alive", "ended", "fifo", "id", "kind", "links", "stalled")

    def __init__(self, cid: int, a: SimLink, b: SimLink, kind: str) -> None:
        self.id = cid
        self.links = (a, b)
        self.kind = kind
        self.alive = True
        self.ended = [False, False]
        self.fifo = [0, 0]
        self.stalled = False
        """A message of it vanished (lost, or dropped across a partition): its sessions
        may wait for it until their idle timeout, as on a dead TCP connection."""

    @property
    def nodes(self) -> tuple[SimNode, SimNode]:
        """The dialing node and the accepting node."""
        return self.links[0].node, self.links[1].node


class Message:
    """Bytes from one side of a connection (``b""`` is end of stream)."""

    __slots__ = ("conn", "data", "src")

    def __init__(self, conn: Connection, src: int, data: bytes) -> None:
        self.conn = conn
        self.src = src
        self.data = data

    def __repr__(self) -> str:
        a, b = self.conn.nodes
        frm, to = (a, b) if self.src == 0 else (b, a)
        return f"<Message c{self.conn.id} {frm.peer_id}->{to.peer_id} {len(self.data)} bytes>"


class StorageObserver(Protocol):
    """Told of the storage work the shell performs (the siblings oracle follows what each
    replica has seen through it: :class:`~crdt_kv.sim.deliveries.Deliveries`)."""

    def performed(self, sl: SimLink, request: StorageRequest, result: object) -> None:
        """``request`` of link ``sl`` succeeded with ``result`` (not yet handed back)."""

    def released(self, conn: Connection) -> None:
        """``conn`` is gone for good."""


class LinkShell:
    """Runs every link of a :class:`~crdt_kv.sim.runner.Simulation` (see the module doc).

    ``sim`` provides the virtual clock and heap (``vt``, ``push``), the network and its
    generator, the nodes, counters (``c``, ``failures``) and the trace (``record``).
    """

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.conns: dict[int, Connection] = {}
        self.intercept: Callable[[Message], object] | None = None
        self.observer: StorageObserver | None = None
        self._next_id = 1

    # --- links ------------------------------------------------------------------------------

    def add(
        self,
        node: SimNode,
        *,
        role: LinkRole,
        config: LinkConfig,
        target: int | None,
        kind: str,
    ) -> SimLink:
        """A new link on ``node`` (a ``dial`` link starts dialing at once)."""
        assert node.store is not None
        link = PeerLink(
            node.store,
            role=role,
            config=config,
            rng=node.rng,
            now=self.sim.vt.now / US,
            defer_storage=True,
            label=node.peer_id,
        )
        sl = SimLink(link, node, target, kind)
        node.links.append(sl)
        self.service(sl)
        return sl

    def service(self, sl: SimLink) -> None:
        """Perform the link's storage work, send its bytes, act on its events, arm its
        timer; repeat until it has nothing more to say."""
        link = sl.link
        while True:
            request = link.storage_request()
            if request is not None:
                now = self.sim.vt.now / US
                try:
                    result = request.perform(link.replica)
                except Exception as exc:
                    link.storage_failed(request, exc, now)
                else:
                    if self.observer is not None:
                        self.observer.performed(sl, request, result)
                    link.storage_done(request, result, now)
                continue
            conn = sl.conn
            if conn is not None and conn.alive and not conn.ended[sl.side]:
                data = link.data_to_send()
                if data:
                    self._send_bytes(conn, sl.side, data)
            ev = link.next_event()
            if ev is None:
                break
            self._on_event(sl, ev)
        self._arm(sl)

    def _on_event(self, sl: SimLink, ev: object) -> None:
        sim = self.sim
        sim.gc_event(sl.node, ev)
        if isinstance(ev, DialDue):
            self._dial(sl)
        elif isinstance(ev, CloseConnection):
            self._close_side(sl, ev)
        elif isinstance(ev, SessionFailed):
            cause = type(ev.error).__name__ + (" (by peer)" if ev.by_peer else "")
            sim.failures[cause] = sim.failures.get(cause, 0) + 1
        elif isinstance(ev, ConnectionClosed):
            s = sl.link.session
            if not ev.complete and (s is None or s.error is None):
                sim.failures["closed incomplete"] = sim.failures.get("closed incomplete", 0) + 1
        elif isinstance(ev, SessionEnded):
            c = sim.c
            c["skew_rejections"] += ev.stats.skew_rejected
            c["divergences"] += ev.stats.divergences
            c["repairs"] += ev.stats.repairs
            c["entries_sent"] += ev.stats.entries_sent
            c["entries_changed"] += ev.stats.entries_changed
            if ev.timed_out:
                c["timeouts"] += 1
                last = sl.last
                if sim.lingering and not (last is not None and last.stalled):
                    c["quiet_timeouts"] += 1

    # --- timers -------------------------------------------------------------------------------

    def _arm(self, sl: SimLink) -> None:
        t = sl.link.get_timer()
        if t is None:
            return
        t_us = math.ceil(t * US)
        while t_us / US < t:  # the link compares in float seconds: never fire early
            t_us += 1
        t_us = max(self.sim.vt.now, t_us)
        if sl.sched is not None and sl.sched <= t_us:
            return
        sl.sched = t_us
        self.sim.push(t_us, self._fire, (sl, t_us))

    def _fire(self, arg: tuple[SimLink, int]) -> None:
        sl, t_us = arg
        if sl.sched != t_us:
            return
        sl.sched = None
        if sl.node.state != "up" or sl not in sl.node.links:
            return
        sl.link.handle_timer(self.sim.vt.now / US)
        self.service(sl)

    # --- connections --------------------------------------------------------------------------

    def connect(self, sl: SimLink, j: int, *, inbound: LinkConfig) -> Connection | None:
        """Open a connection from ``sl`` to node ``j``; None (a failed dial) when ``j`` is
        down, not yet joined, or across a partition."""
        sim = self.sim
        a = sl.node
        b = sim.nodes[j]
        now = sim.vt.now
        if b.state != "up" or b.store is None or not sim.network.reachable(a.index, j):
            sim.c["connect_failures"] += 1
            sim.record(f"F{now},{a.index},{j}\n")
            return None
        accept = self.add(b, role=LinkRole.ONCE, config=inbound, target=None, kind="accept")
        conn = Connection(self._next_id, sl, accept, sl.kind)
        self._next_id += 1
        sl.conn, sl.side, sl.last = conn, 0, conn
        accept.conn, accept.side, accept.last = conn, 1, conn
        a.conns.setdefault(j, []).append(conn)
        b.conns.setdefault(a.index, []).append(conn)
        self.conns[conn.id] = conn
        sim.c["sessions"] += 1
        sim.record(f"C{now},{conn.id},{a.index},{j},{sl.kind},{sl.link.config.mode}\n")
        t = now / US
        sl.link.connection_made(t)
        accept.link.connection_made(t)
        self.service(sl)
        self.service(accept)
        return conn

    def _dial(self, sl: SimLink) -> None:
        assert sl.target is not None
        sim = self.sim
        conn = self.connect(sl, sl.target, inbound=sim.accept_config)
        if conn is None:
            sl.link.connection_failed(sim.vt.now / US, ConnectionRefusedError("unreachable"))
            self.service(sl)

    def _send_bytes(self, conn: Connection, side: int, data: bytes) -> None:
        c = self.sim.c
        c["messages"] += 1
        c["bytes"] += len(data)
        self.send(Message(conn, side, data))

    def send(self, msg: Message) -> None:
        """Hand ``msg`` to the network (or to :attr:`intercept`)."""
        if self.intercept is not None:
            self.intercept(msg)
            return
        sim = self.sim
        fates = sim.network.fate(sim.net_rng)
        if not fates:
            msg.conn.stalled = True
            sim.c["lost"] += 1
            sim.record(f"L{sim.vt.now},{msg.conn.id},{msg.src},{len(msg.data)}\n")
            return
        now = sim.vt.now
        conn, src = msg.conn, msg.src
        for k, d in enumerate(fates):
            if d > 0:
                t = max(now + d, conn.fifo[src])
                conn.fifo[src] = t
            else:
                t = now - d
                sim.c["duplicated" if k else "reordered"] += 1
            sim.push(t, self.deliver, msg)

    def deliver(self, msg: Message) -> None:
        """Hand a message to the receiving link."""
        sim = self.sim
        conn = msg.conn
        now = sim.vt.now
        if not conn.alive:
            sim.c["late"] += 1
            sim.record(f"X{now},{conn.id},{msg.src}\n")
            return
        dst = 1 - msg.src
        a, b = conn.nodes
        if not sim.network.reachable(a.index, b.index):
            conn.stalled = True
            sim.c["partitioned"] += 1
            sim.record(f"P{now},{conn.id},{msg.src},{len(msg.data)}\n")
            return
        sim.record(f"D{now},{conn.id},{msg.src},{len(msg.data)}\n", msg.data)
        sl = conn.links[dst]
        if conn.ended[dst]:
            return
        sl.link.receive_data(msg.data, now / US)
        self.service(sl)

    def drop(self, msg: Message) -> None:
        """Lose an intercepted message (counted and traced like a network loss)."""
        msg.conn.stalled = True
        self.sim.c["lost"] += 1
        self.sim.record(f"L{self.sim.vt.now},{msg.conn.id},{msg.src},{len(msg.data)}\n")

    def _close_side(self, sl: SimLink, ev: CloseConnection) -> None:
        """The link closes its side: flush if asked, end the stream, report it lost."""
        conn = sl.conn
        if conn is None:
            return
        side = sl.side
        if not conn.ended[side]:
            if ev.flush and conn.alive:
                data = sl.link.data_to_send()
                if data:
                    self._send_bytes(conn, side, data)
            conn.ended[side] = True
            if conn.alive:
                self.send(Message(conn, side, b""))
        sl.conn = None
        sl.link.connection_lost(self.sim.vt.now / US)
        if conn.ended[1 - side]:
            self._release(conn)

    def reset(self, conn: Connection, reason: str) -> None:
        """Tear a connection down at once (cut, crash): queued bytes are lost; each live
        side's link learns its connection broke."""
        if not conn.alive:
            return
        sim = self.sim
        conn.alive = False
        sim.record(f"R{sim.vt.now},{conn.id},{reason}\n")
        now = sim.vt.now / US
        self._release(conn)
        for side, sl in enumerate(conn.links):
            if not conn.ended[side] and sl.conn is conn:
                conn.ended[side] = True
                sl.conn = None
                if sl.node.state == "up" and sl in sl.node.links:
                    sl.link.connection_lost(now, ConnectionResetError(reason))
                    self.service(sl)

    def _release(self, conn: Connection) -> None:
        conn.alive = False
        self.conns.pop(conn.id, None)
        if self.observer is not None:
            self.observer.released(conn)
        a, b = conn.nodes
        for x, y in ((a, b), (b, a)):
            lst = x.conns.get(y.index)
            if lst is not None and conn in lst:
                lst.remove(conn)
                if not lst:
                    del x.conns[y.index]
        for sl in conn.links:
            if sl.link.closed and sl in sl.node.links:
                sl.node.links.remove(sl)

    def take_down(self, node: SimNode, why: str) -> None:
        """The node stops (crash or shutdown): reset its connections, forget its links."""
        for lst in list(node.conns.values()):
            for conn in list(lst):
                self.reset(conn, f"{node.peer_id} {why}")
        for sl in node.links:
            sl.sched = None
        node.links.clear()

    def local_changed(self, node: SimNode) -> None:
        """The node's store committed: tell each of its links (a link the news leaves
        unchanged was serviced after its last input, so it needs no service now)."""
        now = self.sim.vt.now / US
        for sl in list(node.links):
            if sl.link.local_changed(now):
                self.service(sl)

    def session_stats(self) -> list[Any]:
        """Stats of every session still open (their counters are not folded in yet)."""
        out = []
        for conn in self.conns.values():
            for sl in conn.links:
                if sl.link.session is not None:
                    out.append(sl.link.session.stats)
        return out
