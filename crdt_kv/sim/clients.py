"""Client operations on simulated nodes and what becomes durable when (a mixin of
:class:`~crdt_kv.sim.runner.Simulation`): acknowledged writes go to the oracle at once,
or, with ``sync_writes=False``, only once a node's volatile disk wrote them back.

In ``siblings`` mode every acknowledged write goes to the
:class:`~crdt_kv.sim.causal_oracle.CausalOracle` at once (what its writer had seen is
fixed when it writes) and counts as surviving once it is durable somewhere."""

from __future__ import annotations

import random
from typing import Any

import cbor2

from crdt_kv.errors import ClockSkewError, CorruptionError
from crdt_kv.layout import DATA, unpack_record
from crdt_kv.sim.causal_oracle import CausalOracle
from crdt_kv.sim.clocks import VirtualTime
from crdt_kv.sim.config import SimConfig
from crdt_kv.sim.disk import SimDisk
from crdt_kv.sim.nodes import UP, SimNode
from crdt_kv.sim.oracle import Oracle
from crdt_kv.sim.workload import Op
from crdt_kv.store import Store
from crdt_kv.version import Entry, Version

__all__ = ["Clients"]


class Clients:
    """Writes, reads and disk write-back; the simulation provides the state."""

    cfg: SimConfig
    nodes: list[SimNode]
    oracle: Oracle
    causal: CausalOracle | None
    c: dict[str, int]
    vt: VirtualTime
    sched_rng: random.Random
    _quiesced: bool
    _pending: dict[tuple[str, int, str, bool, bytes], Any]

    def record(self, text: str, data: bytes = b"") -> None:
        raise NotImplementedError

    def push(self, t_us: int, fn: Any, arg: Any) -> None:
        raise NotImplementedError

    def _hlc_violation(self, node: SimNode, what: str) -> None:
        raise NotImplementedError

    def write(self, index: int, op: Op) -> None:
        """Perform a client operation on a node and record acknowledged writes. A record
        that rotted (the ``bitrot`` scenario) fails the operation with a read error, as a
        disk's checksum would: nothing is written, nothing acknowledged."""
        node = self.nodes[index]
        store = node.store
        if node.state != UP or store is None or node.quiet:
            self.c["unavailable"] += 1
            return
        try:
            self._perform(node, store, op)
        except CorruptionError:
            self.c["rot_errors"] += 1
        except ClockSkewError:  # the node's clock is fenced: nothing written or acknowledged
            self.c["writes_fenced"] += 1

    def _perform(self, node: SimNode, store: Store, op: Op) -> None:
        index = node.index
        kind = op.kind
        if kind == "read":
            store.get(op.key)
            self.c["reads"] += 1
            self.record(f"r{self.vt.now},{index},{op.key}\n")
            return
        if kind in ("read_all", "merge"):
            self._read_all(node, store, op)
            return
        if kind == "put":
            key, value, _ = op.writes[0]
            versions = [store.put(key, value)]
        elif kind == "delete":
            versions = [store.delete(op.writes[0][0])]
        else:
            with store.batch() as b:
                for key, value, deleted in op.writes:
                    if deleted:
                        b.delete(key)
                    else:
                        b.put(key, value)
            versions = b.versions
        self._acked(node, store, op.writes, versions)

    def _acked(
        self,
        node: SimNode,
        store: Store,
        writes: tuple[tuple[str, Any, bool], ...],
        versions: list[Version],
        merged: list[tuple[str, int]] | None = None,
    ) -> None:
        """Record the versions a store returned for ``writes`` (``merged``: the versions a
        merge passed) and check that the node's stamps only grow."""
        index = node.index
        last = node.last_write_hlc
        record = self._acknowledge if not node.rogue else None
        causal = self.causal
        for (key, value, deleted), v in zip(writes, versions, strict=True):
            if v.hlc <= last:
                self._hlc_violation(node, f"write stamped {v.hlc} after {last}")
            last = v.hlc
            if record is None:
                self.c["rogue_writes"] += 1
            elif causal is not None:
                durable = self.cfg.sync_writes
                causal.record(
                    index, key, value, deleted, v.hlc, v.peer, merged=merged, durable=durable
                )
            else:
                record(key, value, deleted, v.hlc, v.peer)
            self.record(f"w{self.vt.now},{index},{key},{int(deleted)},{v.hlc}\n")
        node.last_write_hlc = max(node.last_write_hlc, last)
        self.c["writes"] += len(versions)
        h = store.hlc.last
        if h < node.hlc_seen:
            self._hlc_violation(node, f"clock went back from {node.hlc_seen} to {h}")
        node.hlc_seen = h

    def _read_all(self, node: SimNode, store: Store, op: Op) -> None:
        """``get_all``, and for a merge op ``merge`` what it read (now or after a delay)."""
        found = store.get_all(op.key)
        self.c["reads"] += 1
        self.record(f"s{self.vt.now},{node.index},{op.key},{len(found)}\n")
        if op.kind != "merge":
            return
        if op.pick >= 0:
            found = [e for i, e in enumerate(found) if (op.pick >> i) & 1]
        if op.delay_ms <= 0:
            self._merge(node, store, op, found)
            return
        self.push(
            self.vt.now + int(op.delay_ms * 1000), self._stale_merge, (node, store, op, found)
        )

    def _stale_merge(self, arg: tuple[SimNode, Store, Op, list[Entry]]) -> None:
        """A merge of an old read. Dropped when its node crashed since the read (its client
        died with the process), its clients are paused (:class:`~crdt_kv.sim.faults.Quiet`:
        a node about to be isolated until it expires must not write what it cannot
        replicate) or the faults ended (clients stop at the heal)."""
        node, store, op, passed = arg
        if node.store is not store or node.state != UP or node.quiet or self._quiesced:
            self.c["merges_dropped"] += 1
            return
        try:
            self._merge(node, store, op, passed)
        except CorruptionError:
            self.c["rot_errors"] += 1
        except ClockSkewError:
            self.c["writes_fenced"] += 1

    def _merge(self, node: SimNode, store: Store, op: Op, passed: list[Entry]) -> None:
        key, value, _ = op.writes[0]
        v = store.merge(key, passed, value)
        self.c["merges"] += 1
        self._acked(node, store, op.writes, [v], [(e.peer, e.hlc) for e in passed])

    def _acknowledge(self, key: str, value: Any, deleted: bool, hlc: int, peer: str) -> None:
        if self.cfg.sync_writes:
            self.oracle.record(key, value, deleted, hlc, peer)
        else:
            raw = b"" if deleted else cbor2.dumps(value)
            self._pending[(key, hlc, peer, deleted, raw)] = value

    def _disk_tick(self, node: SimNode) -> None:
        self.sync_disk(node)
        delay = self.cfg.flush_ms * (0.5 + self.sched_rng.random())
        self.push(self.vt.now + int(delay * 1000), self._disk_tick, node)

    def sync_disk(self, node: SimNode, *, force: bool = False) -> None:
        """Write back a node's volatile disk; acknowledged writes it holds become durable
        and from then on the oracle expects them to survive (``sync_writes=False``).
        Only up nodes write back, unless ``force`` (a clean shutdown's final flush)."""
        backend = node.backend
        if not isinstance(backend, SimDisk) or not backend.volatile:
            return
        if node.state != UP and not force:
            return
        keys = backend.sync()
        causal = self.causal
        if causal is not None:
            if causal.pending:
                for k in keys:
                    blob = backend.peek(k) if k[:1] == DATA else None
                    if blob is not None:
                        causal.durable(unpack_record(k[1:], blob))
            return
        pending = self._pending
        if not pending:
            return
        record = self.oracle.record
        for k in keys:
            if k[:1] != DATA:
                continue
            blob = backend.peek(k)
            if blob is None:
                continue
            e = unpack_record(k[1:], blob)
            key = e.key.decode("utf-8", "replace")
            raw = b"" if e.deleted else e.value
            found = (key, e.hlc, e.peer, e.deleted, raw)
            if found in pending:
                record(key, pending.pop(found), e.deleted, e.hlc, e.peer)

    def sync_disks(self) -> None:
        """Write back every up node's volatile disk (before the final checks)."""
        for node in self.nodes:
            self.sync_disk(node)
