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

A repair inside a session (:class:`~crdt_kv.protocol.RepairWork`) ships current states
read by key rather than log slices: the seen-set of each state read is kept per
connection direction and key, and a repair apply on the other side takes the newest one
of each key it applies.
"""

from __future__ import annotations

from collections import deque

from crdt_kv.protocol import ApplyBatch, LogSlice, ReadLog, RepairWork, StorageRequest
from crdt_kv.repair.work import ApplyEntries, ReadEntries
from crdt_kv.sim.causal_oracle import CausalOracle
from crdt_kv.sim.links import Connection, SimLink
from crdt_kv.version import RawEntry

__all__ = ["Deliveries"]


class Deliveries:
    """Carries :class:`~crdt_kv.sim.causal_oracle.CausalOracle` seen-sets along with the
    batches that sessions move (see the module doc); a
    :class:`~crdt_kv.sim.links.StorageObserver`."""

    def __init__(self, oracle: CausalOracle) -> None:
        self.oracle = oracle
        self._queues: dict[tuple[int, int], deque[tuple[int, int, list[int]]]] = {}
        self._repairs: dict[tuple[int, int], dict[bytes, int]] = {}

    def performed(self, sl: SimLink, request: StorageRequest, result: object) -> None:
        """Node ``sl.node`` performed ``request`` on behalf of link ``sl``; it succeeded."""
        conn = sl.conn
        if isinstance(request, RepairWork):
            if conn is not None:
                self._repaired(sl, conn.id, request, result)
        elif isinstance(request, ReadLog):
            assert isinstance(result, LogSlice)
            if conn is None or not result.entries:
                return
            snaps = self.oracle.snapshot(sl.node.index, result.entries)
            queue = self._queues.setdefault((conn.id, sl.side), deque())
            queue.append((result.to_seq, len(result.entries), snaps))
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

    def _repaired(self, sl: SimLink, conn: int, request: RepairWork, result: object) -> None:
        work = request.work
        if isinstance(work, ReadEntries):
            assert isinstance(result, list)
            states: list[RawEntry] = result
            snaps = self.oracle.snapshot(sl.node.index, states)
            read = self._repairs.setdefault((conn, sl.side), {})
            read.update((e.key, s) for e, s in zip(states, snaps, strict=True))
        elif isinstance(work, ApplyEntries) and work.entries:
            read = self._repairs.get((conn, 1 - sl.side), {})
            snaps = [read.get(e.key, 0) for e in work.entries]
            self.oracle.deliver(sl.node.index, work.entries, snaps)

    def released(self, conn: Connection) -> None:
        """The connection is gone: what it still had queued will never be applied."""
        for side in (0, 1):
            self._queues.pop((conn.id, side), None)
            self._repairs.pop((conn.id, side), None)
