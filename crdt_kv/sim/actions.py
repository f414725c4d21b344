"""Fault actions: what a scheduled :class:`~crdt_kv.sim.faults.FaultAction` does to the
simulated cluster (a mixin of :class:`~crdt_kv.sim.runner.Simulation`)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from crdt_kv.errors import CorruptionError
from crdt_kv.fingerprint import state_stamp
from crdt_kv.hlc import LOGICAL_BITS
from crdt_kv.layout import DATA, DATA_END, unpack_record
from crdt_kv.sim.causal_oracle import CausalOracle
from crdt_kv.sim.clocks import VirtualTime
from crdt_kv.sim.config import SimConfig
from crdt_kv.sim.coverage import held_elsewhere, uncovered
from crdt_kv.sim.disk import SimDisk
from crdt_kv.sim.faults import (
    Burst,
    ClockJump,
    Crash,
    Cut,
    FaultAction,
    Freeze,
    Heal,
    Isolate,
    Join,
    Partition,
    Quiet,
    Restart,
    Restore,
    Rot,
    SetLinkFaults,
    Shutdown,
    Snapshot,
    Unfreeze,
)
from crdt_kv.sim.links import LinkShell
from crdt_kv.sim.network import Network
from crdt_kv.sim.nodes import DOWN, PENDING, UP, SimNode
from crdt_kv.sim.oracle import Oracle
from crdt_kv.sim.stampwatch import StampWatch
from crdt_kv.sim.workload import Op
from crdt_kv.store import Store
from crdt_kv.version import RawEntry

__all__ = ["FaultActions"]


class FaultActions:
    """Applies fault actions; the simulation provides the state it acts on."""

    cfg: SimConfig
    nodes: list[SimNode]
    network: Network
    links: LinkShell
    c: dict[str, int]
    sched_rng: random.Random
    fault_rng: random.Random
    causal: CausalOracle | None
    oracle: Oracle
    watch: StampWatch | None
    _up: list[int] | None
    vt: VirtualTime

    def record(self, text: str, data: bytes = b"") -> None:
        raise NotImplementedError

    def _open_store(self, node: SimNode) -> None:
        raise NotImplementedError

    def _start_links(self, node: SimNode) -> None:
        raise NotImplementedError

    def sync_disk(self, node: SimNode, *, force: bool = False) -> None:
        raise NotImplementedError

    def write(self, index: int, op: Op) -> None:
        raise NotImplementedError

    def push(self, t_us: int, fn: Any, arg: Any) -> None:
        raise NotImplementedError

    def _planned(self, action: FaultAction) -> None:
        raise NotImplementedError

    def apply(self, action: FaultAction) -> None:
        """Apply one fault action now."""
        self.record(f"A{self.vt.now},{action!r}\n")
        _ACTIONS[type(action)](self, action)

    def _a_partition(self, a: FaultAction) -> None:
        assert isinstance(a, Partition)
        self.network.partition(a.groups)
        self.c["partitions"] += 1

    def _a_heal(self, a: FaultAction) -> None:
        self.network.heal()

    def _take_down(self, node: SimNode, why: str) -> Store | None:
        """Reset the node's connections and mark it down; return its store (still open)."""
        self.links.take_down(node, why)
        store = node.store
        node.store = None
        node.state = DOWN
        self._up = None
        node.dirty = False
        return store

    def _a_crash(self, a: FaultAction) -> None:
        assert isinstance(a, Crash)
        node = self.nodes[a.node]
        if node.state != UP:
            return
        store = self._take_down(node, "crashed")
        if store is not None and self.cfg.backend != "memory":
            store.backend.close()  # unclean: no Store.close(), just release the files
        if isinstance(node.backend, SimDisk) and node.backend.volatile:
            self.c["power_cuts"] += 1
            self.c["unsynced_reverted"] += node.backend.power_cut()
            node.power_lost = True
        self.c["crashes"] += 1

    def _a_shutdown(self, a: FaultAction) -> None:
        assert isinstance(a, Shutdown)
        node = self.nodes[a.node]
        if node.state != UP:
            return
        store = self._take_down(node, "shut down")
        if store is not None:
            store.close()
        if isinstance(node.backend, SimDisk):
            self.sync_disk(node, force=True)
        self.c["shutdowns"] += 1

    def _a_restart(self, a: FaultAction) -> None:
        assert isinstance(a, Restart)
        node = self.nodes[a.node]
        if node.state != DOWN:
            return
        node.clock.jump(a.clock_jump_ms)
        self._open_store(node)
        self.c["restarts"] += 1
        self._start_links(node)

    def _a_join(self, a: FaultAction) -> None:
        assert isinstance(a, Join)
        node = self.nodes[a.node]
        if node.state != PENDING:
            return
        self._open_store(node)
        self.c["joins"] += 1
        self._start_links(node)

    def _a_jump(self, a: FaultAction) -> None:
        assert isinstance(a, ClockJump)
        self.nodes[a.node].clock.jump(a.delta_ms)

    def _a_freeze(self, a: FaultAction) -> None:
        assert isinstance(a, Freeze)
        self.nodes[a.node].clock.freeze()

    def _a_unfreeze(self, a: FaultAction) -> None:
        assert isinstance(a, Unfreeze)
        self.nodes[a.node].clock.unfreeze()

    def _a_cut(self, a: FaultAction) -> None:
        conns = self.links.conns
        if conns:
            ids = list(conns)
            conn = conns[ids[self.sched_rng.randrange(len(ids))]]
            self.c["cuts"] += 1
            self.links.reset(conn, "connection cut")

    def _a_faults(self, a: FaultAction) -> None:
        assert isinstance(a, SetLinkFaults)
        self.network.faults = a.faults

    def _a_burst(self, a: FaultAction) -> None:
        assert isinstance(a, Burst)
        up = [n for n in self.nodes if n.state == UP and n.store is not None and not n.rogue]
        if not up or not a.keys:
            return
        stores = [n.store for n in up if n.store is not None]
        wall = max([s.hlc.last >> LOGICAL_BITS for s in stores] + [n.clock() for n in up])
        for n in self.nodes:
            n.clock.freeze(wall + 1)
        self.c["bursts"] += 1
        for n in up:
            writes = tuple((k, {"burst": n.index, "n": self.c["bursts"]}, False) for k in a.keys)
            self.write(n.index, Op("batch", writes))

    def _a_snapshot(self, a: FaultAction) -> None:
        assert isinstance(a, Snapshot)
        node = self.nodes[a.node]
        if node.state == UP and isinstance(node.backend, SimDisk):
            node.snapshot = node.backend.snapshot()
            self.c["snapshots"] += 1

    def _a_quiet(self, a: FaultAction) -> None:
        assert isinstance(a, Quiet)
        self.nodes[a.node].quiet = a.on

    def _a_restore(self, a: FaultAction) -> None:
        assert isinstance(a, Restore)
        node = self.nodes[a.node]
        disk = node.backend
        if node.state != UP or node.snapshot is None or not isinstance(disk, SimDisk):
            return
        assert node.store is not None
        others = [n.store for n in self.nodes if n is not node and n.state == UP and n.store]
        if uncovered(node.store, others):
            self.c["restore_waits"] += 1
            self.push(self.vt.now + 250_000, self._planned, a)
            return
        self._take_down(node, "restored from a copy")
        disk.restore(node.snapshot)
        disk.reopen()
        node.power_lost = True  # its disk went back: older states are legitimate
        node.quiet = False
        self.c["restores"] += 1
        self._open_store(node)
        # Cut off with one peer for a while: its clients write, and it pulls that peer,
        # at sequences the other peers already passed.
        buddy = self.sched_rng.choice([n.index for n in self.nodes if n is not node])
        self.network.partition(((a.node, buddy),))
        self.push(self.vt.now + 1_500_000, self._planned, Heal())
        self._start_links(node)

    def _a_isolate(self, a: FaultAction) -> None:
        assert isinstance(a, Isolate)
        node = self.nodes[a.node]
        if node.state != UP or node.store is None:
            return
        others = [n.store for n in self.nodes if n is not node and n.state == UP and n.store]
        if uncovered(node.store, others, every=True):
            self.c["isolate_waits"] += 1
            self.push(self.vt.now + 250_000, self._planned, a)
            return
        self.c["isolations"] += 1
        self.network.partition(((a.node,),))
        self.push(self.vt.now + int(a.span_ms * 1000), self._rejoin, a.node)

    def _rejoin(self, index: int) -> None:
        self.nodes[index].quiet = False
        self.network.heal()

    def _a_rot(self, a: FaultAction) -> None:
        assert isinstance(a, Rot)
        node = self.nodes[a.node]
        disk, store = node.backend, node.store
        if node.state != UP or store is None or not isinstance(disk, SimDisk):
            return
        if a.everywhere:
            self._rot_everywhere(store, disk)
            return
        others = [n.store for n in self.nodes if n is not node and n.state == UP and n.store]
        mode, rng = store.conflict_mode, self.fault_rng
        keys = [k[1:] for k, _ in disk.iterate(DATA, DATA_END)]
        rng.shuffle(keys)
        done = 0
        for k in keys:
            if done >= a.records:
                break
            blob = disk.get(DATA + k)
            try:
                r = unpack_record(k, blob) if blob is not None else None
            except Exception:  # rotted already
                continue
            if r is None or not held_elsewhere(mode, r, others):
                continue
            garbage = rng.random() < 0.5

            disk.write([(DATA + k, b"\xff" + rng.randbytes(12) if garbage else None)])
            if self.causal is not None:
                self.causal.lose(a.node, k)
            self.c["rotten" if not garbage else "garbled"] += 1
            done += 1

    def _rot_everywhere(self, store: Store, disk: SimDisk) -> None:
        """Remove one old tombstone from every node that holds it (see :class:`Rot`)."""
        if any(n.state != UP or n.store is None for n in self.nodes):
            return
        old = store.clock_now() - (300 << LOGICAL_BITS)
        keys = [k[1:] for k, _ in disk.iterate(DATA, DATA_END)]
        self.fault_rng.shuffle(keys)
        for k in keys:
            mine = _held(store, k)
            if mine is None or not _deleted(mine):
                continue
            if state_stamp(mine) >= old:
                continue
            nodes = [(i, n) for i, n in enumerate(self.nodes) if n.store is not None]
            states = [_held(n.store, k) for _, n in nodes if n.store is not None]
            if not all(s is None or _deleted(s) for s in states):
                continue  # a live version somewhere would come back as a resurrection
            for (i, n), s in zip(nodes, states, strict=True):
                if s is not None and isinstance(n.backend, SimDisk):
                    n.backend.write([(DATA + k, None)])
                    if self.causal is not None:
                        self.causal.lose(i, k)
            # An older state of k may still be on the wire: the oracles and the watch must
            # let it stand, since no replica knows of the lost one any more.
            top = max(state_stamp(s) for s in states if s is not None)
            if self.causal is not None:
                self.causal.lose_everywhere(k, top)
            self.oracle.lose_everywhere(k.decode("utf-8", "replace"), top)
            if self.watch is not None:
                self.watch.forget_key(k)
            self.c["rotten_everywhere"] += 1
            return


def _deleted(r: RawEntry) -> bool:
    return all(v.deleted for v in (r, *r.others))


def _held(store: Store, k: bytes) -> RawEntry | None:
    """``store``'s state of encoded key ``k`` (None: not held, or rotten there)."""
    try:
        found = store.raw_entries([k])
    except CorruptionError:
        return None
    return found[0] if found else None


_ACTIONS: dict[type, Callable[[FaultActions, Any], None]] = {
    Partition: FaultActions._a_partition,
    Heal: FaultActions._a_heal,
    Crash: FaultActions._a_crash,
    Restart: FaultActions._a_restart,
    Join: FaultActions._a_join,
    ClockJump: FaultActions._a_jump,
    Freeze: FaultActions._a_freeze,
    Unfreeze: FaultActions._a_unfreeze,
    Cut: FaultActions._a_cut,
    SetLinkFaults: FaultActions._a_faults,
    Burst: FaultActions._a_burst,
    Shutdown: FaultActions._a_shutdown,
    Snapshot: FaultActions._a_snapshot,
    Restore: FaultActions._a_restore,
    Quiet: FaultActions._a_quiet,
    Isolate: FaultActions._a_isolate,
    Rot: FaultActions._a_rot,
}
