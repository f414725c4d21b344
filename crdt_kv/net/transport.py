"""Replicate a store over any trio stream: the thin I/O shell around :class:`Session`.

The protocol lives in :mod:`crdt_kv.protocol` as a pure state machine. This module only
moves bytes: a receive loop feeds :meth:`Session.receive_data`, and a sender task drains
:meth:`Session.data_to_send` whenever something may have been queued (bytes received, a
local commit in live mode). Sending and receiving run concurrently, so two peers streaming
batches at each other never deadlock on full buffers, even over
:func:`trio.testing.lockstep_stream_pair`.

Exit rules (every path unsubscribes from the store and closes the stream):

- ``SyncComplete``: flush what is queued (our last ``Ack``), close gracefully, return.
- ``SessionFailed``: flush the ``Abort`` (bounded by ``flush_timeout_s``), close, raise the
  session's error (a :class:`ProtocolError` subclass or :class:`ClockSkewError`).
- The peer ends the stream: fine if the sync had completed, or if this is a live session
  that had caught up (the peer left); otherwise :class:`RemoteProtocolError`.
- The transport breaks, or the peer is silent past a timeout: :class:`RemoteProtocolError`
  naming the peer, chained to the transport's exception.
- Cancellation: the session is closed (an unfinished one queues an ``Abort``, sent
  best-effort within half a second unless a send was interrupted mid-frame), the stream is
  closed forcefully, and ``Cancelled`` propagates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.protocol import (
    ConnectionClosed,
    ConnState,
    Event,
    InState,
    OutState,
    Session,
    SessionFailed,
    SessionStats,
    SyncComplete,
)
from crdt_kv.store import Store

__all__ = ["RECEIVE_SIZE", "ReplicationResult", "replicate", "run_session"]

RECEIVE_SIZE = 1 << 18
"""Bytes asked of the stream per read: several batches, so one wakeup applies several."""

_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_ABORT_GRACE_S = 0.5


@dataclass(frozen=True, slots=True)
class ReplicationResult:
    """How a session ended: who the peer was, whether it completed, and its counters.

    ``cursor`` is the last sequence of the peer's log applied here (also stored durably in
    the store, see :meth:`Store.cursor`). ``stats`` is the session's own counter object.
    """

    peer_id: str | None
    incarnation: bytes | None
    complete: bool
    cursor: int
    stats: SessionStats


def _peer_name(session: Session) -> str:
    return repr(session.remote.peer_id) if session.remote is not None else "(not identified)"


def _caught_up(session: Session) -> bool:
    """Every direction ended or was tailing live: a peer leaving now loses us nothing."""
    return (
        session.remote is not None
        and session.in_state in (InState.DISABLED, InState.DONE, InState.LIVE)
        and session.out_state in (OutState.DISABLED, OutState.DONE, OutState.LIVE)
    )


class _Runner:
    """The two loops of one session and the bookkeeping they share."""

    def __init__(
        self,
        session: Session,
        stream: trio.abc.Stream,
        *,
        on_event: Callable[[Event], object] | None,
        idle_timeout_s: float | None,
        handshake_timeout_s: float | None,
        flush_timeout_s: float,
    ) -> None:
        self.session = session
        self.stream = stream
        self.on_event = on_event
        self.idle = math.inf if idle_timeout_s is None else idle_timeout_s
        self.handshake = math.inf if handshake_timeout_s is None else handshake_timeout_s
        self.flush_timeout = flush_timeout_s
        self.wake = trio.Event()
        self.changed = False
        self.finishing = False
        self.send_interrupted = False
        self.transport_broken = False
        self.error: BaseException | None = None
        self.sender_done = trio.Event()
        self.recv_scope: trio.CancelScope | None = None

    def kick(self) -> None:
        self.wake.set()

    def on_commit(self, _seq: int) -> None:
        # Called synchronously inside the store's commit: only flag and wake, never send.
        self.changed = True
        self.wake.set()

    def _set_error(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    async def send_loop(self) -> None:
        s = self.session
        try:
            while True:
                if not self.finishing:
                    await self.wake.wait()
                    self.wake = trio.Event()
                if self.changed and not self.finishing:
                    self.changed = False
                    s.local_changed()
                out = s.data_to_send()
                if out:
                    self.send_interrupted = True
                    await self.stream.send_all(out)
                    self.send_interrupted = False
                elif self.finishing:
                    return
        except _TRANSPORT_ERRORS as exc:
            self.transport_broken = True
            err = RemoteProtocolError(f"sending to peer {_peer_name(s)} failed: {exc!r}")
            err.__cause__ = exc
            self._set_error(err)
            # The peer may have sent an Abort explaining why: read a little longer.
            scope = self.recv_scope
            if scope is not None:
                scope.deadline = min(scope.deadline, trio.current_time() + _ABORT_GRACE_S)
        finally:
            self.sender_done.set()

    async def receive_loop(self) -> bool:
        """Feed the session until it ends; return whether queued bytes should be flushed."""
        s = self.session
        start = trio.current_time()
        while True:
            deadline = trio.current_time() + self.idle
            if s.remote is None:
                deadline = min(deadline, start + self.handshake)
            if self.transport_broken:
                deadline = min(deadline, trio.current_time() + _ABORT_GRACE_S)
            with trio.CancelScope(deadline=deadline) as scope:
                self.recv_scope = scope
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except _TRANSPORT_ERRORS as exc:
                    self.transport_broken = True
                    err = RemoteProtocolError(
                        f"receiving from peer {_peer_name(s)} failed: {exc!r}"
                    )
                    err.__cause__ = exc
                    self._set_error(err)
                    return False
            self.recv_scope = None
            if scope.cancelled_caught:
                if self.transport_broken:
                    return False
                what = "said nothing" if s.remote is None else "sent nothing"
                limit = self.handshake if s.remote is None else self.idle
                self._set_error(RemoteProtocolError(f"peer {_peer_name(s)} {what} for {limit:g} s"))
                s.close("idle timeout")
                return True
            try:
                events = s.receive_data(bytes(data))
                self.kick()
                for ev in events:
                    if self.on_event is not None:
                        self.on_event(ev)
            except Exception as exc:  # the store or an event callback failed: end the session
                self._set_error(exc)
                s.close(f"local failure: {type(exc).__name__}")
                return True
            for ev in events:
                if isinstance(ev, SessionFailed):
                    self._set_error(ev.error)
                    return not ev.by_peer
                if isinstance(ev, SyncComplete):
                    return True
                if isinstance(ev, ConnectionClosed):
                    if not (ev.complete or (s.live and _caught_up(s))):
                        self._set_error(
                            RemoteProtocolError(
                                f"peer {_peer_name(s)} closed the stream before the sync completed"
                            )
                        )
                    return False
            if not data:
                return False

    async def run(self) -> None:
        s = self.session
        if s.state is ConnState.IDLE:
            s.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.send_loop)
            self.kick()
            flush = await self.receive_loop()
            if flush and not self.transport_broken:
                self.finishing = True
                self.kick()
                with trio.move_on_after(self.flush_timeout):
                    await self.sender_done.wait()
            nursery.cancel_scope.cancel()

    async def cleanup(self, *, graceful: bool) -> None:
        s = self.session
        if not s.closed:
            s.close("closed by local side")
        leftover = s.data_to_send()
        if leftover and not (self.send_interrupted or self.transport_broken):
            with trio.move_on_after(_ABORT_GRACE_S, shield=True):
                try:
                    await self.stream.send_all(leftover)
                except _TRANSPORT_ERRORS:
                    graceful = False
        if graceful:
            try:
                await self.stream.aclose()
            except _TRANSPORT_ERRORS:
                await trio.aclose_forcefully(self.stream)
        else:
            await trio.aclose_forcefully(self.stream)


async def run_session(
    session: Session,
    stream: trio.abc.Stream,
    *,
    on_event: Callable[[Event], object] | None = None,
    idle_timeout_s: float | None = None,
    handshake_timeout_s: float | None = None,
    flush_timeout_s: float = 10.0,
) -> ReplicationResult:
    """Drive an existing ``session`` over ``stream`` until it ends (see the module doc).

    For callers that want to watch the session while it runs (its ``stats``, ``lag``,
    ``state``): :func:`replicate` builds the session and calls this. ``on_event`` sees
    every protocol event as it happens; an exception from it ends the session and is
    re-raised. ``idle_timeout_s`` fails a session whose peer sends nothing for that long
    (leave it ``None`` for live sessions, which are legitimately quiet);
    ``handshake_timeout_s`` bounds the wait for the peer's ``Hello``.
    """
    runner = _Runner(
        session,
        stream,
        on_event=on_event,
        idle_timeout_s=idle_timeout_s,
        handshake_timeout_s=handshake_timeout_s,
        flush_timeout_s=flush_timeout_s,
    )
    unsubscribe = session.store.on_commit(runner.on_commit) if session.live else None
    graceful = False
    try:
        await runner.run()
        graceful = runner.error is None and not runner.send_interrupted
    finally:
        if unsubscribe is not None:
            unsubscribe()
        await runner.cleanup(graceful=graceful)
    error = session.error or runner.error
    if error is not None:
        raise error
    remote = session.remote
    return ReplicationResult(
        peer_id=remote.peer_id if remote is not None else None,
        incarnation=remote.incarnation if remote is not None else None,
        complete=session.complete,
        cursor=session.cursor,
        stats=session.stats,
    )


async def replicate(
    store: Store,
    stream: trio.abc.Stream,
    *,
    mode: str = "both",
    live: bool = False,
    cluster_id: str = "default",
    on_event: Callable[[Event], object] | None = None,
    idle_timeout_s: float | None = None,
    handshake_timeout_s: float | None = None,
    **session_options: Any,
) -> ReplicationResult:
    """Replicate ``store`` with the peer at the other end of ``stream``; both ends call this.

    ``mode``: ``"both"``, ``"push"`` (only send our changes) or ``"pull"`` (only receive);
    data flows from one side to the other only if the sender may send and the receiver
    wants to receive. Without ``live`` this returns once both directions caught up (each
    side resumes from the cursor stored with the last batch it applied, so a repeated call
    sends only what changed since). With ``live`` the session then keeps pushing every new
    commit of ``store`` (local writes and entries applied from third peers, which makes
    relays work) until cancelled or the peer leaves. ``session_options`` go to
    :class:`~crdt_kv.protocol.Session` (``max_batch_entries``, ``max_batch_bytes``,
    ``max_frame_bytes``, ``window``). The stream is always closed on return.

    Raises the session's :class:`ProtocolError` (or :class:`ClockSkewError`) after telling
    the peer why; nothing of a rejected batch is applied and the next session resumes from
    the durable cursor.
    """
    session = Session(store, mode=mode, live=live, cluster_id=cluster_id, **session_options)
    return await run_session(
        session,
        stream,
        on_event=on_event,
        idle_timeout_s=idle_timeout_s,
        handshake_timeout_s=handshake_timeout_s,
    )
