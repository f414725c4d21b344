"""One peer relationship and every replication decision about it, sans-I/O.

A :class:`PeerLink` owns, for one peer: when to dial (at once, after a velocity-driven
round interval, or after an exponential backoff with jitter from an injected
:class:`random.Random`), the sessions it runs one at a time (live or one-shot), the
handshake and idle deadlines, keep-alives on quiet live sessions, the "caught up" test,
and when a connection is to be closed and how. It is driven like aioquic's
``QuicConnection``: the driver feeds it :meth:`receive_data`, :meth:`connection_made`,
:meth:`connection_lost`, :meth:`local_changed` and :meth:`handle_timer` with the current
time ``now`` (seconds, any monotonic origin), sends :meth:`data_to_send`, sleeps until
:meth:`get_timer`, performs its storage requests, and acts on its events:
:class:`DialDue` (open a connection), :class:`CloseConnection` (flush or not, then close),
plus information (:class:`CaughtUp`, :class:`LinkFailed`, :class:`SessionEnded` and the
session's own events such as ``BatchApplied``). The trio node and the simulator are both
such drivers, so the simulator exercises exactly the production policy.

The link's lifecycle is one table (:data:`LINK_TABLE`); its roles:

- ``dial``: keep the relationship forever (a configured or discovered peer). Live links
  hold one live session and redial with backoff when it breaks; a peer that does not tail
  us (its session completes) is synced in rounds instead. A live session never verifies
  digests (that needs both directions to end), so every ``verify_interval_s``, or at once
  while the peer owes an answer for a key of our quarantine, the link ends its settled
  live session and syncs one verifying round before going live again.
- ``once``: one session, no retry (``replicate``, ``sync_now``, an accepted connection).
"""

from __future__ import annotations

import random
from collections import deque

from crdt_kv.errors import LocalProtocolError, RemoteProtocolError
from crdt_kv.protocol.events import (
    BatchApplied,
    CaughtUp,
    CloseConnection,
    Connected,
    ConnectionClosed,
    DialDue,
    Event,
    LinkEvent,
    LinkFailed,
    SessionEnded,
    SessionFailed,
    SyncComplete,
)
from crdt_kv.protocol.linkconfig import LinkConfig
from crdt_kv.protocol.linktable import (
    _AFTER,
    LINK_TABLE,
    LinkRole,
    LinkState,
    _DialFailed,
    _DialTimer,
    _Lost,
    _Made,
    _SessionOver,
    _Stop,
)
from crdt_kv.protocol.replica import Replica
from crdt_kv.protocol.session import Session
from crdt_kv.protocol.states import ConnState
from crdt_kv.protocol.storage import StorageRequest

__all__ = ["LINK_TABLE", "LinkRole", "LinkState", "PeerLink"]


# --- the link -----------------------------------------------------------------------------


