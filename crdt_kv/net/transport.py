"""Replicate a store over any trio stream: one ``once`` :class:`PeerLink` on a stream.

The protocol and its policy live in :mod:`crdt_kv.protocol`; :class:`LinkDriver` moves the
bytes and runs storage work on a worker thread. Sending and receiving run concurrently, so
two peers streaming batches at each other never deadlock on full buffers, even over
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

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from crdt_kv.net.driver import RECEIVE_SIZE, LinkDriver, StorageWorker, on_commit_anywhere
from crdt_kv.protocol import (
    BatchApplied,
    Connected,
    ConnectionClosed,
    Event,
    LinkConfig,
    LinkEvent,
    LinkRole,
    PeerLink,
    Session,
    SessionEnded,
    SessionFailed,
    SessionStats,
    SyncComplete,
)
from crdt_kv.store import Store

__all__ = ["RECEIVE_SIZE", "ReplicationResult", "replicate", "run_session"]

_SESSION_EVENTS = (Connected, BatchApplied, SyncComplete, SessionFailed, ConnectionClosed)


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
    ``state``): :func:`replicate` builds the session and calls this. The session's
    storage work is moved to a worker thread. ``on_event`` sees every protocol event as
    it happens; an exception from it ends the session and is re-raised.
    ``idle_timeout_s`` fails a session whose peer sends nothing for that long (a live
    session sends keep-alives a third of that apart, so it stays up while quiet);
    ``handshake_timeout_s`` bounds the wait for the peer's ``Hello``.
    """
    session.defer_storage = True
    config = LinkConfig(
        mode=session.mode,
        live=session.live,
        cluster_id=session.cluster_id,
        handshake_timeout_s=handshake_timeout_s,
        idle_timeout_s=idle_timeout_s,
        flush_timeout_s=flush_timeout_s,
    )
    link = PeerLink(
        session.replica,
        role=LinkRole.ONCE,
        config=config,
        rng=random.Random(0),
        now=trio.current_time(),
        defer_storage=True,
    )
    ended: list[SessionEnded] = []

    def see(ev: LinkEvent) -> None:
        if isinstance(ev, SessionEnded):
            ended.append(ev)
        elif on_event is not None and isinstance(ev, _SESSION_EVENTS):
            on_event(ev)

    worker = StorageWorker(session.replica)
    driver = LinkDriver(link, worker=worker, on_event=see)
    store = session.replica
    unsubscribe = None
    if session.live and isinstance(store, Store):
        unsubscribe = on_commit_anywhere(store, driver.local_changed)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await driver.run(stream, session=session)
            nursery.cancel_scope.cancel()
    finally:
        if unsubscribe is not None:
            unsubscribe()
    error = ended[-1].error if ended else link.error
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
