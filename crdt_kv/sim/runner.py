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
from dataclasses import asdict, dataclass, field
from typing import Any

import cbor2

import crdt_kv
from crdt_kv.backends.base import Backend
from crdt_kv.errors import ConfigError
from crdt_kv.hlc import LOGICAL_BITS
from crdt_kv.layout import DATA, unpack_record
from crdt_kv.protocol import (
    ConnectionClosed,
    Event,
    Session,
    SessionFailed,
    SyncComplete,
)
from crdt_kv.sim.clocks import SimClock, VirtualTime
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
from crdt_kv.sim.network import NO_FAULTS, Network
from crdt_kv.sim.oracle import Mismatch, Oracle
from crdt_kv.sim.workload import Op, Workload, WorkloadMix
from crdt_kv.store import Store
from crdt_kv.version import Resolver

__all__ = ["SimConfig", "SimNode", "SimResult", "Simulation", "repro_command", "run"]

BACKENDS = ("memory", "rocksdb", "sqlite")
MAX_REPORTED_MISMATCHES = 50
ProgressFn = Callable[[str, int, int], None]


# --- configuration and result ----------------------------------------------------------


@dataclass(slots=True)
class SimConfig:
    """Everything a run depends on besides the scenario's own choices.

    ``keys`` (key-space size) and ``duration_ms`` (length of the fault phase, over which
    the ``ops`` operations are spread as a Poisson process) are derived from ``nodes``
    and ``ops`` when left at ``None``. Scenarios may adjust any field in their setup.
    """

    scenario: str = "clean"
    nodes: int = 8
    ops: int = 2000
    seed: int = 1
    backend: str = "memory"
    resolver: Resolver | None = None
    resolver_name: str | None = None
    keys: int | None = None
    zipf_s: float = 1.0
    mix: WorkloadMix = field(default_factory=WorkloadMix)
    value_domain: int | None = None
    duration_ms: float | None = None
    gossip_ms: float = 1000.0
    gossip_mode: str = "both"
    live_peers: int = 0
    live_ring: int | None = None
    live_flush_ms: float = 20.0
    live_retry_ms: float = 500.0
    idle_timeout_ms: float = 2000.0
    max_offset_ms: int = 500
    sync_writes: bool = True
    flush_ms: float = 200.0
    max_batch_entries: int = 1000
    window: int = 4
    convergence_bound_ms: float = 60_000.0
    check_ms: float = 50.0
    sample_ms: float | None = None

    def validate(self) -> None:
        """Raise :class:`~crdt_kv.errors.ConfigError` naming the first bad field."""
        if not isinstance(self.nodes, int) or not 2 <= self.nodes <= 1000:
            raise ConfigError(f"nodes must be an int in 2..1000, got {self.nodes!r}")
        if not isinstance(self.ops, int) or self.ops < 0:
            raise ConfigError(f"ops must be a non-negative int, got {self.ops!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown simulation backend {self.backend!r}; use one of {', '.join(BACKENDS)}"
            )
        if self.keys is not None and (not isinstance(self.keys, int) or self.keys < 1):
            raise ConfigError(f"keys must be a positive int, got {self.keys!r}")
        if not self.sync_writes and self.backend != "memory":
            raise ConfigError(
                "sync_writes=False (power cuts) is modelled only for the memory backend, "
                f"not {self.backend!r}"
            )
        if self.resolver is not None and not callable(self.resolver):
            raise ConfigError("resolver must be callable (a, b) -> bool")
        for name in ("gossip_ms", "idle_timeout_ms", "check_ms", "convergence_bound_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")

    def effective_keys(self) -> int:
        """The key-space size: ``keys`` or ops/10 clamped to 20..250.

        The cap keeps many writes racing on every key at scale, and bounds what one
        anti-entropy session carries (at most every key once)."""
        if self.keys is not None:
            return self.keys
        return max(20, min(250, self.ops // 10))

    def effective_duration_ms(self) -> float:
        """Length of the fault phase: ``duration_ms`` or about 50 ops per node-second,
        clamped to 2..10 virtual seconds (ten gossip rounds and several fault episodes;
        a longer phase only repeats them at a higher simulation cost)."""
        if self.duration_ms is not None:
            return float(self.duration_ms)
        return float(max(2_000, min(10_000, self.ops * 1000 // (self.nodes * 50))))


@dataclass(slots=True)
class SimResult:
    """The outcome of one run; :meth:`to_dict` is its JSON form (same field names)."""

    scenario: str
    seed: int
    nodes: int
    ops: int
    backend: str
    keys: int
    resolver: str | None
    converged: bool
    oracle_match: bool
    ok: bool
    trace_hash: str
    messages: int
    bytes: int
    virtual_time_ms: float
    convergence_time_ms: float | None
    heal_time_ms: float
    events: int
    writes: int
    reads: int
    sessions: int
    session_failures: dict[str, int]
    timeouts: int
    cuts: int
    connect_failures: int
    messages_lost: int
    messages_duplicated: int
    messages_reordered: int
    messages_partitioned: int
    messages_late: int
    crashes: int
    power_cuts: int
    writes_lost_unsynced: int
    restarts: int
    joins: int
    partitions: int
    skew_rejections: int
    rogue_nodes: list[str]
    rogue_writes: int
    hlc_ties: int
    hlc_violations: int
    checks: dict[str, bool]
    mismatch_count: int
    mismatch_kinds: dict[str, int]
    mismatches: list[dict[str, str]]
    divergence: list[tuple[float, int]]
    error: str | None
    repro_command: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the same fields."""
        d = asdict(self)
        d["divergence"] = [list(p) for p in self.divergence]
        return d


def repro_command(cfg: SimConfig) -> str:
    """The ``crdt-kv simulate`` command line that replays ``cfg`` exactly."""
    parts = [
        "crdt-kv simulate",
        f"--scenario {cfg.scenario}",
        f"--nodes {cfg.nodes}",
        f"--ops {cfg.ops}",
        f"--seed {cfg.seed}",
    ]
    if cfg.keys is not None:
        parts.append(f"--keys {cfg.keys}")
    if cfg.backend != "memory":
        parts.append(f"--backend {cfg.backend}")
    if cfg.resolver_name:
        parts.append(f"--resolver {cfg.resolver_name}")
    return " ".join(parts)


# --- nodes and connections -------------------------------------------------------------

PENDING, UP, DOWN = "pending", "up", "down"


class SimNode:
    """One replica: its clock, generator, storage and (while up) its Store."""

    __slots__ = (
        "backend",
        "clock",
        "conns",
        "gossip_busy",
        "hlc_seen",
        "index",
        "last_write_hlc",
        "live_conns",
        "path",
        "peer_id",
        "power_lost",
        "pump_pending",
        "rng",
        "rogue",
        "state",
        "store",
    )

    def __init__(self, index: int, peer_id: str, clock: SimClock, rng: random.Random) -> None:
        self.index = index
        self.peer_id = peer_id
        self.clock = clock
        self.rng = rng
        self.state = UP
        self.store: Store | None = None
        self.backend: Backend | None = None
        self.path: str | None = None
        self.conns: dict[int, Connection] = {}
        self.live_conns = 0
        self.gossip_busy = False
        self.pump_pending = False
        self.power_lost = False
        self.rogue = False
        self.last_write_hlc = 0
        self.hlc_seen = 0

    def __repr__(self) -> str:
        return f"<SimNode {self.peer_id} {self.state}>"


class Connection:
    """Two sessions joined by two simulated one-way channels."""

    __slots__ = ("alive", "ended", "fifo", "id", "kind", "last_activity", "nodes", "sessions")

    def __init__(
        self, cid: int, a: SimNode, b: SimNode, sa: Session, sb: Session, *, kind: str, now: int
    ) -> None:
        self.id = cid
        self.nodes = (a, b)
        self.sessions = (sa, sb)
        self.kind = kind
        self.alive = True
        self.ended = [False, False]
        self.fifo = [0, 0]
        self.last_activity = now


class Message:
    """Bytes from one side of a connection (``b""`` is end of stream)."""

    __slots__ = ("conn", "data", "src")

    def __init__(self, conn: Connection, src: int, data: bytes) -> None:
        self.conn = conn
        self.src = src
        self.data = data

    def __repr__(self) -> str:
        a, b = self.conn.nodes
        frm, to = (a, b) if self.src == 0 else (b, a)
        return f"<Message c{self.conn.id} {frm.peer_id}->{to.peer_id} {len(self.data)} bytes>"


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
        self.intercept: Callable[[Message], object] | None = None
        self.unfreeze_on_heal = True
        self.duration_ms = cfg.effective_duration_ms()
        self._heap: list[tuple[int, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._conn_ids = itertools.count(1)
        self._conns: dict[int, Connection] = {}
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

    def _commit_hook(self, node: SimNode) -> Callable[[int], None]:
        def hook(_seq: int) -> None:
            self._dirty(node)

        return hook

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

    # --- connections -----------------------------------------------------------------------

    def connect(
        self, i: int, j: int, *, kind: str = "gossip", mode: str = "both", live: bool = False
    ) -> Connection | None:
        """Open a session pair from node ``i`` (initiator, ``mode``) to node ``j``.

        Returns None when ``i`` is down or already connected to ``j``, or (counted as a
        connect failure) when ``j`` is down, not yet joined, or across a partition.
        """
        a, b = self.nodes[i], self.nodes[j]
        if a.state != UP or a.store is None or j in a.conns or i == j:
            return None
        if b.state != UP or b.store is None or not self.network.reachable(i, j):
            self.c["connect_failures"] += 1
            self._record(f"F{self.vt.now},{i},{j}\n")
            return None
        cfg = self.cfg
        opts: dict[str, Any] = {
            "live": live,
            "cluster_id": "sim",
            "max_batch_entries": cfg.max_batch_entries,
            "window": cfg.window,
        }
        sa = Session(a.store, mode=mode, **opts)
        sb = Session(b.store, mode="both", **opts)
        conn = Connection(next(self._conn_ids), a, b, sa, sb, kind=kind, now=self.vt.now)
        a.conns[j] = conn
        b.conns[i] = conn
        self._conns[conn.id] = conn
        if live:
            a.live_conns += 1
            b.live_conns += 1
        self.c["sessions"] += 1
        self._record(f"C{self.vt.now},{conn.id},{i},{j},{kind},{mode}\n")
        sa.start()
        sb.start()
        self._flush(conn, 0)
        self._flush(conn, 1)
        self._push(self.vt.now + int(cfg.idle_timeout_ms * 1000), self._idle_check, conn)
        return conn

    def _flush(self, conn: Connection, side: int) -> None:
        data = conn.sessions[side].data_to_send()
        if data and conn.alive:
            c = self.c
            c["messages"] += 1
            c["bytes"] += len(data)
            self._send(Message(conn, side, data))

    def _send(self, msg: Message) -> None:
        if self.intercept is not None:
            self.intercept(msg)
            return
        fates = self.network.fate(self.net_rng)
        if not fates:
            self.c["lost"] += 1
            self._record(f"L{self.vt.now},{msg.conn.id},{msg.src},{len(msg.data)}\n")
            return
        now = self.vt.now
        conn, src = msg.conn, msg.src
        for k, d in enumerate(fates):
            if d > 0:
                t = now + d
                t = max(t, conn.fifo[src])
                conn.fifo[src] = t
            else:
                t = now - d
                self.c["duplicated" if k else "reordered"] += 1
            heapq.heappush(self._heap, (t, next(self._seq), self.deliver, msg))

    def deliver(self, msg: Message) -> None:
        """Hand a message to its receiving session and act on the events it returns."""
        conn = msg.conn
        now = self.vt.now
        if not conn.alive:
            self.c["late"] += 1
            self._record(f"X{now},{conn.id},{msg.src}\n")
            return
        dst = 1 - msg.src
        a, b = conn.nodes
        if not self.network.reachable(a.index, b.index):
            self.c["partitioned"] += 1
            self._record(f"P{now},{conn.id},{msg.src},{len(msg.data)}\n")
            return
        self._record(f"D{now},{conn.id},{msg.src},{len(msg.data)}\n", msg.data)
        conn.last_activity = now
        session = conn.sessions[dst]
        events = session.receive_data(msg.data)
        for ev in events:
            handler = _HANDLERS.get(type(ev))
            if handler is not None:
                handler(self, conn, dst, ev)
        if conn.alive and not conn.ended[dst]:
            self._flush(conn, dst)

    def drop(self, msg: Message) -> None:
        """Lose an intercepted message (counted and traced like a network loss)."""
        self.c["lost"] += 1
        self._record(f"L{self.vt.now},{msg.conn.id},{msg.src},{len(msg.data)}\n")

    def _on_failed(self, conn: Connection, side: int, ev: Event) -> None:
        assert isinstance(ev, SessionFailed)
        cause = type(ev.error).__name__ + (" (by peer)" if ev.by_peer else "")
        self.failures[cause] = self.failures.get(cause, 0) + 1
        self._end_side(conn, side)

    def _on_complete(self, conn: Connection, side: int, ev: Event) -> None:
        self._end_side(conn, side)

    def _on_closed(self, conn: Connection, side: int, ev: Event) -> None:
        assert isinstance(ev, ConnectionClosed)
        if not ev.complete and not conn.sessions[side].error:
            self.failures["closed incomplete"] = self.failures.get("closed incomplete", 0) + 1
        self._end_side(conn, side)

    def _end_side(self, conn: Connection, side: int) -> None:
        """This side is done (complete, failed or saw EOF): send what is queued, then EOF."""
        if conn.ended[side]:
            return
        s = conn.sessions[side]
        self._flush(conn, side)
        s.close()
        s.data_to_send()
        conn.ended[side] = True
        if conn.alive:
            self._send(Message(conn, side, b""))
        if conn.ended[1 - side]:
            self._release(conn)

    def _reset(self, conn: Connection, reason: str) -> None:
        """Tear a connection down at once (timeout, cut, crash): queued bytes are lost."""
        if not conn.alive:
            return
        for s in conn.sessions:
            s.close(reason)
            s.data_to_send()
        conn.ended[0] = conn.ended[1] = True
        self._record(f"R{self.vt.now},{conn.id},{reason}\n")
        self._release(conn)

    def _release(self, conn: Connection) -> None:
        conn.alive = False
        a, b = conn.nodes
        if a.conns.get(b.index) is conn:
            del a.conns[b.index]
        if b.conns.get(a.index) is conn:
            del b.conns[a.index]
        self._conns.pop(conn.id, None)
        c = self.c
        for s in conn.sessions:
            st = s.stats
            c["skew_rejections"] += st.skew_rejected
            c["entries_sent"] += st.entries_sent
            c["entries_changed"] += st.entries_changed
        if conn.kind == "gossip":
            a.gossip_busy = False
        elif conn.kind == "live":
            a.live_conns -= 1
            b.live_conns -= 1
            if a.state == UP:
                self._retry_live(a.index, b.index)

    def _idle_check(self, conn: Connection) -> None:
        if not conn.alive:
            return
        idle = int(self.cfg.idle_timeout_ms * 1000)
        now = self.vt.now
        sa, sb = conn.sessions
        if sa.settled and sb.settled:
            self._push(now + idle, self._idle_check, conn)
        elif now - conn.last_activity >= idle:
            self.c["timeouts"] += 1
            self._reset(conn, "idle timeout")
        else:
            self._push(conn.last_activity + idle, self._idle_check, conn)

    # --- gossip and live sessions ---------------------------------------------------------

    def _gossip_tick(self, node: SimNode) -> None:
        rng = self.sched_rng
        period = self.cfg.gossip_ms * 1000
        self._push(self.vt.now + int(period * (0.75 + 0.5 * rng.random())), self._gossip_tick, node)
        self._gossip_once(node)

    def _gossip_once(self, node: SimNode) -> None:
        if node.state != UP or node.gossip_busy:
            return
        i = node.index
        candidates = [j for j in range(len(self.nodes)) if j != i and j not in node.conns]
        if not candidates:
            return
        j = self.sched_rng.choice(candidates)
        conn = self.connect(i, j, kind="gossip", mode=self.cfg.gossip_mode)
        if conn is not None:
            node.gossip_busy = True

    def _live_targets(self, i: int) -> list[int]:
        ring = self.cfg.live_ring
        n = len(self.nodes) if ring is None else min(ring, len(self.nodes))
        if i >= n:
            return []
        k = min(self.cfg.live_peers, n - 1)
        return [(i + d) % n for d in range(1, k + 1)]

    def _start_live(self, node: SimNode) -> None:
        for j in self._live_targets(node.index):
            self._try_live((node.index, j))

    def _try_live(self, pair: tuple[int, int]) -> None:
        i, j = pair
        a = self.nodes[i]
        if a.state != UP or j in a.conns or self._stop:
            return
        if self.connect(i, j, kind="live", mode="both", live=True) is None:
            self._retry_live(i, j)

    def _retry_live(self, i: int, j: int) -> None:
        delay = self.cfg.live_retry_ms * (0.5 + self.sched_rng.random())
        self._push(self.vt.now + int(delay * 1000), self._try_live, (i, j))

    def _dirty(self, node: SimNode) -> None:
        if node.live_conns and not node.pump_pending:
            node.pump_pending = True
            self._push(self.vt.now + int(self.cfg.live_flush_ms * 1000), self._pump, node)

    def _pump(self, node: SimNode) -> None:
        node.pump_pending = False
        if node.state != UP:
            return
        for conn in list(node.conns.values()):
            if conn.kind == "live" and conn.alive:
                side = 0 if conn.nodes[0] is node else 1
                if not conn.ended[side]:
                    conn.sessions[side].local_changed()
                    self._flush(conn, side)

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
        for conn in list(node.conns.values()):
            self._reset(conn, f"{node.peer_id} {why}")
        store = node.store
        node.store = None
        node.state = DOWN
        self._up = None
        node.gossip_busy = False
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
        self._start_live(node)

    def _a_join(self, a: FaultAction) -> None:
        assert isinstance(a, Join)
        node = self.nodes[a.node]
        if node.state != PENDING:
            return
        self._open_store(node)
        self.c["joins"] += 1
        self._start_live(node)

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
        if self._conns:
            ids = list(self._conns)
            conn = self._conns[ids[self.sched_rng.randrange(len(ids))]]
            self.c["cuts"] += 1
            self._reset(conn, "connection cut")

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
        for node in self.nodes:
            jitter = int(self.sched_rng.random() * 20_000)
            self._push(self.vt.now + jitter, self._gossip_once, node)
        if self.progress is not None:
            self.progress("converging", 0, int(self.cfg.convergence_bound_ms))
        self._push(self.vt.now + int(self.cfg.check_ms * 1000), self._check_converged, None)

    def _check_converged(self, _: object) -> None:
        assert self._heal_us is not None
        if self.digests_equal():
            self._converged_us = self.vt.now
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
            for node in self.nodes:
                first = self.sched_rng.random() * cfg.gossip_ms * 1000
                self._push(int(first), self._gossip_tick, node)
                if not cfg.sync_writes:
                    first = self.sched_rng.random() * cfg.flush_ms * 1000
                    self._push(int(first), self._disk_tick, node)
                if node.state == UP:
                    self._start_live(node)
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
        for conn in list(self._conns.values()):
            self._reset(conn, "quiesce")
        self.sync_all(rounds=rounds)
        self.sync_disks()

    def _drain(self) -> None:
        """Run until no connection is open (idle checks end with their connection)."""
        limit = self.vt.now + int(self.cfg.convergence_bound_ms * 1000)
        while self._conns and self._heap and not self._stop:
            self._loop(min(limit, self._heap[0][0]))
            if self.vt.now >= limit:
                break
        for conn in list(self._conns.values()):
            self._reset(conn, "drain limit")

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
        for conn in list(self._conns.values()):
            for s in conn.sessions:
                self.c["skew_rejections"] += s.stats.skew_rejected
                s.stats.skew_rejected = 0
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
        for conn in list(self._conns.values()):
            conn.alive = False
        self._conns.clear()
        for node in self.nodes:
            if node.store is not None:
                node.store.close()
                node.store = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


_HANDLERS: dict[type, Callable[[Simulation, Connection, int, Event], None]] = {
    SessionFailed: Simulation._on_failed,
    SyncComplete: Simulation._on_complete,
    ConnectionClosed: Simulation._on_closed,
}
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
