"""Client operations on simulated nodes and what becomes durable when (a mixin of
:class:`~crdt_kv.sim.runner.Simulation`): acknowledged writes go to the oracle at once,
or, with ``sync_writes=False``, only once a node's volatile disk wrote them back."""

from __future__ import annotations

import random
from typing import Any

import cbor2

from crdt_kv.layout import DATA, unpack_record
from crdt_kv.sim.clocks import VirtualTime
from crdt_kv.sim.config import SimConfig
from crdt_kv.sim.disk import SimDisk
from crdt_kv.sim.nodes import UP, SimNode
from crdt_kv.sim.oracle import Oracle
from crdt_kv.sim.workload import Op

__all__ = ["Clients"]


class Clients:
    """Writes, reads and disk write-back; the simulation provides the state."""

    cfg: SimConfig
    nodes: list[SimNode]
    oracle: Oracle
    c: dict[str, int]
    vt: VirtualTime
    sched_rng: random.Random
    _pending: dict[tuple[str, int, str, bool, bytes], Any]

    def record(self, text: str, data: bytes = b"") -> None:
        raise NotImplementedError

    def push(self, t_us: int, fn: Any, arg: Any) -> None:
        raise NotImplementedError

    def _hlc_violation(self, node: SimNode, what: str) -> None:
        raise NotImplementedError

    def write(self, index: int, op: Op) -> None:
        """Perform a client operation on a node and record acknowledged writes."""
        node = self.nodes[index]
        store = node.store
        if node.state != UP or store is None:
            self.c["unavailable"] += 1
            return
        kind = op.kind
        if kind == "read":
            store.get(op.key)
            self.c["reads"] += 1
            self.record(f"r{self.vt.now},{index},{op.key}\n")
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
        last = node.last_write_hlc
        record = self._acknowledge if not node.rogue else None
        for (key, value, deleted), v in zip(op.writes, versions, strict=True):
            if v.hlc <= last:
                self._hlc_violation(node, f"write stamped {v.hlc} after {last}")
            last = v.hlc
            if record is not None:
                record(key, value, deleted, v.hlc, v.peer)
            else:
                self.c["rogue_writes"] += 1
            self.record(f"w{self.vt.now},{index},{key},{int(deleted)},{v.hlc}\n")
        node.last_write_hlc = max(node.last_write_hlc, last)
        self.c["writes"] += len(versions)
        h = store.hlc.last
        if h < node.hlc_seen:
            self._hlc_violation(node, f"clock went back from {node.hlc_seen} to {h}")
        node.hlc_seen = h

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
