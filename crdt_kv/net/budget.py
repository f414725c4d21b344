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

The total is kept, not summed: each holder's last reported size is cached, and a
connection reports its own (:meth:`ByteBudget.report`, O(1)) whenever the bytes it holds
may have changed. Summing 256 holders on every read of every connection was, under attack,
the largest single cost of the event loop (bench_hostile).
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
    token: int | None
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
        self._sizes: dict[int, int] = {}
        self._total = 0
        self._next = 0
        self._waiters: dict[_Waiter, None] = {}  # oldest first
        self._sweep_due = False
        self._recount_due = False
        self.waits = 0
        """Times a connection stopped reading because the budget was spent."""

    def register(self, held: Callable[[], int]) -> int:
        """Count ``held()`` from now on (as last reported: see :meth:`report`); returns the
        token for :meth:`report` and :meth:`unregister`."""
        self._next += 1
        self._holders[self._next] = held
        size = self._sizes[self._next] = held()
        self._total += size
        return self._next

    def report(self, token: int) -> None:
        """The holder of ``token`` may hold another amount now: take its ``held()`` (O(1));
        if it holds less, wake the waiters there is now room for."""
        held = self._holders.get(token)
        if held is None:
            return
        size = held()
        before = self._sizes[token]
        if size != before:
            self._sizes[token] = size
            self._total += size - before
            if size < before:
                self._wake_soon()

    def unregister(self, token: int) -> None:
        """Stop counting a holder (idempotent); its bytes are released."""
        if self._holders.pop(token, None) is not None:
            self._total -= self._sizes.pop(token)
            self._wake_soon()

    @property
    def held(self) -> int:
        """Bytes held by every registered connection, as last reported."""
        return self._total

    def recount(self) -> int:
        """Take every holder's ``held()`` again (O(holders)); returns the total."""
        total = 0
        for token, held in self._holders.items():
            size = self._sizes[token] = held()
            total += size
        self._total = total
        return total

    def _grant(self, mine: int, want: int, total: int) -> int:
        """What a connection holding ``mine`` may read of ``want`` with ``total`` held in
        all (0: it must wait)."""
        if mine + want <= self.floor or total + want <= self.limit:
            return want
        return max(0, self.floor - mine)

    def released(self) -> None:
        """Some holders, not saying which, may hold less now: take every holder's size
        again (:meth:`recount`) and wake, soon, the waiting connections that may read.
        A connection that knows its own token calls :meth:`report` instead."""
        if not self._waiters:
            self.recount()
            return
        self._recount_due = True  # once, in the sweep, however many releases come first
        self._wake_soon()

    def _wake_soon(self) -> None:
        """Wake, soon, the waiting connections there is room for.

        Wake-ups are coalesced: one sweep runs after the tasks running now (trio's
        ``run_sync_soon``), however many connections released meanwhile; with 256
        connections each release summing all holders was an eighth of the event loop under
        attack (bench_hostile). The sweep takes the kept total and adds each grant to it,
        oldest waiter first; from the first waiter there is no room for on, a waiter is
        woken only if it now holds less than the floor (its frame was applied meanwhile),
        with what reaches the floor, as a newcomer would get at once: the budget is not
        handed past an older waiter, and small frames never wait behind one."""
        if not self._waiters or self._sweep_due:
            return
        self._sweep_due = True
        trio.lowlevel.current_trio_token().run_sync_soon(self._sweep)

    def _sweep(self) -> None:
        self._sweep_due = False
        if not self._waiters:
            return
        if self._recount_due:
            self._recount_due = False
            self.recount()
        total = self._total
        stuck = False
        sizes = self._sizes
        for waiter in list(self._waiters):
            token = waiter.token
            mine = waiter.held() if token is None else sizes.get(token, 0)
            if stuck:  # behind one there is no room for: only its floor, if it has room
                grant = max(0, self.floor - mine)
            else:
                grant = self._grant(mine, waiter.want, total)
                stuck = not grant
            if grant:
                total += grant
                waiter.grant = grant
                del self._waiters[waiter]
                waiter.woken.set()

    async def read_size(
        self, held: Callable[[], int], want: int, *, token: int | None = None
    ) -> int:
        """How many bytes the connection holding ``held()`` may read now (at most ``want``),
        waiting while it holds :attr:`floor` or more and the budget is spent. While others
        wait, the budget is spent: a newcomer takes at most its floor or queues behind
        them, without summing every holder again.

        ``token``: the connection's :meth:`register` token. While it waits, a sweep then
        takes what it last reported (:meth:`report`) instead of calling ``held()``: with
        hundreds of connections waiting, calling each on every sweep was, under attack, a
        tenth of the event loop (bench_hostile)."""
        mine = held()
        if mine + want <= self.floor:
            return want
        if self._waiters:
            grant = max(0, self.floor - mine)
            self._wake_soon()  # a sweep will find whether there is room for the queue
        else:
            grant = self._grant(mine, want, self._total)
        if grant:
            return grant
        self.waits += 1
        waiter = _Waiter(held, want, token if token in self._holders else None)
        self._waiters[waiter] = None
        try:
            await waiter.woken.wait()
        finally:
            self._waiters.pop(waiter, None)
        return waiter.grant
