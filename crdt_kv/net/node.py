"""A replication node over TCP: ``async with serve(store, ...) as node``.

A node runs, inside one trio nursery:

- a TCP listener; every inbound connection runs one protocol session;
- for every known peer address, periodic anti-entropy rounds in short-lived connections
  (level-replicator's model), sooner when writes are frequent, plus (``live=True``) one
  long-lived live session that pushes each commit as it happens; a failed connection is
  retried with exponential backoff and jitter (randomness from an injectable
  :class:`random.Random`);
- optionally UDP multicast discovery (:mod:`crdt_kv.net.discovery`), which adds peers as
  they announce themselves.

Leaving the ``async with`` cancels every task and closes every socket. A failing peer or
connection (refused, reset, malformed or oversized frames, clock skew) fails only its own
session: it is counted in :meth:`Node.stats`, reported as an ``error`` event, and the node
keeps serving everyone else. The store is not closed by the node: it belongs to the caller.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket as _socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar

import trio

from crdt_kv.errors import ClosedError, ConfigError, CrdtKvError
from crdt_kv.net.backoff import Backoff
from crdt_kv.net.transport import run_session
from crdt_kv.protocol import (
    MODES,
    BatchApplied,
    Connected,
    Event,
    InState,
    OutState,
    Session,
    SessionStats,
    SyncComplete,
)
from crdt_kv.store import Store

__all__ = [
    "DEFAULT_SYNC_INTERVAL_S",
    "DISCOVERED_MAX_FAILURES",
    "MAX_DISCOVERED_PEERS",
    "MAX_INBOUND_CONNECTIONS",
    "EVENT_KINDS",
    "UNIDENTIFIED",
    "ChangeEvent",
    "ConnectEvent",
    "ConnectionEvent",
    "DisconnectEvent",
    "ErrorEvent",
    "EventStream",
    "Node",
    "NodeEvent",
    "format_address",
    "parse_address",
    "serve",
]

log = logging.getLogger("crdt_kv.net")

DEFAULT_SYNC_INTERVAL_S = 5.0
MAX_INBOUND_CONNECTIONS = 256
"""Inbound connections served at once; more are closed at once (see ``Node``)."""
MAX_DISCOVERED_PEERS = 64
"""Discovered addresses dialed at most at once: announcements are unauthenticated, so a
flood of forged ones must not make the node dial thousands of addresses."""
DISCOVERED_MAX_FAILURES = 5
"""A discovered address is forgotten after this many failures in a row (a real peer keeps
announcing itself and is added again)."""
UNIDENTIFIED = "(unidentified)"
"""Stats key of connections that failed before the peer identified itself with a Hello."""

StreamWrapper = Callable[[trio.abc.Stream, bool], trio.abc.Stream]


# --- addresses ---------------------------------------------------------------------------


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) to ``(host, port)``; raises :class:`ConfigError`."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a 'host:port' string, got {text!r}")
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ConfigError(f"{what} {text!r} is not 'host:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} {text!r} has port {port} outside 0..65535")
    return host, port


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectEvent:
    """We dialed ``address`` and the peer's Hello was accepted."""

    kind: ClassVar[str] = "connect"
    peer_id: str
    address: str
    live: bool


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A peer connected to our listener (from ``address``) and its Hello was accepted."""

    kind: ClassVar[str] = "connection"
    peer_id: str
    address: str
    live: bool


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    """A session ended; ``complete`` if its sync finished, ``error`` (text) if it failed."""

    kind: ClassVar[str] = "disconnect"
    peer_id: str | None
    address: str
    outbound: bool
    complete: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A connection attempt or a session failed; the node carries on."""

    kind: ClassVar[str] = "error"
    peer_id: str | None
    address: str
    outbound: bool
    error: BaseException


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A batch from ``peer_id`` changed ``changed`` keys of our store."""

    kind: ClassVar[str] = "change"
    peer_id: str
    address: str
    changed: int
    received: int
    to_seq: int
    caught_up: bool


NodeEvent = ConnectEvent | ConnectionEvent | DisconnectEvent | ErrorEvent | ChangeEvent
EVENT_KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (ConnectEvent, ConnectionEvent, DisconnectEvent, ErrorEvent, ChangeEvent)
}


class EventStream:
    """``async for event in node.events()``: a bounded queue of the node's events.

    Subscribed when created, so no event is missed between creating and iterating. When a
    slow consumer lets ``buffer`` events pile up, newer ones are dropped and counted in
    :attr:`dropped` (a node never blocks on its observers). Iteration ends when the node
    stops; use ``async with node.events() as events`` (or :meth:`aclose`) to unsubscribe
    earlier.
    """

    def __init__(self, node: Node, kinds: Iterable[str], buffer: int) -> None:
        self._node = node
        self.kinds = frozenset(kinds)
        self.dropped = 0
        self._send, self._recv = trio.open_memory_channel[NodeEvent](buffer)
        node._streams.add(self)

    def _offer(self, event: NodeEvent) -> None:
        if self.kinds and event.kind not in self.kinds:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _end(self) -> None:
        self._send.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> NodeEvent:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        self._node._streams.discard(self)
        self._send.close()
        self._recv.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# --- per-peer bookkeeping ------------------------------------------------------------------

_COUNTERS = (
    "bytes_sent",
    "bytes_received",
    "entries_sent",
    "entries_received",
    "entries_changed",
    "batches_sent",
    "batches_received",
    "skew_rejected",
)


@dataclass(slots=True)
class _Record:
    """What we know about one peer id, summed over all its sessions."""

    peer_id: str
    incarnation: bytes | None = None
    address: str | None = None
    remote_last_seq: int = 0
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    active: list[tuple[Session, bool]] = field(default_factory=list)
    sessions: int = 0
    rounds_completed: int = 0
    errors: int = 0
    protocol_errors: int = 0
    last_sync: float | None = None
    caught_up_at: float | None = None
    last_error: str | None = None

    def fold(self, stats: SessionStats) -> None:
        for name in _COUNTERS:
            self.totals[name] += getattr(stats, name)

    def caught_up(self) -> None:
        self.last_sync = time.time()
        self.caught_up_at = trio.current_time()


@dataclass(eq=False, slots=True)
class _Target:
    """A peer address we dial."""

    address: str
    host: str
    port: int
    discovered: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    peer_id: str | None = None
    live_session: Session | None = None
    connect_errors: int = 0
    failures: int = 0
    last_error: str | None = None
    commits_mark: int = 0


def _tune_socket(stream: trio.abc.Stream) -> None:
    """TCP keepalive, so a live session notices a peer that vanished without a FIN."""
    if not isinstance(stream, trio.SocketStream):
        return
    sock = stream.socket
    with contextlib.suppress(OSError):
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            opt = getattr(_socket, name, None)
            if opt is not None:
                sock.setsockopt(_socket.IPPROTO_TCP, opt, value)


def _was_tailing(s: Session) -> bool:
    """The session had caught up both ways (states survive its end, so this also says
    whether a failed session had been healthy before it failed)."""
    return (
        s.remote is not None
        and s.in_state in (InState.LIVE, InState.DISABLED, InState.DONE)
        and s.out_state in (OutState.LIVE, OutState.DISABLED, OutState.DONE)
    )


def _connect_failure(exc: BaseException) -> str:
    """Why a dial failed: trio's "all attempts failed" hides the causes in an exception group."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return "; ".join(str(e) for e in cause.exceptions)
    return str(exc)


