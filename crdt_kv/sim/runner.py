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

import os
import random
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import crdt_kv
from crdt_kv.errors import ConfigError
from crdt_kv.protocol import LinkRole
from crdt_kv.sim.actions import FaultActions
from crdt_kv.sim.causal_oracle import CausalOracle
from crdt_kv.sim.clients import Clients
from crdt_kv.sim.clocks import SimClock
from crdt_kv.sim.collect import Collection
from crdt_kv.sim.config import (
    BACKENDS,
    CONFLICT_MODES,
    SimConfig,
    SimResult,
    repro_command,
)
from crdt_kv.sim.deliveries import Deliveries
from crdt_kv.sim.disk import SimDisk
from crdt_kv.sim.engine import Engine
from crdt_kv.sim.faults import (
    FaultAction,
    Join,
    Plan,
    Restart,
)
from crdt_kv.sim.links import Connection, LinkShell, Message
from crdt_kv.sim.network import NO_FAULTS, Network
from crdt_kv.sim.nodes import DOWN, PENDING, UP, SimNode
from crdt_kv.sim.oracle import Oracle
from crdt_kv.sim.results import Reporting
from crdt_kv.sim.screen import screen
from crdt_kv.sim.stampwatch import StampWatch
from crdt_kv.sim.topology import Topology
from crdt_kv.sim.workload import Workload
from crdt_kv.version import Resolver

