"""The discrete-event engine: real stores and real sessions over a simulated network.

One heap of ``(virtual_time_us, seq, handler, argument)`` events and one seeded
:class:`random.Random` (split into independent sub-generators in a fixed order) drive a
whole run, so the same configuration and seed replay bit for bit; :attr:`SimResult.trace_hash`
is a BLAKE2b hash over every operation, fault, connection and delivered or dropped message,
in order, so two runs can be compared in one line.

Each node is a real :class:`~crdt_kv.Store` opened with :func:`crdt_kv.open` on a
simulated clock; each connection is a pair of real
:class:`~crdt_kv.protocol.Session` objects whose bytes travel through
:class:`~crdt_kv.sim.network.Network`. The engine only moves bytes, counts, and decides
*when* things happen: it never merges or interprets protocol messages itself.

A run has two phases. During the *fault phase* clients write, nodes gossip (each node
periodically opens a ``both`` session with a random peer, plus optional long-lived
``live`` sessions), and the scenario's faults happen. When the last operation was issued
and the fault plan ended, the engine *heals*: faults stop, partitions heal, crashed and
not-yet-joined nodes come up, and every node gossips at once. It then checks every
``check_ms`` whether all live replicas have equal digests (``convergence_time_ms``
measures from the heal), and finally compares every replica with the oracle.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import random
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import cbor2

import crdt_kv
from crdt_kv.codec import DATA, unpack_record
from crdt_kv.errors import ConfigError
from crdt_kv.hlc import LOGICAL_BITS
from crdt_kv.protocol import LinkConfig, LinkRole
from crdt_kv.sim.clocks import SimClock, VirtualTime
from crdt_kv.sim.config import (
    BACKENDS,
    MAX_REPORTED_MISMATCHES,
    SimConfig,
    SimResult,
    repro_command,
)
from crdt_kv.sim.disk import SimDisk
from crdt_kv.sim.faults import (
    Burst,
    ClockJump,
    Crash,
    Cut,
    FaultAction,
    Freeze,
    Heal,
    Join,
    Partition,
    Plan,
    Restart,
    SetLinkFaults,
    Shutdown,
    Unfreeze,
)
from crdt_kv.sim.links import Connection, LinkShell, Message
from crdt_kv.sim.network import NO_FAULTS, Network
from crdt_kv.sim.nodes import DOWN, PENDING, UP, SimNode
from crdt_kv.sim.oracle import Mismatch, Oracle
from crdt_kv.sim.workload import Op, Workload
from crdt_kv.store import Store
from crdt_kv.version import Resolver

__all__ = [
    "BACKENDS",
    "DOWN",
    "PENDING",
    "UP",
    "Connection",
    "Message",
    "SimConfig",
    "SimNode",
    "SimResult",
    "Simulation",
    "repro_command",
    "run",
]

ProgressFn = Callable[[str, int, int], None]


# --- the simulation --------------------------------------------------------------------


class Simulation:
    """A cluster of real stores over a simulated network, driven by virtual time.

    ``run()`` performs a whole scenario. Tests can also drive it by hand: call
    :meth:`open_nodes`, set :attr:`intercept` to receive every :class:`Message` instead of
    the network delivering it, then use :meth:`write`, :meth:`connect`, :meth:`deliver`,
    :meth:`drop`, :meth:`apply`, :meth:`advance`, :meth:`sync_all` and :meth:`check`.
    """

    def __init__(self, cfg: SimConfig, *, progress: ProgressFn | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.command = repro_command(cfg)
        """The command that replays this run (taken before a scenario adjusts ``cfg``)."""
        self.progress = progress
        master = random.Random(cfg.seed)
        self.net_rng = random.Random(master.getrandbits(64))
        self.fault_rng = random.Random(master.getrandbits(64))
        self.work_rng = random.Random(master.getrandbits(64))
        self.sched_rng = random.Random(master.getrandbits(64))
        self.vt = VirtualTime()
        self.network = Network(cfg.nodes)
        width = max(2, len(str(cfg.nodes - 1)))
        self.nodes = [
            SimNode(
                i,
                f"n{i:0{width}d}",
                SimClock(self.vt),
                random.Random(master.getrandbits(64)),
            )
            for i in range(cfg.nodes)
        ]
        self.oracle = Oracle(cfg.resolver)
        self.links = LinkShell(self)
        self.unfreeze_on_heal = True
        self.lingering = False
        self._auto = False
        self._targets: dict[int, tuple[list[int], list[int]]] = {}
        self.accept_config = self._round_cfg = self._live_cfg = self._link_config(live=True)
        self.duration_ms = cfg.effective_duration_ms()
        self._heap: list[tuple[int, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._trace = hashlib.blake2b(digest_size=16)
        self._stop = False
        self._tmp: str | None = None
        self._plan: Plan = []
        self._quiesced = False
        self._heal_us: int | None = None
        self._converged_us: int | None = None
        self._ops_issued = 0
        self._op_rate = 0.0
        self._up: list[int] | None = None
        self._pending: dict[tuple[str, int, str, bool, bytes], Any] = {}
        """Acknowledged writes not yet durable anywhere (``sync_writes=False`` only)."""
        self._workload: Workload | None = None
        self._divergence: list[tuple[float, int]] = []
        self._div_seen: dict[int, int] = {}
        self._div_state: dict[bytes, dict[int, tuple[int, str, bool, bytes]]] = {}
        self._div_bad: set[bytes] = set()
        self._hlc_examples: list[str] = []
        self.error: str | None = None
        self.events = 0
        self.c: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "bytes",
                "writes",
                "reads",
                "sessions",
                "timeouts",
                "quiet_timeouts",
                "cuts",
                "connect_failures",
                "lost",
                "duplicated",
                "reordered",
                "partitioned",
                "late",
                "crashes",
                "restarts",
                "joins",
                "partitions",
                "skew_rejections",
                "rogue_writes",
                "bursts",
                "power_cuts",
                "shutdowns",
                "unsynced_reverted",
                "hlc_rewinds",
                "hlc_violations",
                "unavailable",
                "entries_sent",
                "entries_changed",
            ),
            0,
        )
        self.failures: dict[str, int] = {}

    # --- scheduling ---------------------------------------------------------------------

    @property
    def now_ms(self) -> float:
        """Current virtual time in milliseconds."""
        return self.vt.now / 1000

    def at(self, t_ms: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Run ``fn(arg)`` at virtual time ``t_ms`` (not before now)."""
        self._push(max(self.vt.now, int(t_ms * 1000)), fn, arg)

    def _push(self, t_us: int, fn: Callable[[Any], None], arg: Any) -> None:
        heapq.heappush(self._heap, (t_us, next(self._seq), fn, arg))

    def schedule(self, plan: Iterable[tuple[float, FaultAction]]) -> None:
        """Add timed fault actions (applied only during the fault phase)."""
        for t, action in plan:
            self._plan.append((t, action))
            self.at(t, self._planned, action)

    def _planned(self, action: FaultAction) -> None:
        if not self._quiesced:
            self.apply(action)

    def advance(self, ms: float) -> None:
        """Run every event due in the next ``ms`` virtual milliseconds."""
        self._loop(self.vt.now + int(ms * 1000))

    def _loop(self, until_us: int | None = None) -> None:
        heap, vt, pop = self._heap, self.vt, heapq.heappop
        n = 0
        try:
            while heap and not self._stop:
                if until_us is not None and heap[0][0] > until_us:
                    break
                t, _, fn, arg = pop(heap)
                vt.now = t
                fn(arg)
                n += 1
        finally:
            self.events += n
        if until_us is not None and vt.now < until_us:
            vt.now = until_us

    def _record(self, text: str, data: bytes = b"") -> None:
        self._trace.update(text.encode())
        if data:
            self._trace.update(data)

    # --- nodes ------------------------------------------------------------------------------

    def set_rogue(self, index: int) -> None:
        """Mark a node whose clock is beyond ``max_offset``: its writes must be refused
        everywhere, so it is left out of the convergence and oracle checks."""
        self.nodes[index].rogue = True

    def set_pending(self, index: int) -> None:
        """Keep a node out of the cluster until a :class:`Join` (or the heal)."""
        self.nodes[index].state = PENDING
        self._up = None

    def open_nodes(self) -> None:
        """Open a store on every node that is not pending."""
        if self.cfg.backend != "memory" and self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="crdt_kv-sim-")
        self.accept_config = self._live_cfg = self._link_config(live=True)
        self._round_cfg = self._link_config(live=False, mode=self.cfg.gossip_mode)
        for node in self.nodes:
            if node.state == UP and node.store is None:
                self._open_store(node)

    def _open_store(self, node: SimNode) -> None:
        cfg = self.cfg
        common: dict[str, Any] = {
            "peer_id": node.peer_id,
            "clock": node.clock,
            "rng": node.rng,
            "max_offset_ms": cfg.max_offset_ms,
            "resolver": cfg.resolver,
        }
        if cfg.backend == "memory":
            if node.backend is None:
                node.backend = SimDisk(volatile=not cfg.sync_writes)
            elif isinstance(node.backend, SimDisk):
                node.backend.reopen()
            store = crdt_kv.open(backend=node.backend, **common)
        else:
            assert self._tmp is not None
            if node.path is None:
                node.path = os.path.join(self._tmp, node.peer_id)
            store = crdt_kv.open(node.path, backend=cfg.backend, **common)
        node.store = store
        node.state = UP
        self._up = None
        store.on_commit(self._commit_hook(node))
        last = store.hlc.last
        if node.power_lost:
            # Not power safe by contract: stamps of lost writes may be issued again (the
            # new incarnation and the total order on (peer, deleted, value) cover it).
            node.power_lost = False
            if last < node.last_write_hlc:
                self.c["hlc_rewinds"] += 1
                node.last_write_hlc = last
        if last < node.last_write_hlc:
            self._hlc_violation(
                node, f"reopened at hlc {last} below its write {node.last_write_hlc}"
            )
        node.hlc_seen = last

    def _hlc_violation(self, node: SimNode, what: str) -> None:
        self.c["hlc_violations"] += 1
        if len(self._hlc_examples) < 10:
            self._hlc_examples.append(f"{node.peer_id} at {self.now_ms:.1f} ms: {what}")

    def live_nodes(self) -> list[SimNode]:
        """Nodes that are up and not rogue: the ones that must converge."""
        return [n for n in self.nodes if n.state == UP and not n.rogue]

    # --- client operations ----------------------------------------------------------------

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
            self._record(f"r{self.vt.now},{index},{op.key}\n")
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
            self._record(f"w{self.vt.now},{index},{key},{int(deleted)},{v.hlc}\n")
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

    # --- durability (sync_writes=False) ---------------------------------------------------

    def _disk_tick(self, node: SimNode) -> None:
        self.sync_disk(node)
        delay = self.cfg.flush_ms * (0.5 + self.sched_rng.random())
        self._push(self.vt.now + int(delay * 1000), self._disk_tick, node)

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

    # --- links and connections ------------------------------------------------------

    @property
    def intercept(self) -> Callable[[Message], object] | None:
        """When set, every message goes to this callable instead of the network."""
        return self.links.intercept

    @intercept.setter
    def intercept(self, fn: Callable[[Message], object] | None) -> None:
        self.links.intercept = fn

    def push(self, t_us: int, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` at virtual time ``t_us`` (microseconds)."""
        heapq.heappush(self._heap, (t_us, next(self._seq), fn, arg))

    def record(self, text: str, data: bytes = b"") -> None:
        """Add a line (and bytes) to the trace hash."""
        self._record(text, data)

    def _link_config(self, *, live: bool, mode: str = "both") -> LinkConfig:
        """The production policy, with the simulation's time scale."""
        cfg = self.cfg
        return LinkConfig(
            mode=mode,
            live=live,
            cluster_id="sim",
            handshake_timeout_s=cfg.idle_timeout_ms / 1000,
            idle_timeout_s=cfg.idle_timeout_ms / 1000,
            sync_interval_s=cfg.gossip_ms / 1000,
            min_sync_interval_s=cfg.gossip_ms / 2000,
            backoff_base_s=cfg.backoff_base_ms / 1000,
            backoff_max_s=cfg.backoff_max_ms / 1000,
            push_delay_s=cfg.live_flush_ms / 1000,
            max_batch_entries=cfg.max_batch_entries,
            window=cfg.window,
        )

    def connect(
        self, i: int, j: int, *, kind: str = "sync", mode: str = "both", live: bool = False
    ) -> Connection | None:
        """Open one session pair from node ``i`` (dialing, ``mode``) to node ``j`` by hand.

        Returns None when ``i`` is down, or (counted as a connect failure) when ``j`` is
        down, not yet joined, or across a partition.
        """
        a = self.nodes[i]
        if a.state != UP or a.store is None or i == j:
            return None
        config = self._link_config(live=live, mode=mode)
        sl = self.links.add(a, role=LinkRole.ONCE, config=config, target=j, kind=kind)
        conn = self.links.connect(sl, j, inbound=self.accept_config)
        if conn is None:
            a.links.remove(sl)
        return conn

    def deliver(self, msg: Message) -> None:
        """Hand a message to its receiving link."""
        self.links.deliver(msg)

    def drop(self, msg: Message) -> None:
        """Lose an intercepted message (counted and traced like a network loss)."""
        self.links.drop(msg)

    def _round_targets(self, i: int) -> list[int]:
        """Peers node ``i`` syncs with in rounds: its ring successor and ``gossip_fanout``
        others drawn from the seed (together a connected graph of small diameter)."""
        n = len(self.nodes)
        live = set(self._live_targets(i))
        picks = [(i + 1) % n]
        others = [j for j in range(n) if j != i and j not in picks]
        self.sched_rng.shuffle(others)
        picks.extend(others[: self.cfg.gossip_fanout])
        return [j for j in picks if j not in live]

    def _live_targets(self, i: int) -> list[int]:
        ring = self.cfg.live_ring
        n = len(self.nodes)
        ring_n = n if ring is None else min(ring, n)
        if i >= ring_n:
            return []
        k = min(self.cfg.live_peers, ring_n - 1)
        return [(i + d) % ring_n for d in range(1, k + 1)]

    def _start_links(self, node: SimNode) -> None:
        """Open the node's dialing links (a running node's configured peers)."""
        if not self._auto or node.state != UP:
            return
        i = node.index
        targets = self._targets.get(i)
        if targets is None:
            targets = self._targets[i] = (self._live_targets(i), self._round_targets(i))
        live, rounds = targets
        for j in live:
            self.links.add(node, role=LinkRole.DIAL, config=self._live_cfg, target=j, kind="live")
        for j in rounds:
            self.links.add(
                node, role=LinkRole.DIAL, config=self._round_cfg, target=j, kind="gossip"
            )

    def _commit_hook(self, node: SimNode) -> Callable[[int], None]:
        def hook(_seq: int) -> None:
            if not node.dirty:
                node.dirty = True
                self.push(self.vt.now, self._changed, node)

        return hook

    def _changed(self, node: SimNode) -> None:
        node.dirty = False
        if node.state == UP:
            self.links.local_changed(node)

    # --- faults ----------------------------------------------------------------------------

    def apply(self, action: FaultAction) -> None:
        """Apply one fault action now."""
        self._record(f"A{self.vt.now},{action!r}\n")
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

    # --- the automatic run -------------------------------------------------------------

    def _op_tick(self, _: object) -> None:
        cfg = self.cfg
        wl = self._workload
        assert wl is not None
        up = self._up
        if up is None:
            up = self._up = [n.index for n in self.nodes if n.state == UP]
        self._ops_issued += 1
        if up:
            i = up[self.work_rng.randrange(len(up))] if len(up) > 1 else up[0]
            self.write(i, wl.next(i))
        else:
            self.c["unavailable"] += 1
        done = self._ops_issued
        if self.progress is not None and (done % 500 == 0 or done == cfg.ops):
            self.progress("ops", done, cfg.ops)
        if done < cfg.ops:
            gap = self.work_rng.expovariate(self._op_rate) if self._op_rate > 0 else 0.0
            self._push(self.vt.now + int(gap * 1_000_000), self._op_tick, None)
        else:
            self.at(max(self.now_ms, self.duration_ms), self._heal, None)

    def heal_all(self) -> None:
        """Stop every fault: no message faults, no partition, every node up."""
        self._quiesced = True
        self.network.faults = NO_FAULTS
        self.network.heal()
        for node in self.nodes:
            if node.clock.frozen and self.unfreeze_on_heal:
                node.clock.unfreeze()
            if node.state == DOWN:
                self.apply(Restart(node.index))
            elif node.state == PENDING:
                self.apply(Join(node.index))

    def _heal(self, _: object) -> None:
        self.heal_all()
        self._heal_us = self.vt.now
        self._record(f"H{self.vt.now}\n")
        now = self.vt.now / 1_000_000
        for node in self.nodes:
            for sl in list(node.links):
                if sl.kind != "accept":
                    sl.link.dial_now(now)
                    self.links.service(sl)
        if self.progress is not None:
            self.progress("converging", 0, int(self.cfg.convergence_bound_ms))
        self._push(self.vt.now + int(self.cfg.check_ms * 1000), self._check_converged, None)

    def _check_converged(self, _: object) -> None:
        assert self._heal_us is not None
        if self.digests_equal():
            self._converged_us = self.vt.now
            if self.cfg.linger_ms > 0:
                # Keep running, quiet: healthy idle sessions must stay up (keep-alives).
                self.lingering = True
                self.at(self.now_ms + self.cfg.linger_ms, self._end_linger, None)
            else:
                self._stop = True
            return
        waited = self.vt.now - self._heal_us
        bound = int(self.cfg.convergence_bound_ms * 1000)
        if self.progress is not None:
            self.progress("converging", waited // 1000, bound // 1000)
        if waited >= bound:
            self._stop = True
            return
        self._push(self.vt.now + int(self.cfg.check_ms * 1000), self._check_converged, None)

    def digests_equal(self) -> bool:
        """True when every live replica has the same digest."""
        digests = {n.store.digest() for n in self.live_nodes() if n.store is not None}
        return len(digests) <= 1

    def _sample(self, _: object) -> None:
        self._divergence.append((self.now_ms, self.divergent_keys()))
        if self.cfg.sample_ms:
            self._push(self.vt.now + int(self.cfg.sample_ms * 1000), self._sample, None)

    def divergent_keys(self) -> int:
        """How many keys are not held identically by every live replica (incremental)."""
        live = self.live_nodes()
        state, bad = self._div_state, self._div_bad
        touched: set[bytes] = set()
        for n in live:
            store = n.store
            assert store is not None
            since = self._div_seen.get(n.index, 0)
            for r in store.raw_changes(since):
                state.setdefault(r.key, {})[n.index] = (r.hlc, r.peer, r.deleted, r.value)
                touched.add(r.key)
            self._div_seen[n.index] = store.last_seq
        ids = [n.index for n in live]
        members = tuple(ids)
        if getattr(self, "_div_members", None) != members:
            self._div_members = members
            touched = set(state)
        for k in touched:
            per = state[k]
            first = per.get(ids[0]) if ids else None
            if first is None or any(per.get(i) != first for i in ids):
                bad.add(k)
            else:
                bad.discard(k)
        return len(bad)

    def run(self, scenario_setup: Callable[[Simulation], None] | None = None) -> SimResult:
        """Run the whole scenario and return its result (errors are reported, not raised)."""
        cfg = self.cfg
        try:
            if scenario_setup is not None:
                scenario_setup(self)
            self.open_nodes()
            self._workload = Workload(
                self.work_rng,
                keys=cfg.effective_keys(),
                zipf_s=cfg.zipf_s,
                mix=cfg.mix,
                value_domain=cfg.value_domain,
            )
            self._op_rate = cfg.ops / (self.duration_ms / 1000) if cfg.ops else 0.0
            self._auto = True
            for node in self.nodes:
                if not cfg.sync_writes:
                    first = self.sched_rng.random() * cfg.flush_ms * 1000
                    self._push(int(first), self._disk_tick, node)
                self._start_links(node)
            if cfg.ops:
                self._push(0, self._op_tick, None)
            else:
                self.at(self.duration_ms, self._heal, None)
            if cfg.sample_ms:
                self._push(0, self._sample, None)
            self._loop()
            self.sync_disks()
            if cfg.sample_ms:
                self._divergence.append((self.now_ms, self.divergent_keys()))
            return self.result()
        except Exception as exc:  # the store or protocol raised: report it with the seed
            self.error = f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=8)
            return self.result(check=False)
        finally:
            self.close()

    # --- checks and result -----------------------------------------------------------------

    def _end_linger(self, _: object) -> None:
        self.lingering = False
        self._stop = True

    def sync_all(self, *, rounds: int = 2) -> None:
        """Quiescence by hand: one ``both`` session per ordered pair, run to completion."""
        self.intercept = None
        for _ in range(rounds):
            for a in self.nodes:
                for b in self.nodes:
                    if a is not b and not a.rogue and not b.rogue:
                        self.connect(a.index, b.index, kind="sync")
                        self._drain()

    def quiesce(self, *, rounds: int = 2) -> None:
        """Stop every fault, drop every open connection (and what it had in flight),
        then :meth:`sync_all`: afterwards every live replica must hold the same state."""
        self.heal_all()
        for conn in list(self.links.conns.values()):
            self.links.reset(conn, "quiesce")
        self.sync_all(rounds=rounds)
        self.sync_disks()

    def _drain(self) -> None:
        """Run until no connection is open (idle checks end with their connection)."""
        limit = self.vt.now + int(self.cfg.convergence_bound_ms * 1000)
        while self.links.conns and self._heap and not self._stop:
            self._loop(min(limit, self._heap[0][0]))
            if self.vt.now >= limit:
                break
        for conn in list(self.links.conns.values()):
            self.links.reset(conn, "drain limit")

    def check(self) -> list[Mismatch]:
        """Compare every live replica with the oracle."""
        out: list[Mismatch] = []
        rogues = [n.peer_id for n in self.nodes if n.rogue]
        for n in self.live_nodes():
            assert n.store is not None
            out.extend(self.oracle.check(n.peer_id, n.store, exclude_peers=rogues))
        return out

    def result(self, *, check: bool = True) -> SimResult:
        """Build the :class:`SimResult` (running the oracle check unless ``check=False``)."""
        cfg = self.cfg
        for stats in self.links.session_stats():
            self.c["skew_rejections"] += stats.skew_rejected
            stats.skew_rejected = 0
        mismatches = self.check() if check and self.error is None else []
        kinds: dict[str, int] = {}
        for m in mismatches:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
        converged = self.error is None and self._converged_us is not None
        if self._heal_us is None and check and self.error is None:
            converged = self.digests_equal()
        rogues = [n.peer_id for n in self.nodes if n.rogue]
        checks = {
            "converged": converged,
            "oracle_match": self.error is None and not mismatches,
            "hlc_monotonic": self.c["hlc_violations"] == 0,
        }
        if cfg.linger_ms > 0:
            checks["quiet_sessions_kept"] = self.c["quiet_timeouts"] == 0
        if rogues:
            checks["rogue_refused"] = self.c["skew_rejections"] > 0
        oracle_match = checks["oracle_match"]
        heal = self._heal_us if self._heal_us is not None else self.vt.now
        conv = None
        if self._converged_us is not None:
            conv = (self._converged_us - heal) / 1000
        c = self.c
        return SimResult(
            scenario=cfg.scenario,
            seed=cfg.seed,
            nodes=cfg.nodes,
            ops=cfg.ops,
            backend=cfg.backend,
            keys=cfg.effective_keys(),
            resolver=cfg.resolver_name,
            converged=converged,
            oracle_match=oracle_match,
            ok=all(checks.values()) and self.error is None,
            trace_hash=self._trace.hexdigest(),
            messages=c["messages"],
            bytes=c["bytes"],
            virtual_time_ms=self.vt.now / 1000,
            convergence_time_ms=conv,
            heal_time_ms=heal / 1000,
            events=self.events,
            writes=c["writes"],
            reads=c["reads"],
            sessions=c["sessions"],
            session_failures=dict(sorted(self.failures.items())),
            timeouts=c["timeouts"],
            quiet_timeouts=c["quiet_timeouts"],
            cuts=c["cuts"],
            connect_failures=c["connect_failures"],
            messages_lost=c["lost"],
            messages_duplicated=c["duplicated"],
            messages_reordered=c["reordered"],
            messages_partitioned=c["partitioned"],
            messages_late=c["late"],
            crashes=c["crashes"],
            power_cuts=c["power_cuts"],
            writes_lost_unsynced=self._vanished(),
            restarts=c["restarts"],
            joins=c["joins"],
            partitions=c["partitions"],
            skew_rejections=c["skew_rejections"],
            rogue_nodes=rogues,
            rogue_writes=c["rogue_writes"],
            hlc_ties=self.oracle.ties,
            hlc_violations=c["hlc_violations"],
            checks=checks,
            mismatch_count=len(mismatches),
            mismatch_kinds=kinds,
            mismatches=[asdict(m) for m in mismatches[:MAX_REPORTED_MISMATCHES]],
            divergence=list(self._divergence),
            error=self.error,
            repro_command=self.command,
        )

    def _vanished(self) -> int:
        """Acknowledged writes that never became durable anywhere and left no trace: the
        converged state holds an older version of their key (power cuts lose them by
        contract when ``sync_writes=False``)."""
        live = [n.store for n in self.live_nodes() if n.store is not None]
        if not self._pending or not live:
            return 0
        store = live[0]
        lost = 0
        for key, hlc, peer, _, _ in self._pending:
            e = store.entry(key)
            if e is None or (e.hlc, e.peer) < (hlc, peer):
                lost += 1
        return lost

    def close(self) -> None:
        """Close every store cleanly and delete temporary directories. Idempotent."""
        for conn in list(self.links.conns.values()):
            conn.alive = False
        self.links.conns.clear()
        for node in self.nodes:
            if node.store is not None:
                node.store.close()
                node.store = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


_ACTIONS: dict[type, Callable[[Simulation, Any], None]] = {
    Partition: Simulation._a_partition,
    Heal: Simulation._a_heal,
    Crash: Simulation._a_crash,
    Restart: Simulation._a_restart,
    Join: Simulation._a_join,
    ClockJump: Simulation._a_jump,
    Freeze: Simulation._a_freeze,
    Unfreeze: Simulation._a_unfreeze,
    Cut: Simulation._a_cut,
    SetLinkFaults: Simulation._a_faults,
    Burst: Simulation._a_burst,
    Shutdown: Simulation._a_shutdown,
}


def run(
    scenario: str = "clean",
    *,
    nodes: int = 8,
    ops: int = 2000,
    seed: int = 1,
    backend: str = "memory",
    resolver: Resolver | None = None,
    resolver_name: str | None = None,
    keys: int | None = None,
    sample_ms: float | None = None,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> SimResult:
    """Run one scenario and return its :class:`SimResult`.

    ``scenario`` names a registered scenario (:data:`crdt_kv.sim.SCENARIOS`); ``"all"`` is
    not accepted here (use :func:`crdt_kv.sim.run_suite`). ``overrides`` set any other
    :class:`SimConfig` field. ``sample_ms`` samples the number of divergent keys every that
    many virtual ms (for ``--plot``).
    """
    from crdt_kv.sim.scenarios import get_scenario

    sc = get_scenario(scenario)
    cfg = SimConfig(
        scenario=sc.name,
        nodes=nodes,
        ops=ops,
        seed=seed,
        backend=backend,
        resolver=resolver,
        resolver_name=resolver_name,
        keys=keys,
        sample_ms=sample_ms,
    )
    for name, value in overrides.items():
        if not hasattr(cfg, name):
            raise ConfigError(f"unknown simulation option {name!r}")
        setattr(cfg, name, value)
    sim = Simulation(cfg, progress=progress)
    return sim.run(sc.setup)