def _peer_address(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            host, port = stream.socket.getpeername()[:2]
            return format_address(str(host), int(port))
    return "?"


# --- the node ------------------------------------------------------------------------------


class Node:
    """A running replication node; get one from :func:`serve`.

    ``address`` is the ``(host, port)`` actually bound. Methods are safe to call from any
    task of the same trio run while the node is running. Hostile input is bounded: at most
    :attr:`max_inbound_connections` inbound connections are served at once (the rest are
    closed and counted in ``connections_refused``), so silent clients cannot exhaust the
    file descriptors our own dials need.
    """

    def __init__(
        self,
        store: Store,
        *,
        cluster_id: str,
        mode: str,
        live: bool,
        sync_interval_s: float,
        min_sync_interval_s: float,
        idle_timeout_s: float | None,
        handshake_timeout_s: float | None,
        connect_timeout_s: float,
        backoff_base_s: float,
        backoff_max_s: float,
        rng: random.Random,
        wrap_stream: StreamWrapper | None,
        session_options: Mapping[str, Any],
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown sync mode {mode!r}; use one of {', '.join(MODES)}")
        if not sync_interval_s > 0 or not 0 < min_sync_interval_s <= sync_interval_s:
            raise ConfigError(
                "need 0 < min_sync_interval_s <= sync_interval_s, got "
                f"{min_sync_interval_s!r} and {sync_interval_s!r}"
            )
        Backoff(base=backoff_base_s, maximum=backoff_max_s)  # validates
        self.store = store
        self.cluster_id = cluster_id
        self.mode = mode
        self.live = live
        self.sync_interval_s = float(sync_interval_s)
        self.min_sync_interval_s = float(min_sync_interval_s)
        self.idle_timeout_s = idle_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.rng = rng
        self.wrap_stream = wrap_stream
        self.session_options = dict(session_options)
        Session(store, mode=mode, cluster_id=cluster_id, **self.session_options)  # validates
        self.address: tuple[str, int] = ("", 0)
        self.discovery: Any = None
        self.connections_accepted = 0
        self.connections_refused = 0
        self.max_inbound_connections = MAX_INBOUND_CONNECTIONS
        self._inbound = 0
        self.max_discovered_peers = MAX_DISCOVERED_PEERS
        self.discovered_max_failures = DISCOVERED_MAX_FAILURES
        self.callback_errors = 0
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._targets: dict[str, _Target] = {}
        self._records: dict[str, _Record] = {}
        self._callbacks: dict[str, list[Callable[[Any], object]]] = {k: [] for k in EVENT_KINDS}
        self._streams: set[EventStream] = set()
        self._commits = 0
        self._commit_event = trio.Event()

    # --- public API -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the node stopped (the ``async with`` was left)."""
        return self._closed

    @property
    def peer_id(self) -> str:
        """The store's peer id."""
        return self.store.peer_id

    @property
    def peers(self) -> list[str]:
        """Addresses this node dials (configured, added and discovered)."""
        return list(self._targets)

    def add_peer(self, address: str, *, discovered: bool = False) -> bool:
        """Start replicating with the node at ``"host:port"``; returns False if known already.

        Our own listening address is ignored (a self-connection would only fail). A
        ``discovered`` address is refused while :attr:`max_discovered_peers` discovered
        ones are known, and forgotten after :attr:`discovered_max_failures` failed
        attempts in a row.
        """
        self._check()
        host, port = parse_address(address, what="peer address")
        key = format_address(host, port)
        if key in self._targets or (host, port) == self.address:
            return False
        if discovered:
            known = sum(1 for t in self._targets.values() if t.discovered)
            if known >= self.max_discovered_peers:
                log.warning("%s: ignoring discovered peer %s: too many", self.peer_id, key)
                return False
        target = _Target(key, host, port, discovered, commits_mark=self._commits)
        self._targets[key] = target
        assert self._nursery is not None
        self._nursery.start_soon(self._target_main, target)
        log.info("%s: peer %s added%s", self.peer_id, key, " (discovered)" if discovered else "")
        return True

    def remove_peer(self, address: str) -> bool:
        """Stop dialing ``address`` (its open sessions are cancelled); False if unknown."""
        host, port = parse_address(address, what="peer address")
        target = self._targets.pop(format_address(host, port), None)
        if target is None:
            return False
        target.scope.cancel()
        return True

    async def sync_now(self) -> dict[str, BaseException | None]:
        """One anti-entropy round with every known peer, concurrently; returns when all ended.

        Each round is a fresh short-lived, non-live session (even if a live session is up),
        so on return everything each peer had when its round started is here, and ours is
        there (as ``mode`` allows). Failures do not raise: they are recorded in
        :meth:`stats` and returned as ``{address: error or None}``.
        """
        self._check()
        results: dict[str, BaseException | None] = {}

        async def one(target: _Target) -> None:
            results[target.address] = await self._round(target)

        async with trio.open_nursery() as nursery:
            for target in list(self._targets.values()):
                nursery.start_soon(one, target)
        return results

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-peer replication state, keyed by peer id.

        Peers we dial but never reached are keyed by their address; connections that
        failed before identifying themselves are summed under :data:`UNIDENTIFIED`.
        Fields: ``peer_id``, ``address``, ``incarnation`` (hex), ``cursor`` (the last
        sequence of the peer's log applied here, durable), ``remote_last_seq`` (the peer's
        log head as last seen), ``lag_entries`` (log positions of the peer we know of but
        have not applied), ``lag_seconds`` (0 while a live session is tailing with nothing
        pending, else seconds since we last caught up; None if never), ``bytes_sent``,
        ``bytes_received``, ``entries_sent``, ``entries_received``, ``entries_changed``
        (received entries that won and changed our state), ``batches_sent``,
        ``batches_received``, ``sessions`` (handshakes done), ``rounds_completed``,
        ``errors`` (failed connections and sessions), ``protocol_errors`` (sessions failed
        by a protocol violation, either side's), ``skew_rejected`` (entries and hellos
        refused for clock skew), ``connected`` (a session is open now), ``live`` (a live
        session is open now), ``last_sync`` (wall time of the last catch-up, or None),
        ``last_error``, ``discovered``.
        """
        now = trio.current_time()
        out: dict[str, dict[str, Any]] = {}
        for rec in self._records.values():
            out[rec.peer_id] = self._snapshot(rec, now)
        for target in self._targets.values():
            entry = out.get(target.peer_id) if target.peer_id is not None else None
            if entry is None:
                entry = out[target.address] = self._snapshot(_Record(UNIDENTIFIED), now)
                entry["peer_id"] = None
            entry["address"] = target.address
            entry["discovered"] = target.discovered
            entry["errors"] += target.connect_errors
            if target.last_error is not None and entry["last_error"] is None:
                entry["last_error"] = target.last_error
        return out

    def on(self, kind: str, callback: Callable[[Any], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``kind``; returns an unsubscriber.

        Kinds: ``connect``, ``connection``, ``disconnect``, ``error``, ``change``.
        Callbacks run synchronously inside the node: keep them short. An exception from a
        callback is logged and counted (``callback_errors``), never propagated.
        """
        if kind not in self._callbacks:
            raise ConfigError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
        lst = self._callbacks[kind]
        lst.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                lst.remove(callback)

        return unsubscribe

    def events(self, *kinds: str, buffer: int = 1024) -> EventStream:
        """An async iterator over the node's events (all kinds, or only ``kinds``)."""
        for k in kinds:
            if k not in EVENT_KINDS:
                raise ConfigError(f"unknown event kind {k!r}; known: {', '.join(EVENT_KINDS)}")
        self._check()
        return EventStream(self, kinds, buffer)

    def __repr__(self) -> str:
        host, port = self.address
        state = "closed" if self._closed else f"{len(self._targets)} peers"
        return f"<Node {self.peer_id!r} on {format_address(host, port)} {state}>"

    # --- internals ------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"node of peer {self.peer_id!r} is stopped")

    def _emit(self, event: NodeEvent) -> None:
        for cb in list(self._callbacks[event.kind]):
            try:
                cb(event)
            except Exception:
                self.callback_errors += 1
                log.exception("%s: %s callback %r failed", self.peer_id, event.kind, cb)
        for stream in list(self._streams):
            stream._offer(event)

    def _on_commit(self, _seq: int) -> None:
        self._commits += 1
        self._commit_event.set()
        self._commit_event = trio.Event()

    def _record(self, peer_id: str) -> _Record:
        rec = self._records.get(peer_id)
        if rec is None:
            rec = self._records[peer_id] = _Record(peer_id)
        return rec

    def _snapshot(self, rec: _Record, now: float) -> dict[str, Any]:
        totals = dict(rec.totals)
        remote_seq = rec.remote_last_seq
        tailing = False
        live = False
        for session, is_live in rec.active:
            for name in _COUNTERS:
                totals[name] += getattr(session.stats, name)
            if session.in_state is not InState.DISABLED:
                remote_seq = max(remote_seq, session.cursor + session.lag)
            if is_live and session.remote is not None:
                live = True
                if session.in_state is InState.LIVE and session.lag == 0:
                    tailing = True
        cursor = 0
        if rec.incarnation is not None and not self.store.closed:
            cursor = self.store.cursor(rec.peer_id, rec.incarnation)
        if tailing:
            lag_s: float | None = 0.0
        elif rec.caught_up_at is not None:
            lag_s = max(0.0, now - rec.caught_up_at)
        else:
            lag_s = None
        return {
            "peer_id": rec.peer_id,
            "address": rec.address,
            "discovered": False,
            "incarnation": rec.incarnation.hex() if rec.incarnation is not None else None,
            "cursor": cursor,
            "remote_last_seq": remote_seq,
            "lag_entries": max(0, remote_seq - cursor),
            "lag_seconds": lag_s,
            **totals,
            "sessions": rec.sessions,
            "rounds_completed": rec.rounds_completed,
            "errors": rec.errors,
            "protocol_errors": rec.protocol_errors,
            "connected": bool(rec.active),
            "live": live,
            "last_sync": rec.last_sync,
            "last_error": rec.last_error,
        }

    def _new_session(self, *, live: bool) -> Session:
        return Session(
            self.store,
            mode=self.mode,
            live=live,
            cluster_id=self.cluster_id,
            **self.session_options,
        )

    async def _drive(
        self,
        session: Session,
        stream: trio.abc.Stream,
        *,
        address: str,
        outbound: bool,
        target: _Target | None,
    ) -> BaseException | None:
        """Run one session, keeping stats and emitting events; returns its error."""
        rec: _Record | None = None

        def on_event(ev: Event) -> None:
            nonlocal rec
            if isinstance(ev, Connected):
                rec = self._record(ev.peer_id)
                rec.active.append((session, session.live))
                rec.sessions += 1
                rec.address = address
                if rec.incarnation != ev.incarnation:
                    rec.incarnation = ev.incarnation
                    rec.remote_last_seq = 0
                if session.in_state is not InState.DISABLED:
                    rec.remote_last_seq = max(rec.remote_last_seq, ev.remote_last_seq)
                if target is not None:
                    target.peer_id = ev.peer_id
                cls = ConnectEvent if outbound else ConnectionEvent
                self._emit(cls(ev.peer_id, address, session.live))
            elif isinstance(ev, BatchApplied) and rec is not None:
                rec.remote_last_seq = max(rec.remote_last_seq, ev.to_seq)
                if ev.caught_up:
                    rec.caught_up()
                if ev.changed:
                    self._emit(
                        ChangeEvent(
                            rec.peer_id, address, ev.changed, ev.received, ev.to_seq, ev.caught_up
                        )
                    )
            elif isinstance(ev, SyncComplete) and rec is not None:
                rec.rounds_completed += 1
                if session.in_state is InState.DISABLED:
                    rec.last_sync = time.time()

        idle = None if session.live else self.idle_timeout_s
        error: BaseException | None = None
        try:
            await run_session(
                session,
                stream,
                on_event=on_event,
                idle_timeout_s=idle,
                handshake_timeout_s=self.handshake_timeout_s,
            )
        except CrdtKvError as exc:
            error = exc
        except Exception as exc:
            # A local failure inside this session (a resolver bug, a storage error): it
            # ends this session only, like a peer's fault, but with its traceback logged.
            log.exception("%s: session with %s failed locally", self.peer_id, address)
            error = exc
        finally:
            final = rec if rec is not None else self._record(UNIDENTIFIED)
            with contextlib.suppress(ValueError):
                final.active.remove((session, session.live))
            final.fold(session.stats)
            if error is not None:
                final.errors += 1
                if session.error is not None:
                    final.protocol_errors += 1
                final.last_error = str(error)
        peer_id = rec.peer_id if rec is not None else None
        if error is not None:
            log.info("%s: session with %s (%s) failed: %s", self.peer_id, peer_id, address, error)
            self._emit(ErrorEvent(peer_id, address, outbound, error))
        self._emit(
            DisconnectEvent(
                peer_id, address, outbound, session.complete, None if error is None else str(error)
            )
        )
        return error

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        address = _peer_address(stream)
        if self._inbound >= self.max_inbound_connections:
            # Connections that never speak are held for handshake_timeout_s; without a
            # cap a flood of them would take every file descriptor, dials included.
            self.connections_refused += 1
            log.warning("%s: refusing connection from %s: too many", self.peer_id, address)
            await trio.aclose_forcefully(stream)
            return
        self.connections_accepted += 1
        self._inbound += 1
        try:
            _tune_socket(stream)
            try:
                wrapped = self._wrap(stream, outbound=False)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            await self._drive(
                self._new_session(live=self.live),
                wrapped,
                address=address,
                outbound=False,
                target=None,
            )
        finally:
            self._inbound -= 1

    def _wrap(self, stream: trio.abc.Stream, *, outbound: bool) -> trio.abc.Stream:
        return stream if self.wrap_stream is None else self.wrap_stream(stream, outbound)

    async def _dial(self, target: _Target) -> trio.abc.Stream | BaseException:
        try:
            with trio.fail_after(self.connect_timeout_s):
                stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
        except (OSError, trio.TooSlowError) as exc:
            target.connect_errors += 1
            target.last_error = f"connect to {target.address} failed: {_connect_failure(exc)}"
            self._emit(ErrorEvent(target.peer_id, target.address, True, exc))
            return exc
        _tune_socket(stream)
        try:
            return self._wrap(stream, outbound=True)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def _round(self, target: _Target) -> BaseException | None:
        """One non-live session with ``target``; returns its error (None on success)."""
        stream = await self._dial(target)
        if isinstance(stream, BaseException):
            return stream
        return await self._drive(
            self._new_session(live=False),
            stream,
            address=target.address,
            outbound=True,
            target=target,
        )

    async def _target_main(self, target: _Target) -> None:
        with target.scope:
            async with trio.open_nursery() as nursery:
                if self.live:
                    nursery.start_soon(self._live_loop, target)
                nursery.start_soon(self._round_loop, target)

    def _backoff(self) -> Backoff:
        return Backoff(base=self.backoff_base_s, maximum=self.backoff_max_s, rng=self.rng)

    async def _live_loop(self, target: _Target) -> None:
        """Keep one live session open to ``target``, reconnecting with backoff."""
        backoff = self._backoff()
        while True:
            stream = await self._dial(target)
            if not isinstance(stream, BaseException):
                session = self._new_session(live=True)
                target.live_session = session
                started = trio.current_time()
                try:
                    error = await self._drive(
                        session, stream, address=target.address, outbound=True, target=target
                    )
                finally:
                    target.live_session = None
                # Only a session that worked for a while resets the backoff. One that fails
                # right after the handshake every time (resending batches each time), or
                # a peer that is not live (the session completes at once), must not be
                # redialed at the base delay forever.
                lasted = trio.current_time() - started
                worked = error is None or _was_tailing(session)
                if lasted >= backoff.peek() and worked:
                    backoff.reset()
                self._outcome(target, ok=worked)
            else:
                self._outcome(target, ok=False)
            await trio.sleep(backoff.next())

    def _live_tailing(self, target: _Target) -> bool:
        s = target.live_session
        return s is not None and _was_tailing(s)

    async def _round_loop(self, target: _Target) -> None:
        """Periodic rounds with ``target``: velocity-driven, backing off on failure.

        The interval halves (down to ``min_sync_interval_s``) after a round that moved
        entries and doubles back to ``sync_interval_s`` after a round that moved none; a
        local commit ends the wait early, but never before ``min_sync_interval_s``. Rounds
        are skipped while a live session with the peer is tailing (it already pushes every
        change both ways); without live, the first round starts at once. After a failed
        round the next waits out the backoff delay, however busy the writers are.
        """
        backoff = self._backoff()
        interval = self.sync_interval_s
        delay = 0.0 if not self.live else interval * (0.5 + 0.5 * self.rng.random())
        while True:
            await self._wait_round(target, delay)
            target.commits_mark = self._commits
            if self._live_tailing(target):
                delay = interval
                continue
            before = self._moved(target)
            error = await self._round(target)
            self._outcome(target, ok=error is None)
            if error is not None:
                # Commits must not cut a backoff short: a busy writer would redial a dead
                # peer every min_sync_interval_s.
                await trio.sleep(backoff.next())
                delay = 0.0
                continue
            backoff.reset()
            if self._moved(target) != before:
                interval = max(self.min_sync_interval_s, interval / 2)
            else:
                interval = min(self.sync_interval_s, interval * 2)
            delay = interval * (0.8 + 0.2 * self.rng.random())

    def _outcome(self, target: _Target, *, ok: bool) -> None:
        """Count failures in a row; forget a discovered address that keeps failing."""
        if ok:
            target.failures = 0
            return
        target.failures += 1
        if target.discovered and target.failures >= self.discovered_max_failures:
            log.info(
                "%s: forgetting discovered peer %s after %d failures",
                self.peer_id,
                target.address,
                target.failures,
            )
            if self._targets.get(target.address) is target:
                self.remove_peer(target.address)

    def _moved(self, target: _Target) -> int:
        rec = self._records.get(target.peer_id) if target.peer_id is not None else None
        if rec is None:
            return 0
        return rec.totals["entries_sent"] + rec.totals["entries_received"]

    async def _wait_round(self, target: _Target, delay: float) -> None:
        start = trio.current_time()
        deadline = start + delay
        await trio.sleep(min(delay, self.min_sync_interval_s))
        while trio.current_time() < deadline and self._commits == target.commits_mark:
            with trio.move_on_at(deadline):
                await self._commit_event.wait()

    async def _bind(self, listen: str) -> list[trio.SocketListener]:
        host, port = parse_address(listen, what="listen address")
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        sockname = listeners[0].socket.getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        return listeners

    async def _start(
        self,
        nursery: trio.Nursery,
        listeners: list[trio.SocketListener],
        peers: Iterable[str],
        discovery: Callable[[Node], Any] | None,
    ) -> None:
        self._nursery = nursery
        await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
        unsubscribe = self.store.on_commit(self._on_commit)
        nursery.start_soon(self._unsubscribe_on_exit, unsubscribe)
        for p in peers:
            self.add_peer(p)
        if discovery is not None:
            self.discovery = discovery(self)
            await nursery.start(self.discovery.run)
        log.info("%s: listening on %s", self.peer_id, format_address(*self.address))

    async def _unsubscribe_on_exit(self, unsubscribe: Callable[[], None]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            unsubscribe()

    def _stop(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream._end()
        self._streams.clear()


@contextlib.asynccontextmanager
async def serve(
    store: Store,
    *,
    listen: str = "127.0.0.1:0",
    peers: Iterable[str] = (),
    cluster_id: str = "default",
    sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S,
    min_sync_interval_s: float | None = None,
    live: bool = True,
    mode: str = "both",
    discovery: bool = False,
    multicast_group: str | None = None,
    multicast_port: int | None = None,
    multicast_interface: str | None = None,
    multicast_ttl: int = 1,
    announce_interval_s: float = 2.0,
    discovery_transport: Any = None,
    rng: random.Random | None = None,
    idle_timeout_s: float | None = 30.0,
    handshake_timeout_s: float | None = 10.0,
    connect_timeout_s: float = 5.0,
    backoff_base_s: float = 0.2,
    backoff_max_s: float = 30.0,
    wrap_stream: StreamWrapper | None = None,
    session_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[Node]:
    """Run a replication node for ``store`` while the ``async with`` body runs.

    ``listen``: ``"host:port"`` to bind (port 0 picks one; ``node.address`` tells which).
    ``peers``: addresses to dial; more with :meth:`Node.add_peer`. ``mode`` and ``live``
    apply to every session (inbound ones too: a node with ``live=False`` never tails).
    ``sync_interval_s``: the slowest period of anti-entropy rounds per peer;
    ``min_sync_interval_s`` (default a tenth of it) the fastest, reached when writes are
    frequent. ``idle_timeout_s`` fails a non-live session whose peer is silent that long;
    ``handshake_timeout_s`` drops connections that never send a Hello. Reconnects back off
    exponentially from ``backoff_base_s`` to ``backoff_max_s`` with jitter drawn from
    ``rng``. ``wrap_stream(stream, outbound)`` may wrap each TCP stream (e.g. in
    :class:`trio.SSLStream`). ``session_options`` go to every
    :class:`~crdt_kv.protocol.Session` (``max_batch_entries``, ``window``, ...).

    ``discovery=True`` announces this node by UDP multicast on ``multicast_group`` /
    ``multicast_port`` every ``announce_interval_s`` and adds the peers it hears (same
    ``cluster_id``); the multicast interface defaults to the listen host when that is a
    specific IPv4 address, so a node bound to 127.0.0.1 announces on loopback only.
    ``discovery_transport`` replaces the multicast socket (any object with the
    :class:`~crdt_kv.net.discovery.DatagramTransport` methods).
    """
    the_rng = rng if rng is not None else random.Random()
    node = Node(
        store,
        cluster_id=cluster_id,
        mode=mode,
        live=live,
        sync_interval_s=sync_interval_s,
        min_sync_interval_s=(
            min_sync_interval_s
            if min_sync_interval_s is not None
            else max(min(0.05, sync_interval_s), sync_interval_s / 10)
        ),
        idle_timeout_s=idle_timeout_s,
        handshake_timeout_s=handshake_timeout_s,
        connect_timeout_s=connect_timeout_s,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        rng=the_rng,
        wrap_stream=wrap_stream,
        session_options=session_options or {},
    )
    make_discovery: Callable[[Node], Any] | None = None
    if discovery:
        from crdt_kv.net.discovery import Discovery

        def make_discovery(n: Node) -> Any:
            return Discovery.for_node(
                n,
                group=multicast_group,
                port=multicast_port,
                interface=multicast_interface,
                ttl=multicast_ttl,
                interval_s=announce_interval_s,
                transport=discovery_transport,
            )

    peers = list(peers)
    for p in peers:
        parse_address(p, what="peer address")
    listeners = await node._bind(listen)
    # Exceptions of the body (and of starting up) are re-raised outside the nursery, so
    # callers see their own exception rather than an ExceptionGroup wrapping it.
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            await node._start(nursery, listeners, peers, make_discovery)
            yield node
        except BaseException as exc:
            body_error = exc
        finally:
            node._stop()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