__all__ = [
    "BACKENDS",
    "CONFLICT_MODES",
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


class Simulation(Topology, Collection, Engine, Clients, FaultActions, Reporting):
    """A cluster of real stores over a simulated network, driven by virtual time.

    ``run()`` performs a whole scenario. Tests can also drive it by hand: call
    :meth:`open_nodes`, set :attr:`intercept` to receive every :class:`Message` instead of
    the network delivering it, then use :meth:`write`, :meth:`connect`, :meth:`deliver`,
    :meth:`drop`, :meth:`apply`, :meth:`advance`, :meth:`sync_all` and :meth:`check`.
    """

    def __init__(self, cfg: SimConfig, *, progress: ProgressFn | None = None) -> None:
        cfg.validate()
        super().__init__()
        self.cfg = cfg
        self.command = repro_command(cfg)
        """The command that replays this run (taken before a scenario adjusts ``cfg``)."""
        self.progress = progress
        master = random.Random(cfg.seed)
        self.net_rng = random.Random(master.getrandbits(64))
        self.fault_rng = random.Random(master.getrandbits(64))
        self.work_rng = random.Random(master.getrandbits(64))
        self.sched_rng = random.Random(master.getrandbits(64))
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
        self.causal: CausalOracle | None = None
        """The ``siblings`` mode's oracle (``lww`` mode: None, ``oracle`` checks)."""
        if cfg.conflicts == "siblings":
            self.causal = CausalOracle(cfg.nodes, cfg.resolver)
            self.links.observer = Deliveries(self.causal)
        self.unfreeze_on_heal = True
        self.watch: StampWatch | None = None
        """Set (by a scenario) to check that no key's state stamp ever goes back on a node."""
        self.lingering = False
        self._auto = False
        self._targets: dict[int, tuple[list[int], list[int]]] = {}
        self._ring: dict[int, int] | None = None
        self.accept_config = self._round_cfg = self._live_cfg = self._link_config(live=True)
        self.duration_ms = cfg.effective_duration_ms()
        self._tmp: str | None = None
        self._plan: Plan = []
        self._final: list[FaultAction] = []
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
        self._div_members: tuple[int, ...] | None = None
        self._hlc_examples: list[str] = []
        self.error: str | None = None
        self.screened = False  # run() screened the resolver: check resolver_screened
        self.screen_error: str | None = None  # why it failed the screen
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
                "divergences",
                "repairs",
                "rogue_writes",
                "writes_fenced",
                "bursts",
                "power_cuts",
                "shutdowns",
                "snapshots",
                "restores",
                "restore_waits",
                "isolations",
                "isolate_waits",
                "unsynced_reverted",
                "hlc_rewinds",
                "hlc_violations",
                "unavailable",
                "entries_sent",
                "entries_changed",
                "merges",
                "merges_dropped",
                "collected",
                "rotten",
                "garbled",
                "quarantined",
                "rot_errors",
                "rotten_everywhere",
            ),
            0,
        )
        self.failures: dict[str, int] = {}

    # --- scheduling ---------------------------------------------------------------------

    def schedule(self, plan: Iterable[tuple[float, FaultAction]]) -> None:
        """Add timed fault actions (applied only during the fault phase)."""
        for t, action in plan:
            self._plan.append((t, action))
            self.at(t, self._planned, action)

    def _planned(self, action: FaultAction) -> None:
        if not self._quiesced:
            self.apply(action)

    def schedule_final(self, actions: Iterable[FaultAction]) -> None:
        """Apply ``actions`` just before the heal, after the last client operation (which
        may come after ``duration_ms``), so nothing the workload writes comes after them."""
        self._final.extend(actions)

    # --- nodes ------------------------------------------------------------------------------

    def set_rogue(self, index: int) -> None:
        """Mark a node whose clock is beyond ``max_offset``: its writes must be refused
        everywhere, so it is left out of the convergence and oracle checks."""
        self.nodes[index].rogue = True

    def watch_stamps(self) -> None:
        """Check that no key's state stamp ever goes back on a node (a resurrection)."""
        self.watch = StampWatch()

    def set_pending(self, index: int) -> None:
        """Keep a node out of the cluster until a :class:`Join` (or the heal)."""
        self.nodes[index].state = PENDING
        self._up = None

    def open_nodes(self) -> None:
        """Open a store on every node that is not pending."""
        if self.cfg.backend != "memory" and self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="crdt_kv-sim-")
        self.accept_config = self._live_cfg = self._link_config(live=True)
        per_node = 1 + min(self.cfg.effective_fanout(), max(0, len(self.nodes) - 2))
        self._round_cfg = self._link_config(
            live=False, mode=self.cfg.gossip_mode, period_ms=self.cfg.gossip_ms * per_node
        )
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
            "conflicts": cfg.conflicts,
        }
        if cfg.member_expiry_ms is not None:
            common["member_expiry_s"] = cfg.member_expiry_ms / 1000
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
        if self.watch is not None:
            if node.power_lost:
                self.watch.forget(node.peer_id)
            store.on_change(self.watch.listener(node.peer_id))
        last = store.hlc.last
        if node.power_lost:
            # Not power safe by contract: stamps of lost writes may be issued again (the
            # new incarnation and the total order on (peer, deleted, value) cover it).
            node.power_lost = False
            if self.causal is not None:
                self.causal.reload(node.index, store.raw_changes(0))
            if last < node.last_write_hlc:
                self.c["hlc_rewinds"] += 1
                node.last_write_hlc = last
        if last < node.last_write_hlc:
            self._hlc_violation(
                node, f"reopened at hlc {last} below its write {node.last_write_hlc}"
            )
        node.hlc_seen = last
        self._gc_open(node)

    def _hlc_violation(self, node: SimNode, what: str) -> None:
        self.c["hlc_violations"] += 1
        if len(self._hlc_examples) < 10:
            self._hlc_examples.append(f"{node.peer_id} at {self.now_ms:.1f} ms: {what}")

    # --- links and connections ------------------------------------------------------

    @property
    def intercept(self) -> Callable[[Message], object] | None:
        """When set, every message goes to this callable instead of the network."""
        return self.links.intercept

    @intercept.setter
    def intercept(self, fn: Callable[[Message], object] | None) -> None:
        self.links.intercept = fn

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
            self.push(self.vt.now + int(gap * 1_000_000), self._op_tick, None)
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
        for action in self._final:
            self.apply(action)
        self.heal_all()
        self._heal_us = self.vt.now
        self.record(f"H{self.vt.now}\n")
        now = self.vt.now / 1_000_000
        for node in self.nodes:
            for sl in list(node.links):
                if sl.kind != "accept":
                    sl.link.dial_now(now)
                    self.links.service(sl)
        if self.progress is not None:
            self.progress("converging", 0, int(self.cfg.convergence_bound_ms))
        self.push(self.vt.now + int(self.cfg.check_ms * 1000), self._check_converged, None)

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
        self.push(self.vt.now + int(self.cfg.check_ms * 1000), self._check_converged, None)

    def run(self, scenario_setup: Callable[[Simulation], None] | None = None) -> SimResult:
        """Run the whole scenario and return its result (errors are reported, not raised).
        A resolver that fails the screen (:mod:`crdt_kv.sim.screen`) is the error; no run."""
        cfg = self.cfg
        try:
            self.screened = cfg.resolver is not None and cfg.resolver_screen
            self.screen_error = screen(cfg, [n.peer_id for n in self.nodes])
            if self.screen_error is not None:  # reported; the run is not started
                self.error = self.screen_error
                return self.result(check=False)
            if scenario_setup is not None:
                scenario_setup(self)
            self.open_nodes()
            self._workload = Workload(
                self.work_rng,
                keys=cfg.effective_keys(),
                zipf_s=cfg.zipf_s,
                mix=cfg.mix,
                value_domain=cfg.value_domain,
                siblings=cfg.conflicts == "siblings",
            )
            self._op_rate = cfg.ops / (self.duration_ms / 1000) if cfg.ops else 0.0
            self._auto = True
            for node in self.nodes:
                if not cfg.sync_writes:
                    first = self.sched_rng.random() * cfg.flush_ms * 1000
                    self.push(int(first), self._disk_tick, node)
                self._start_links(node)
            if cfg.ops:
                self.push(0, self._op_tick, None)
            else:
                self.at(self.duration_ms, self._heal, None)
            if cfg.sample_ms:
                self.push(0, self._sample, None)
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


def run(
    scenario: str = "clean",
    *,
    nodes: int = 8,
    ops: int = 2000,
    seed: int = 1,
    backend: str = "memory",
    conflicts: str = "lww",
    resolver: Resolver | None = None,
    resolver_name: str | None = None,
    keys: int | None = None,
    sample_ms: float | None = None,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> SimResult:
    """Run one scenario and return its :class:`SimResult`.

    ``scenario`` names a registered scenario (:data:`crdt_kv.sim.SCENARIOS`); ``"all"`` is
    not accepted here (use :func:`crdt_kv.sim.run_suite`). ``conflicts="siblings"`` runs
    it in the ``siblings`` conflict mode (module doc of
    :mod:`crdt_kv.sim.causal_oracle`). ``overrides`` set any other
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
        conflicts=conflicts,
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