class PeerLink:
    """The policy for one peer; see the module doc. Nothing here reads a clock or blocks.

    ``replica``: the store we replicate. ``role``: ``"dial"`` or ``"once"``. ``config``:
    the policy knobs. ``rng``: jitter for backoff and round timing. ``now``: the creation
    time (a ``dial`` link dials at once). ``defer_storage``: hand storage work to the
    driver (:meth:`storage_request`) instead of performing it inline. ``label`` names the
    peer in errors until its Hello tells us its id (an address, say).
    """

    def __init__(
        self,
        replica: Replica,
        *,
        role: LinkRole | str = LinkRole.DIAL,
        config: LinkConfig | None = None,
        rng: random.Random,
        now: float,
        defer_storage: bool = False,
        label: str = "peer",
    ) -> None:
        self.replica = replica
        self.role = LinkRole(role)
        self.config = config if config is not None else LinkConfig()
        self.rng = rng
        self.defer_storage = defer_storage
        self.label = label
        self.state = LinkState.WAITING
        self.session: Session | None = None
        """The current session, or the last one after it ended."""
        self.peer_id: str | None = None
        self.failures = 0
        self.sessions = 0
        self._backoff = self.config.backoff(rng)
        self._interval = self.config.sync_interval_s
        self._events: deque[LinkEvent] = deque()
        self._next_dial: float | None = now
        self._commit_cut = False
        self._cuttable = False
        self._round_end = now
        self._connected_at = 0.0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._push_at: float | None = None
        self._flush_deadline: float | None = None
        self._error: BaseException | None = None
        self._announced = False
        self._went_silent = False
        self._stopping = False
        self._verify_next = False
        """The next session is a one-shot round that verifies (see the module doc)."""
        self._verifying = False
        """The current (or last) session is such a round."""
        self._verify_check = 0.0
        """When a live session is next looked at for a verifying round (its own timer:
        the keep-alive timer is pushed back by any traffic, a push leaves it unsettled)."""
        self._requests: dict[int, tuple[StorageRequest, Session]] = {}

    # --- introspection ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A connection is open (possibly closing)."""
        return self.state in (LinkState.CONNECTED, LinkState.CLOSING)

    @property
    def tailing(self) -> bool:
        """A live session is open and caught up both ways."""
        s = self.session
        return self.state is LinkState.CONNECTED and s is not None and s.live and s.caught_up

    @property
    def input_paused(self) -> bool:
        """The session's received frames wait for storage: stop reading for now."""
        s = self._current()
        return s is not None and s.input_paused

    @property
    def closed(self) -> bool:
        """The link ended for good."""
        return self.state is LinkState.CLOSED

    @property
    def error(self) -> BaseException | None:
        """Why the last connection failed (None if it ended cleanly)."""
        return self._error

    # --- events -------------------------------------------------------------------------

    def next_event(self) -> LinkEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def events(self) -> list[LinkEvent]:
        """Every event not yet taken, oldest first."""
        out = list(self._events)
        self._events.clear()
        return out

    # --- inputs -------------------------------------------------------------------------

    def connection_made(
        self, now: float, *, session: Session | None = None, peer_identity: str | None = None
    ) -> None:
        """A connection to the peer is open: start a session on it (``session``, if the
        caller built one, else a new one from the config). ``peer_identity``: the peer id
        the connection authenticated (a TLS certificate's); the Hello must claim it."""
        self._step(_Made)
        self._verifying, self._verify_next = self._verify_next, False
        if session is None:
            session = self.config.session(
                self.replica,
                live=self.config.live and not self._verifying,
                defer_storage=self.defer_storage,
                peer_identity=peer_identity,
            )
        self.session = session
        self._error = None
        self._went_silent = False
        self._announced = False
        self._connected_at = self._last_rx = self._last_tx = now
        self._verify_check = now + self.config.keepalive / 2
        self._push_at = None
        self._next_dial = None
        self.sessions += 1
        if session.state is ConnState.IDLE:
            session.start()

    def connection_failed(self, now: float, error: BaseException) -> None:
        """The dial after :class:`DialDue` failed."""
        self._step(_DialFailed)
        self._error = error
        self._failed(error, now, dialing=True)
        self._after_connection(now, ok=False, live=self.config.live)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer (``b""``: the peer ended the stream)."""
        s = self._current()
        if s is None:
            return
        frames = s.stats.frames_received
        if s.remote is None:  # the Hello cannot have left before the connection began
            s.hello_transit_ms = max(0, int((now - self._connected_at) * 1000))
        try:
            events = s.receive_data(data)
        except Exception as exc:  # the replica failed applying inline: ours, not the peer's
            self._local_failure(s, exc, now)
            return
        if s.stats.frames_received != frames or not data or not s.held_bytes:
            self._last_rx = now  # a trickle into one frame is not progress
        self._feed(s, events, now)

    @property
    def held_bytes(self) -> int:
        """The current session's :attr:`Session.held_bytes` plus its queued output (0
        without a session): what it holds of the peer's bytes and for the peer."""
        s = self.session
        return 0 if s is None else s.held_bytes + s.output_bytes

    def data_to_send(self) -> bytes:
        """Bytes to send on the current connection (``b""`` if none)."""
        s = self.session
        if s is None or not self.connected:
            return b""
        return s.data_to_send()

    def local_changed(self, now: float) -> bool:
        """Our store committed: push it to a live peer (after ``push_delay_s``), and let a
        waiting round start early (but not before the minimum interval).

        Returns False when the call changed nothing (a driver that serviced the link since
        its last input may skip servicing it again: there are no new bytes, events, storage
        requests or timers); True when it may have."""
        s = self._current()
        if s is not None and s.live:
            if self.config.push_delay_s <= 0:
                self._feed(s, s.local_changed(), now)
                return True
            if self._push_at is None:
                self._push_at = now + self.config.push_delay_s
                return True
            return False
        if self.state is LinkState.WAITING and self._cuttable and not self._commit_cut:
            self._commit_cut = True
            return True
        return False

    def connection_lost(self, now: float, error: BaseException | None = None) -> None:
        """The connection is gone: closed after :class:`CloseConnection`, or broken
        (``error``: the transport's exception) or closed under us."""
        s = self.session
        if not self.connected or s is None:
            return
        if self.state is LinkState.CONNECTED:
            if error is not None:
                err = RemoteProtocolError(f"connection to peer {self._name()} broke: {error!r}")
                err.__cause__ = error
                self._set_error(err)
            elif not s.closed:
                self._set_error(
                    RemoteProtocolError(f"connection to peer {self._name()} closed under us")
                )
        if not s.closed:
            s.close("connection lost")
            s.data_to_send()
        self._step(_Lost)
        self._flush_deadline = None
        tailing = s.caught_up
        ok = self._error is None or tailing
        if not ok:
            assert self._error is not None
            self._failed(self._error, now, dialing=False)
        self._events.append(
            SessionEnded(
                self.peer_id, s.complete, tailing, self._error, s.live, s.stats, self._went_silent
            )
        )
        self._after_connection(now, ok=ok, live=s.live)

    def dial_now(self, now: float) -> None:
        """Skip the wait: dial at ``now`` if the link is waiting (a manual sync)."""
        if self.state is LinkState.WAITING:
            self._next_dial = now

    def close(self, now: float, reason: str = "closed by local side") -> None:
        """End the relationship; an open session is closed (with an Abort if unfinished)."""
        if self.state is LinkState.CLOSED:
            return
        was = self.state
        self._stopping = True
        self._step(_Stop)
        if was is LinkState.CONNECTED:
            assert self.session is not None
            self.session.close(reason)
            self._close_connection(now, flush=True, graceful=True)
        self._next_dial = None

    # --- storage --------------------------------------------------------------------------

    def storage_request(self) -> StorageRequest | None:
        """The next storage request to perform (``defer_storage=True``), or None."""
        s = self.session
        if s is None or not self.connected:
            return None
        request = s.storage_request()
        if request is not None:
            self._requests[id(request)] = (request, s)
        return request

    def _owner(self, request: StorageRequest) -> Session | None:
        """The session that asked for ``request`` if it is still the current one; a result
        for an earlier connection's session is dropped (an apply it made is committed with
        its cursor, so nothing is lost)."""
        taken = self._requests.pop(id(request), None)
        if taken is None or taken[0] is not request or taken[1] is not self.session:
            return None
        return taken[1]

    def storage_done(self, request: StorageRequest, result: object, now: float) -> None:
        """Hand back a performed request's result."""
        s = self._owner(request)
        if s is None:
            return
        self._last_rx = max(self._last_rx, now)
        self._feed(s, s.storage_done(request, result), now)

    def storage_failed(self, request: StorageRequest, error: BaseException, now: float) -> None:
        """The request raised ``error``: the peer's fault (skew, bad data) fails the
        session; anything else is a local failure and ends the session too."""
        s = self._owner(request)
        if s is None:
            return
        try:
            events = s.storage_failed(request, error)
        except Exception as exc:
            self._local_failure(s, exc, now)
            return
        self._feed(s, events, now)

    # --- timers ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: no timer)."""
        st = self.state
        if st is LinkState.WAITING:
            return self._dial_time()
        if st is LinkState.CLOSING:
            return self._flush_deadline
        if st is not LinkState.CONNECTED:
            return None
        s = self.session
        assert s is not None
        cfg = self.config
        times: list[float] = []
        if s.remote is None and cfg.handshake_timeout_s is not None:
            times.append(self._connected_at + cfg.handshake_timeout_s)
        idle = self._idle_limit(s)
        if idle is not None and not s.storage_busy:
            times.append(self._last_rx + idle)
        if self._push_at is not None:
            times.append(self._push_at)
        if s.live and s.remote is not None:
            times.append(self._last_tx + cfg.keepalive)
            if self._can_verify(s):
                times.append(self._verify_check)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed by ``now``."""
        st = self.state
        if st is LinkState.WAITING:
            due = self._dial_time()
            if due is not None and now >= due:
                self._step(_DialTimer)
                self._next_dial = None
                self._commit_cut = self._cuttable = False
                self._events.append(DialDue())
            return
        if st is LinkState.CLOSING:
            if self._flush_deadline is not None and now >= self._flush_deadline:
                self._flush_deadline = None
                self._events.append(CloseConnection(flush=False, graceful=False))
            return
        s = self._current()
        if s is None:
            return
        self._check_deadlines(s, now)

    # --- internals ------------------------------------------------------------------------

    def _step(self, event: type) -> None:
        try:
            nxt = LINK_TABLE[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"link to {self._name()}: {event.__name__.lstrip('_')} while {self.state}"
            ) from None
        if nxt is _AFTER:
            again = self.role is LinkRole.DIAL and not self._stopping
            nxt = LinkState.WAITING if again else LinkState.CLOSED
        self.state = nxt

    def _name(self) -> str:
        return repr(self.peer_id) if self.peer_id is not None else self.label

    def _current(self) -> Session | None:
        s = self.session
        return s if s is not None and self.state is LinkState.CONNECTED else None

    def _set_error(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error

    def _failed(self, error: BaseException, now: float, *, dialing: bool) -> None:
        self.failures += 1
        self._events.append(LinkFailed(error, self.failures, dialing))

    def _dial_time(self) -> float | None:
        t = self._next_dial
        if t is None:
            return None
        if self._commit_cut:
            return min(t, self._round_end + self.config.min_interval)
        return t

    def _check_deadlines(self, s: Session, now: float) -> None:
        cfg = self.config
        hs, idle = cfg.handshake_timeout_s, self._idle_limit(s)
        if s.remote is None and hs is not None and now >= self._connected_at + hs:
            return self._timed_out(s, now, "said nothing", hs)
        if idle is not None and not s.storage_busy and now >= self._last_rx + idle:
            return self._timed_out(s, now, "sent nothing", idle)
        if self._push_at is not None and now >= self._push_at:
            self._push_at = None
            self._feed(s, s.local_changed(), now)
        if now >= self._verify_check and self._verify_due(s, now):
            self._verify_next = True
            s.close("a verifying round follows")
            self._session_over(now, flush=True, graceful=True)
            return None
        if s.live and s.remote is not None and now >= self._last_tx + cfg.keepalive:
            s.send_keepalive()
            self._last_tx = now
        if s.has_output:
            self._last_tx = now
        return None

    def _can_verify(self, s: Session) -> bool:
        """Whether ``s`` is a live session this link may end for a verifying round."""
        r = s.remote
        return (
            self.role is LinkRole.DIAL
            and self.config.repair
            and s.live
            and r is not None
            and r.live
            and not self._stopping
        )

    def _verify_due(self, s: Session, now: float) -> bool:
        """A settled live session that is due for a verifying round: it lasted
        ``verify_interval_s``, or the peer owes an answer for a key of our quarantine."""
        self._verify_check = now + self.config.keepalive / 2
        if not self._can_verify(s) or not s.settled or self.peer_id is None:
            return False
        every = self.config.verify_interval_s
        if every is not None and now >= self._connected_at + every:
            return True
        return self.replica.wants_probe(self.peer_id)

    def _idle_limit(self, s: Session) -> float | None:
        """The idle timeout of ``s``: ``live_idle_timeout_s`` once both sides asked for
        live streaming (a live peer sends keep-alives), else ``idle_timeout_s``."""
        if s.live and s.remote is not None and s.remote.live:
            return self.config.live_idle_timeout_s
        return self.config.idle_timeout_s

    def _timed_out(self, s: Session, now: float, what: str, limit: float) -> None:
        self._set_error(RemoteProtocolError(f"peer {self._name()} {what} for {limit:g} s"))
        self._went_silent = True
        s.close("idle timeout")
        self._session_over(now, flush=True, graceful=False)

    def _local_failure(self, s: Session, error: Exception, now: float) -> None:
        self._set_error(error)
        s.close(f"local failure: {type(error).__name__}")
        self._session_over(now, flush=True, graceful=False)

    def _feed(self, s: Session, events: list[Event], now: float) -> None:
        """Record the session's events and decide whether the connection is over.

        Every event is looked at: a peer's bad frame right after the sync completed still
        counts as the session's error."""
        if s.has_output:
            self._last_tx = now
        for ev in events:
            self._events.append(ev)
            if isinstance(ev, Connected):
                self.peer_id = ev.peer_id
            elif isinstance(ev, SessionFailed):
                self._set_error(ev.error)
                self._session_over(now, flush=not ev.by_peer, graceful=False)
            elif isinstance(ev, SyncComplete):
                self._announce(s)
                self._session_over(now, flush=True, graceful=True)
            elif isinstance(ev, ConnectionClosed):
                if not (ev.complete or (s.live and s.caught_up)):
                    self._set_error(
                        RemoteProtocolError(
                            f"peer {self._name()} closed the stream before the sync completed"
                        )
                    )
                self._session_over(now, flush=False, graceful=self._error is None)
            elif isinstance(ev, BatchApplied) and ev.caught_up:
                self._announce(s)
        if s.live and not self._announced and s.caught_up and self.connected:
            self._announce(s)

    def _announce(self, s: Session) -> None:
        if not self._announced and self.peer_id is not None:
            self._announced = True
            self._events.append(CaughtUp(self.peer_id, s.live))

    def _session_over(self, now: float, *, flush: bool, graceful: bool) -> None:
        if self.state is not LinkState.CONNECTED:
            return
        self._step(_SessionOver)
        self._close_connection(now, flush=flush, graceful=graceful)

    def _close_connection(self, now: float, *, flush: bool, graceful: bool) -> None:
        self._flush_deadline = now + self.config.flush_timeout_s if flush else None
        self._events.append(CloseConnection(flush=flush, graceful=graceful))

    def _after_connection(self, now: float, *, ok: bool, live: bool) -> None:
        """Decide when to dial next (``dial`` links only)."""
        if self.state is not LinkState.WAITING:
            return
        if ok:
            self.failures = 0
        self._commit_cut = self._cuttable = False
        if live or not ok or self._verify_next or (self._verifying and self.config.live):
            # A live link redials after a backoff, reset only by a session that worked for
            # a while: one that breaks right after every handshake (resending batches each
            # time), or a peer that does not tail us (its session completes at once), must
            # not be redialed at the base delay forever. After a failed round, commits must
            # not cut the backoff short: a busy writer would redial a dead peer constantly.
            if ok and now - self._connected_at >= self._backoff.peek():
                self._backoff.reset()
            self._next_dial = now + self._backoff.next()
            return
        self._backoff.reset()
        s = self.session
        moved = s is not None and (s.stats.entries_sent + s.stats.entries_received) > 0
        cfg = self.config
        if moved:
            self._interval = max(cfg.min_interval, self._interval / 2)
        else:
            self._interval = min(cfg.sync_interval_s, self._interval * 2)
        self._round_end = now
        self._next_dial = now + self._interval * (0.8 + 0.2 * self.rng.random())
        self._cuttable = True

    def __repr__(self) -> str:
        return f"<PeerLink {self._name()} {self.role.value} {self.state.value}>"
