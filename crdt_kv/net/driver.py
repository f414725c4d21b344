"""Drive a :class:`~crdt_kv.protocol.PeerLink` with trio: move bytes, honour its timer,
run its storage work off the event loop. No replication policy lives here.

- :class:`~crdt_kv.net.storage_worker.StorageWorker` (re-exported here) performs the
  storage requests of one store's sessions off the event loop.
- :class:`LinkDriver` runs one link: it dials when the link says :class:`DialDue`, runs a
  receive task and a send task per connection (concurrently, so two peers streaming at
  each other never deadlock on full buffers), closes as :class:`CloseConnection` says,
  and calls ``handle_timer`` when ``get_timer`` comes due.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Awaitable, Callable

import trio

from crdt_kv.net.budget import ByteBudget
from crdt_kv.net.storage_worker import StorageWorker, on_commit_anywhere
from crdt_kv.protocol import (
    ApplyBatch,
    CloseConnection,
    DialDue,
    InState,
    LinkEvent,
    LinkState,
    OutState,
    PeerLink,
    ReadLog,
    Session,
    StorageRequest,
)

__all__ = [
    "HELLO_RECEIVE_SIZE",
    "RECEIVE_SIZE",
    "LinkDriver",
    "StorageWorker",
    "on_commit_anywhere",
]

log = logging.getLogger("crdt_kv.net")

RECEIVE_SIZE = 1 << 18
"""Bytes asked of the stream per read: several batches, so one wakeup applies several."""
HELLO_RECEIVE_SIZE = 1 << 14
"""Bytes asked per read until the peer's Hello was accepted (it must fit 16 KiB): an
unauthenticated connection costs us little memory."""

TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
ABORT_GRACE_S = 0.5
"""How long a broken or cancelled connection may still take to deliver a last Abort."""


class _Connection:
    """One open stream of a link and the state its two tasks share."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.wake = trio.Event()
        self.closing: CloseConnection | None = None
        self.broken: BaseException | None = None
        self.send_interrupted = False
        self.lost = False
        self.recv_scope: trio.CancelScope | None = None
        self.resume = trio.Event()
        """Set when reading may go on after the session paused it (``input_paused``)."""
        self.unsent = 0
        """Bytes handed to the stream and not yet sent (the peer is not reading)."""


