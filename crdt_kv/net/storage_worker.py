"""Storage work off the event loop: :class:`StorageWorker` performs the storage requests
of one store's sessions on worker threads (``trio.to_thread``), so an fsync or a long log
scan never stalls the event loop, and live replication's requests never queue behind
catch-up work. :func:`on_commit_anywhere` brings a store's commit notifications to the
loop from whichever thread committed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import trio

from crdt_kv.protocol import CollectGarbage, Replica, StorageRequest
from crdt_kv.store import Store

__all__ = ["StorageWorker", "on_commit_anywhere"]

log = logging.getLogger("crdt_kv.net")

_Done = Callable[[object, BaseException | None], None]
_Work = StorageRequest | CollectGarbage


def on_commit_anywhere(store: Store, callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback()`` on the event loop after every commit of ``store``, whichever
    thread committed (a storage worker or the loop itself); returns an unsubscriber.

    Must be called from inside the trio run that ``callback`` belongs to.
    """
    token = trio.lowlevel.current_trio_token()
    loop_thread = threading.get_ident()

    def on_commit(_seq: int) -> None:
        if threading.get_ident() == loop_thread:
            callback()
        else:
            token.run_sync_soon(callback)

    return store.on_commit(on_commit)


class StorageWorker:
    """Runs storage requests for one replica on two worker threads, one per lane.

    Start :meth:`run` in a nursery; :meth:`submit` from the event-loop thread. ``done``
    callbacks run on the event-loop thread with ``(result, None)`` or ``(None, error)``.

    Urgent requests (live replication: see :meth:`crdt_kv.net.driver.LinkDriver.urgent`)
    and the others (catch-up log reads and applies, repairs, collections) each have a
    queue, performed in the order submitted, and a thread of their own: peers pulling
    whole logs (dozens at once, hostile or not) never put a live push behind their reads;
    it waits at most for the store's commit lock, which a catch-up read takes one chunk of
    the log at a time. (With one thread taking turns, a live push under bench_hostile's
    attack waited 80-260 ms for its turn and the hand-overs.) A link has at most one
    request queued, so its own requests keep their order; those of different links are
    independent reads and merges, which the store serializes with its commit lock as it
    does any two threads' calls.
    """

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.performed = 0
        self._pending = 0
        self._urgent: deque[tuple[_Work, _Done]] = deque()
        self._other: deque[tuple[_Work, _Done]] = deque()
        self._queued = {id(self._urgent): trio.Event(), id(self._other): trio.Event()}

    @property
    def idle(self) -> bool:
        """Nothing queued or being performed."""
        return self._pending == 0

    def submit(self, request: _Work, done: _Done, *, urgent: bool | None = None) -> None:
        """Queue ``request``; ``done`` is called once it was performed. ``urgent``
        (default: ``request.light``) puts it in the lane of live replication."""
        self._pending += 1
        urgent = request.light if urgent is None else urgent
        lane = self._urgent if urgent else self._other
        lane.append((request, done))
        self._queued[id(lane)].set()

    async def run(self) -> None:
        """Perform queued requests until cancelled (the one in progress in each lane
        finishes first)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_lane, self._urgent)
            await self._run_lane(self._other)

    async def _run_lane(self, lane: deque[tuple[_Work, _Done]]) -> None:
        replica = self.replica
        while True:
            if not lane:
                queued = self._queued[id(lane)] = trio.Event()
                await queued.wait()
                continue
            request, done = lane.popleft()
            result: object = None
            error: Exception | None = None
            try:
                result = await trio.to_thread.run_sync(request.perform, replica)
            except Exception as exc:
                error = exc
            else:
                self.performed += 1
            self._pending -= 1
            try:
                done(result, error)
            except Exception:  # one link's bug must not stop every link's storage work
                log.exception("storage result handler for %r failed", request)
