"""Keeping score of a node's links: what each :class:`~crdt_kv.protocol.PeerLink` reports
becomes per-peer statistics (:class:`~crdt_kv.net.peers.PeerBook`), node events for
callbacks and event streams, catch-up and collection progress, and the admission of
established inbound sessions.

:class:`Scorekeeper` is a base class of :class:`~crdt_kv.net.node.Node`, split out so that
module stays small; the node owns the state and supplies :meth:`Scorekeeper.remove_peer`.
:class:`Target` (an address we dial) and :class:`Watch` (one running link's bookkeeping)
are the records it works on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from crdt_kv.errors import CrdtKvError, PeerIdentityError, RejectedDataError, RemoteProtocolError
from crdt_kv.net.admission import Admission, Ticket
from crdt_kv.net.catchup import CatchUpWaiter
from crdt_kv.net.driver import LinkDriver
from crdt_kv.net.events import (
    ChangeEvent,
    ConnectEvent,
    ConnectionEvent,
    DisconnectEvent,
    ErrorEvent,
    EventStream,
    NodeEvent,
)
from crdt_kv.net.peers import UNIDENTIFIED, PeerBook, PeerRecord, TargetInfo
from crdt_kv.net.penalty import Penalties
from crdt_kv.net.sockets import connect_failure
from crdt_kv.protocol import (
    BatchApplied,
    Connected,
    GcPolicy,
    InState,
    LinkEvent,
    LinkFailed,
    LinkRole,
    PeerLink,
    RepairFinished,
    SessionEnded,
    SyncComplete,
)

__all__ = ["Scorekeeper", "Target", "Watch"]

log = logging.getLogger("crdt_kv.net")

PENALTY_LOG_INTERVAL_S = 10.0
"""At most one log line about blocked sources per this many seconds (a flood logs little)."""


def offence(session_error: BaseException | None) -> str | None:
    """Why an inbound session counts against its source host, or None. ``session_error``
    is what the session itself refused (it sent the peer an Abort for it): a protocol
    violation, an oversized or refused frame, refused data, a refused identity. A peer
    that closed or reset the connection, went silent (:mod:`crdt_kv.net.penalty` says why
    that is not counted), aborted us, or met our own failure did nothing to count (a
    health check's connect and close included)."""
    if isinstance(session_error, PeerIdentityError):
        return "identity"
    if isinstance(session_error, RejectedDataError):
        return "rejected"
    if isinstance(session_error, RemoteProtocolError):
        return "protocol"
    return None


@dataclass(eq=False, slots=True)
class Target:
    """A peer address we dial, and the link that decides when."""

    address: str
    host: str
    port: int
    discovered: bool
    driver: LinkDriver
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    peer_id: str | None = None
    connect_errors: int = 0
    last_error: str | None = None

    def info(self) -> TargetInfo:
        return TargetInfo(
            self.address,
            self.peer_id,
            self.discovered,
            self.connect_errors,
            self.last_error,
            self.driver.link.failures,
        )


@dataclass(eq=False, slots=True)
class Watch:
    """One link's bookkeeping for stats and events while it runs."""

    link: PeerLink
    address: str
    outbound: bool
    target: Target | None = None
    ticket: Ticket | None = None
    record: PeerRecord | None = None
    result: BaseException | None = None
    source: str | None = None
    """The TCP source host of an inbound connection (what penalties key on)."""


class Scorekeeper:
    """The node's handlers of link events; the state lives on the node."""

    gc: GcPolicy | None
    admission: Admission
    penalties: Penalties
    connections_refused: int
    callback_errors: int
    discovered_max_failures: int
    _gc_wake: trio.Event | None
    _targets: dict[str, Target]
    _book: PeerBook
    _callbacks: dict[str, list[Callable[[Any], object]]]
    _streams: set[EventStream]
    _catch_up: CatchUpWaiter | None
    _penalty_log: tuple[float, int] = (-math.inf, 0)

    def _see(self, watch: Watch, ev: LinkEvent) -> None:
        """Keep score and emit node events for what a link reports."""
        if self._catch_up is not None and watch.target is not None:
            self._catch_up.see(watch.target.address, ev)
        if self.gc is not None and self._gc_wake is not None:
            self.gc.link_event(ev, trio.current_time())
            self._gc_wake.set()
        if watch.record is not None:
            self._book.touch(watch.record)
        if isinstance(ev, Connected):
            session = watch.link.session
            assert session is not None
            if watch.ticket is not None and not self._admitted(watch, ev.peer_id):
                return
            watch.record = self._book.connected(
                session, ev.peer_id, ev.incarnation, ev.remote_last_seq, watch.address
            )
            if watch.target is not None:
                watch.target.peer_id = ev.peer_id
            cls = ConnectEvent if watch.outbound else ConnectionEvent
            self._emit(cls(ev.peer_id, watch.address, session.live))
        elif isinstance(ev, BatchApplied) and watch.record is not None:
            rec = watch.record
            rec.remote_last_seq = max(rec.remote_last_seq, ev.to_seq)
            if ev.caught_up:
                rec.last_sync = time.time()
                rec.caught_up_at = trio.current_time()
            if ev.changed:
                self._emit(
                    ChangeEvent(
                        rec.peer_id, watch.address, ev.changed, ev.received, ev.to_seq, ev.caught_up
                    )
                )
        elif isinstance(ev, RepairFinished) and ev.changed and watch.record is not None:
            rec = watch.record
            self._emit(ChangeEvent(rec.peer_id, watch.address, ev.changed, ev.changed, 0, False))
        elif isinstance(ev, SyncComplete) and watch.record is not None:
            watch.record.rounds_completed += 1
            session = watch.link.session
            if session is not None and session.in_state is InState.DISABLED:
                watch.record.last_sync = time.time()
        elif isinstance(ev, LinkFailed):
            self._failed(watch, ev)
        elif isinstance(ev, SessionEnded):
            self._ended(watch, ev)

    def _admitted(self, watch: Watch, peer_id: str) -> bool:
        """Register an established inbound session, or close it: a duplicate."""
        session, ticket = watch.link.session, watch.ticket
        assert session is not None and session.remote is not None and ticket is not None
        live = session.live and session.remote.live
        why = self.admission.established(ticket, peer_id, live=live)
        if why is None:
            return True
        self.connections_refused += 1
        log.warning("%s: refusing session from %s: %s", self.peer_id, watch.address, why)
        watch.link.close(trio.current_time(), f"refused: {why}")
        return False

    def _failed(self, watch: Watch, ev: LinkFailed) -> None:
        """A dial or a session failed: count it; forget a discovered address that keeps
        failing."""
        watch.result = ev.error
        target = watch.target
        if ev.dialing:
            self._book.count_refusal(ev.error)  # our TLS refused the dialed peer
            if target is not None:
                target.connect_errors += 1
                why = connect_failure(ev.error)
                target.last_error = f"connect to {target.address} failed: {why}"
            self._emit(ErrorEvent(watch.link.peer_id, watch.address, True, ev.error))
        if (
            target is not None
            and watch.link.role is LinkRole.DIAL
            and target.discovered
            and ev.failures >= self.discovered_max_failures
        ):
            log.info(
                "%s: forgetting discovered peer %s after %d failures",
                self.peer_id,
                target.address,
                ev.failures,
            )
            if self._targets.get(target.address) is target:
                self.remove_peer(target.address)

    def _ended(self, watch: Watch, ev: SessionEnded) -> None:
        session = watch.link.session
        assert session is not None
        error = ev.error
        watch.result = error
        if not watch.outbound:
            reason = offence(session.error)
            if reason is not None:
                self._offended(watch.source, reason)
            elif error is None and (ev.complete or ev.caught_up):
                self.penalties.forgive(watch.source)
        named = self._book.ended(watch.record, session, error).peer_id
        peer_id = None if named == UNIDENTIFIED else named
        watch.record = None
        if error is not None:
            if isinstance(error, CrdtKvError):
                (log.warning if isinstance(error, PeerIdentityError) else log.info)(
                    "%s: session with %s (%s) failed: %s",
                    self.peer_id,
                    peer_id,
                    watch.address,
                    error,
                )
            else:
                log.error(
                    "%s: session with %s failed locally",
                    self.peer_id,
                    watch.address,
                    exc_info=error,
                )
            self._emit(ErrorEvent(peer_id, watch.address, watch.outbound, error))
        text = None if error is None else str(error)
        self._emit(DisconnectEvent(peer_id, watch.address, watch.outbound, ev.complete, text))

    def _offended(self, host: str | None, reason: str) -> None:
        """Count an offence of ``host``; log blocks at most every few seconds."""
        now = trio.current_time()
        block = self.penalties.offend(host, reason, now)
        if not block:
            return
        last, quiet = self._penalty_log
        if now - last < PENALTY_LOG_INTERVAL_S:
            self._penalty_log = (last, quiet + 1)
            return
        self._penalty_log = (now, 0)
        log.warning(
            "%s: blocking connections from %s for %.1f s (%s; %d more blocks unlogged since "
            "the last such line; %d sources held)",
            self.peer_id,
            host,
            block,
            reason,
            quiet,
            len(self.penalties),
        )

    def _emit(self, event: NodeEvent) -> None:
        for cb in list(self._callbacks[event.kind]):
            try:
                cb(event)
            except Exception:
                self.callback_errors += 1
                log.exception("%s: %s callback %r failed", self.peer_id, event.kind, cb)
        for stream in list(self._streams):
            stream.offer(event)

    # --- supplied by the node -------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        raise NotImplementedError

    def remove_peer(self, address: str) -> bool:
        raise NotImplementedError