class LinkDriver:
    """Runs one :class:`PeerLink` until it is closed (see the module doc).

    ``connect()`` opens a new stream to the peer when the link asks for one (None: the
    link never dials, as for an accepted connection). ``on_event`` sees every event the
    link reports that is not about moving bytes; it runs on the event loop and must not
    block. An exception from it closes the link and is re-raised by :meth:`run`.
    ``identify(stream)`` names the peer id a new connection authenticated (its TLS
    certificate's), which the session's Hello must then claim; None: no such check.
    ``budget``: the node's :class:`ByteBudget`, which this link's reads then respect.
    """

    def __init__(
        self,
        link: PeerLink,
        *,
        worker: StorageWorker,
        connect: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
        on_event: Callable[[LinkEvent], object] | None = None,
        identify: Callable[[trio.abc.Stream], str | None] | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.link = link
        self.budget = budget
        self.identify = identify
        self.worker = worker
        self.connect = connect
        self.on_event = on_event
        self._wake = trio.Event()
        self._conn: _Connection | None = None
        self._nursery: trio.Nursery | None = None
        self._storage_busy = False
        self._callback_error: BaseException | None = None
        self._token: int | None = None

    def wake(self) -> None:
        """Something changed for the link (call after feeding it from outside)."""
        self._wake.set()

    def local_changed(self) -> None:
        """Our store committed. The link's task is woken only if the commit can give it
        work: a live session whose peer does not tail us yet (catching up, or it never
        asked) pushes nothing. Every connection's task woke on every commit before: under
        bench_hostile's attack, hundreds of hostile sessions woke on each of a real peer's
        commits, in the very pass that was to push it on. Such a session's link is not
        even told: it would only redo bookkeeping its next input redoes, and telling 250
        links cost each commit 2 ms of the loop, on the live path."""
        link = self.link
        s = link.session
        quiet = (
            s is not None
            and s.live
            and s.out_state is not OutState.LIVE
            and link.config.push_delay_s <= 0
        )
        if quiet and link.state is LinkState.CONNECTED:
            return  # the commit gives the session nothing to do (``Session.local_changed``)
        if not link.local_changed(trio.current_time()) or quiet:
            return
        self._wake.set()

    async def run(
        self, stream: trio.abc.Stream | None = None, *, session: Session | None = None
    ) -> None:
        """Run until the link closes. ``stream``: an already open connection to use at
        once (with ``session``, if the caller built one)."""
        link = self.link
        budget = self.budget
        token = self._token = budget.register(self._held) if budget is not None else None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if stream is not None:
                    link.connection_made(
                        trio.current_time(), session=session, peer_identity=self._identity(stream)
                    )
                    self._start_connection(stream)
                await self._main_loop()
                nursery.cancel_scope.cancel()
        finally:
            if budget is not None and token is not None:
                budget.unregister(token)
            self._token = None
            await self._shutdown()
        if self._callback_error is not None:
            raise self._callback_error

    # --- the loop -------------------------------------------------------------------------

    async def _main_loop(self) -> None:
        link = self.link
        while True:
            self._act()
            if link.closed and self._conn is None:
                return
            timer = link.get_timer()
            now = trio.current_time()
            if timer is not None and timer <= now:
                link.handle_timer(now)
                continue
            with trio.move_on_at(math.inf if timer is None else timer):
                await self._wake.wait()
            self._wake = trio.Event()

    def _act(self) -> None:
        """Take the link's events, storage requests and bytes, and act on them, until a
        round of it produced nothing new (an inline storage result may add events)."""
        link = self.link
        while True:
            self._take_events()
            inline = False
            while not self._storage_busy:
                request = link.storage_request()
                if request is None:
                    break
                self._storage_busy = True
                if request.light and self._inline(request):
                    inline = True
                elif self._must_wait(request):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._submit_when_room, request)
                else:
                    done = functools.partial(self._stored, request)
                    self.worker.submit(request, done, urgent=self.urgent(request))
            if not inline:
                break
        conn = self._conn
        if conn is not None and link.session is not None and link.session.has_output:
            conn.wake.set()
        if conn is not None and not link.input_paused:
            conn.resume.set()
        self._report()

    def _take_events(self) -> None:
        link = self.link
        while True:
            ev = link.next_event()
            if ev is None:
                return
            if isinstance(ev, DialDue):
                assert self._nursery is not None
                self._nursery.start_soon(self._dial)
            elif isinstance(ev, CloseConnection):
                self._close(ev)
            elif self.on_event is not None:
                try:
                    self.on_event(ev)
                except Exception as exc:
                    if self._callback_error is None:
                        self._callback_error = exc
                    link.close(trio.current_time(), f"local failure: {type(exc).__name__}")

    def urgent(self, request: StorageRequest) -> bool:
        """Whether ``request`` is live replication, which the storage worker performs
        before catch-up work: a light one (a live push's few entries, a tail read), or an
        apply while our receiving side tails the peer live, however many entries it has
        (live pushes pile up into large batches exactly when the node is slow)."""
        if request.light:
            return True
        s = self.link.session
        return isinstance(request, ApplyBatch) and s is not None and s.in_state is InState.LIVE

    def _inline(self, request: StorageRequest) -> bool:
        """Perform a light request (a live push or tail read: a few entries) on the loop
        if that cannot block it: two thread hops cost more than the work, and under load
        each costs a pass of a busy event loop. A store's commit lock is tried, never
        waited for (another thread's catch-up read or commit may hold it); a replica
        without one is performed inline only while the storage worker is idle."""
        replica = self.link.replica
        try_lock = getattr(replica, "try_commit_lock", None)
        if try_lock is None:
            if not self.worker.idle:
                return False
            self._perform_inline(request)
            return True
        if not try_lock():
            return False
        try:
            self._perform_inline(request)
        finally:
            replica.release_commit_lock()  # type: ignore[attr-defined]
        return True

    def _perform_inline(self, request: StorageRequest) -> None:
        try:
            result = request.perform(self.link.replica)
        except Exception as exc:
            self._storage_busy = False
            self.link.storage_failed(request, exc, trio.current_time())
        else:
            self._storage_busy = False
            self.link.storage_done(request, result, trio.current_time())

    def _stored(self, request: StorageRequest, result: object, error: BaseException | None) -> None:
        self._storage_busy = False
        now = trio.current_time()
        if error is None:
            self.link.storage_done(request, result, now)
        else:
            self.link.storage_failed(request, error, now)
        self._act()
        self._wake.set()

    def _held(self) -> int:
        """What this link holds for the budget: the session's received, decoded and queued
        bytes (:attr:`PeerLink.held_bytes`) plus those being sent now."""
        conn = self._conn
        return self.link.held_bytes + (conn.unsent if conn is not None else 0)

    def _send_timeout(self) -> float:
        """How long a send may wait for the peer to read: a peer that stops reading while
        it keeps sending (keep-alives) would otherwise pin what we queued for it."""
        cfg = self.link.config
        limits = [t for t in (cfg.live_idle_timeout_s, cfg.idle_timeout_s) if t is not None]
        return max(limits) if limits else math.inf

    def _must_wait(self, request: StorageRequest) -> bool:
        """Whether ``request`` (a catch-up read: it adds a batch to what we hold for the
        peer) waits for the budget: a peer that does not read holds at most what one batch
        adds while others hold the rest."""
        budget = self.budget
        if budget is None or not isinstance(request, ReadLog) or request.light:
            return False
        held = self._held()
        return held >= budget.floor and budget.held + request.max_bytes > budget.limit

    async def _submit_when_room(self, request: StorageRequest) -> None:
        assert self.budget is not None
        if isinstance(request, ReadLog):
            await self.budget.read_size(self._held, request.max_bytes, token=self._token)
        self.worker.submit(
            request, functools.partial(self._stored, request), urgent=self.urgent(request)
        )

    def _report(self) -> None:
        """Tell the budget what this link holds now (O(1); it wakes waiters if less)."""
        if self.budget is not None and self._token is not None:
            self.budget.report(self._token)

    async def _dial(self) -> None:
        assert self.connect is not None
        try:
            stream = await self.connect()
        except Exception as exc:
            self.link.connection_failed(trio.current_time(), exc)
            self._wake.set()
            return
        if self.link.closed:
            await trio.aclose_forcefully(stream)
            return
        self.link.connection_made(trio.current_time(), peer_identity=self._identity(stream))
        self._start_connection(stream)
        self._wake.set()

    def _identity(self, stream: trio.abc.Stream) -> str | None:
        return None if self.identify is None else self.identify(stream)

    # --- one connection -------------------------------------------------------------------

    def _start_connection(self, stream: trio.abc.Stream) -> None:
        conn = self._conn = _Connection(stream)
        assert self._nursery is not None
        self._nursery.start_soon(self._connection_main, conn)

    async def _connection_main(self, conn: _Connection) -> None:
        with conn.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, conn)
                await self._receive_loop(conn)
                if conn.closing is None or not conn.closing.flush:
                    nursery.cancel_scope.cancel()
        await self._finish(conn)

    async def _receive_loop(self, conn: _Connection) -> None:
        link = self.link
        while conn.closing is None:
            if link.input_paused:  # frames wait for storage: let the peer's sends back up
                conn.resume = trio.Event()
                await conn.resume.wait()
                continue
            s = link.session
            size = RECEIVE_SIZE if s is not None and s.remote is not None else HELLO_RECEIVE_SIZE
            with trio.CancelScope() as scope:
                conn.recv_scope = scope
                if conn.broken is not None:
                    scope.deadline = trio.current_time() + ABORT_GRACE_S
                try:
                    if self.budget is not None:
                        size = await self.budget.read_size(
                            lambda: link.held_bytes, size, token=self._token
                        )
                    data = await conn.stream.receive_some(size)
                except TRANSPORT_ERRORS as exc:
                    conn.broken = conn.broken or exc
                    return
            conn.recv_scope = None
            if scope.cancelled_caught:
                return
            link.receive_data(bytes(data), trio.current_time())
            self._act()
            self._wake.set()
            if not data:
                return

    async def _send_loop(self, conn: _Connection) -> None:
        link = self.link
        try:
            while True:
                out = link.data_to_send() if not conn.lost else b""
                if out:
                    conn.send_interrupted = True
                    conn.unsent = len(out)
                    self._report()
                    with trio.move_on_after(self._send_timeout()) as stall:
                        await conn.stream.send_all(out)
                    conn.unsent = 0
                    if stall.cancelled_caught:
                        raise trio.BrokenResourceError(
                            f"peer read nothing of our data for {self._send_timeout():g} s"
                        )
                    conn.send_interrupted = False
                    self._report()
                    continue
                if conn.closing is not None:
                    return
                await conn.wake.wait()
                conn.wake = trio.Event()
        except TRANSPORT_ERRORS as exc:
            conn.broken = conn.broken or exc
            # The peer may have sent an Abort explaining why: read a little longer.
            scope = conn.recv_scope
            if scope is not None:
                scope.deadline = min(scope.deadline, trio.current_time() + ABORT_GRACE_S)

    def _close(self, ev: CloseConnection) -> None:
        conn = self._conn
        if conn is None:
            return
        conn.closing = ev
        conn.resume.set()
        if conn.recv_scope is not None:
            conn.recv_scope.cancel()
        if not ev.flush:
            conn.scope.cancel()
        conn.wake.set()

    async def _finish(self, conn: _Connection) -> None:
        """Close the stream as the link asked and report the connection lost."""
        if trio.current_effective_deadline() == -math.inf:
            return  # cancelled from outside: _shutdown closes the link and the stream
        closing = conn.closing
        graceful = (
            closing is not None
            and closing.graceful
            and conn.broken is None
            and not conn.send_interrupted
        )
        if graceful:
            with trio.move_on_after(ABORT_GRACE_S, shield=True):
                try:
                    await conn.stream.aclose()
                except TRANSPORT_ERRORS:
                    graceful = False
        if not graceful:
            await trio.aclose_forcefully(conn.stream)
        conn.lost = True
        if self._conn is conn:
            self._conn = None
        error = conn.broken if closing is None else None
        self.link.connection_lost(trio.current_time(), error)
        self._wake.set()
        self._report()

    async def _shutdown(self) -> None:
        """Cancelled or done: close the link and, best effort, tell the peer why."""
        link = self.link
        conn = self._conn
        link.close(trio.current_time())
        while link.next_event() is not None:
            pass
        if conn is None or conn.lost:
            return
        leftover = link.data_to_send()
        if leftover and conn.broken is None and not conn.send_interrupted:
            with trio.move_on_after(ABORT_GRACE_S, shield=True):
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await conn.stream.send_all(leftover)
        await trio.aclose_forcefully(conn.stream)
        conn.lost = True
        self._conn = None
        link.connection_lost(trio.current_time())
