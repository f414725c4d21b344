"""What each replica has seen travels with the batches: the siblings oracle's bookkeeping
of deliveries.

The simulator performs every storage request of every session inline
(:meth:`~crdt_kv.sim.links.LinkShell.service`), so it sees a node's log read for sending
(:class:`~crdt_kv.protocol.ReadLog`) and a received batch applied
(:class:`~crdt_kv.protocol.ApplyBatch`). When a log is read, :class:`Deliveries` takes
the sender's seen-set of each key in the slice (a snapshot: the sets are immutable ints)
and queues it on the connection's direction; when the other side applies a batch, it
takes the queued slice with the same end sequence and adds those sets to the receiver's.

A session sends every slice it reads, in order, on a byte stream, so a connection's
applies take its queued slices in order; slices that never arrive (lost messages, a
session that failed before sending) are passed over and die with their connection. An
apply that raised changed nothing and delivers nothing.
"""

from __future__ import annotations

from collections import deque

from crdt_kv.protocol import ApplyBatch, LogSlice, ReadLog, StorageRequest
from crdt_kv.protocol.storage import RepairWork
from crdt_kv.repair.work import ApplyEntries
from crdt_kv.sim.causal_oracle import CausalOracle
from crdt_kv.sim.links import Connection, SimLink

__all__ = ["Deliveries"]


class Deliveries:
    """Carries :class:`~crdt_kv.sim.causal_oracle.CausalOracle` seen-sets along with the
    batches that sessions move (see the module doc); a
    :class:`~crdt_kv.sim.links.StorageObserver`."""

    def __init__(self, oracle: CausalOracle) -> None:
        self.oracle = oracle
        self._queues: dict[tuple[int, int], deque[tuple[int, int, list[int]]]] = {}

    def performed(self, sl: SimLink, request: StorageRequest, result: object) -> None:
        """Node ``sl.node`` performed ``request`` on behalf of link ``sl``; it succeeded."""
        conn = sl.conn
        if isinstance(request, ReadLog):
            assert isinstance(result, LogSlice)
            if conn is None or not result.entries:
                return
            snaps = self.oracle.snapshot(sl.node.index, result.entries)
            queue = self._queues.setdefault((conn.id, sl.side), deque())
            queue.append((result.to_seq, len(result.entries), snaps))
        elif isinstance(request, RepairWork) and isinstance(request.work, ApplyEntries):
            # A repair ships current states, not log slices: the receiver has seen what
            # the states show (their versions and what those superseded).
            self.oracle.absorb(sl.node.index, request.work.entries)
        elif isinstance(request, ApplyBatch) and request.entries:
            if conn is None:
                raise RuntimeError(f"{sl!r} applied a batch without a connection")
            sent = self._queues.get((conn.id, 1 - sl.side))
            to_seq, n = request.cursor[2], len(request.entries)
            while sent:
                seq, count, snaps = sent.popleft()
                if (seq, count) == (to_seq, n):
                    self.oracle.deliver(sl.node.index, request.entries, snaps)
                    return
            raise RuntimeError(
                f"oracle bookkeeping: {sl!r} applied a batch to seq {to_seq} that no log "
                f"read of its peer on connection {conn.id} produced"
            )

    def released(self, conn: Connection) -> None:
        """The connection is gone: what it still had queued will never be applied."""
        self._queues.pop((conn.id, 0), None)
        self._queues.pop((conn.id, 1), None)
