"""The node-wide budget of bytes received from peers and not yet done with.

Each connection buffers at most one frame (the frame limit is checked before buffering)
and holds at most one decoded batch while storage applies it, but a node has up to 256
inbound connections: 256 peers each sending a frame of the 8 MiB default would hold 2 GiB.
The budget bounds the sum. While it is spent, a connection holding :data:`FLOOR_BYTES` or
more stops reading until others release bytes, and one holding less reads only up to the
floor, so small frames (live pushes, keep-alives, Hellos) keep flowing whatever large
frames are stuck: a real peer's live sync is not starved by connections pinning memory.
A connection that pins a partial frame without completing it is closed by its idle
timeout, which counts only complete frames (:meth:`PeerLink.receive_data`), also while it
waits for the budget: a budget spent for that long by pinned frames is freed by dropping
them, and a real peer dropped so reconnects and resumes from its cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

__all__ = ["DEFAULT_MAX_BUFFERED_BYTES", "FLOOR_BYTES", "ByteBudget"]

DEFAULT_MAX_BUFFERED_BYTES = 64 << 20
"""The default budget: room for several full-size frames at once."""
FLOOR_BYTES = 64 << 10
"""What a connection may always hold: its small frames never wait for the budget."""


@dataclass(eq=False, slots=True)
class _Waiter:
    held: Callable[[], int]
    want: int
    woken: trio.Event = field(default_factory=trio.Event)
    grant: int = 0


class ByteBudget:
    """Bytes held by all connections of a node (each reported by a ``held()`` callable),
    against ``limit``. Connections ask :meth:`read_size` before each read and call
    :meth:`released` when they may have released bytes."""

    def __init__(self, limit: int = DEFAULT_MAX_BUFFERED_BYTES, *, floor: int = FLOOR_BYTES):
        if limit < floor:
            raise ValueError(f"max_buffered_bytes must be at least {floor}, got {limit}")
        self.limit = limit
        self.floor = floor
        self._holders: dict[int, Callable[[], int]] = {}
        self._next = 0
        self._waiters: dict[_Waiter, None] = {}  # oldest first
        self._sweep_due = False
        self.waits = 0
        """Times a connection stopped reading because the budget was spent."""

    def register(self, held: Callable[[], int]) -> int:
        """Count ``held()`` from now on; returns the token for :meth:`unregister`."""
        self._next += 1
        self._holders[self._next] = held
        return self._next

    def unregister(self, token: int) -> None:
        """Stop counting a holder (idempotent); its bytes are released."""
        if self._holders.pop(token, None) is not None:
            self.released()

    @property
    def held(self) -> int:
        """Bytes held now by every registered connection."""
        return sum(held() for held in self._holders.values())

    def _grant(self, mine: int, want: int, total: int) -> int:
        """What a connection holding ``mine`` may read of ``want`` with ``total`` held in
        all (0: it must wait)."""
        if mine + want <= self.floor or total + want <= self.limit:
            return want
        return max(0, self.floor - mine)

    def released(self) -> None:
        """Some holder may hold less now: wake, soon, the waiting connections that may read.

        Releases are coalesced: one sweep runs after the tasks running now (trio's
        ``run_sync_soon``), however many connections released meanwhile; with 256
        connections each release summing all holders was an eighth of the event loop under
        attack (bench_hostile). The sweep sums the total once and adds each grant to it,
        oldest waiter first: a waiter left without room is not woken."""
        if not self._waiters or self._sweep_due:
            return
        self._sweep_due = True
        trio.lowlevel.current_trio_token().run_sync_soon(self._sweep)

    def _sweep(self) -> None:
        self._sweep_due = False
        if not self._waiters:
            return
        total = self.held
        for waiter in list(self._waiters):
            grant = self._grant(waiter.held(), waiter.want, total)
            if grant:
                total += grant
                waiter.grant = grant
                del self._waiters[waiter]
                waiter.woken.set()

    async def read_size(self, held: Callable[[], int], want: int) -> int:
        """How many bytes the connection holding ``held()`` may read now (at most ``want``),
        waiting while it holds :attr:`floor` or more and the budget is spent. While others
        wait, the budget is spent: a newcomer takes at most its floor or queues behind
        them, without summing every holder again."""
        mine = held()
        if mine + want <= self.floor:
            return want
        if self._waiters:
            grant = max(0, self.floor - mine)
            self.released()  # a sweep will find whether there is room for the queue
        else:
            grant = self._grant(mine, want, self.held)
        if grant:
            return grant
        self.waits += 1
        waiter = _Waiter(held, want)
        self._waiters[waiter] = None
        try:
            await waiter.woken.wait()
        finally:
            self._waiters.pop(waiter, None)
        return waiter.grant
