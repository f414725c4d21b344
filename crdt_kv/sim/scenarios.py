"""The scenario registry: named fault schedules over the same engine.

A scenario is a ``setup(sim)`` function run before any store opens. It may change the
network (latency, message faults), the nodes' clocks, ``sim.cfg`` fields (``max_offset_ms``,
``keys``, ``live_peers``, ...), mark nodes rogue or pending, and schedule fault actions
with :meth:`~crdt_kv.sim.runner.Simulation.schedule`, drawing every random choice from
``sim.fault_rng``. When the workload ends the engine stops all faults and heals by itself,
so a scenario only describes the fault phase, ``[0, sim.duration_ms)``.

Register a new one with the :func:`scenario` decorator::

    @scenario("my-case", "two partitions that never overlap")
    def _my_case(sim: ScenarioHost) -> None:
        sim.schedule(partition_plan(sim.fault_rng, sim.cfg.nodes, 0, sim.duration_ms))
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from crdt_kv.errors import ConfigError
from crdt_kv.sim.clocks import BASE_WALL_MS, SimClock
from crdt_kv.sim.faults import (
    Burst,
    ClockJump,
    FaultAction,
    Freeze,
    Isolate,
    Join,
    Quiet,
    Restore,
    Rot,
    Snapshot,
    Unfreeze,
    crash_plan,
    cut_plan,
    partition_plan,
)
from crdt_kv.sim.network import Latency, LinkFaults, Network
from crdt_kv.sim.workload import WorkloadMix, key_names

__all__ = [
    "SCENARIOS",
    "Scenario",
    "ScenarioConfig",
    "ScenarioHost",
    "ScenarioNode",
    "expand",
    "get_scenario",
    "scenario",
    "scenario_names",
]


class ScenarioConfig(Protocol):
    """The :class:`~crdt_kv.sim.runner.SimConfig` fields a setup may read and change."""

    nodes: int
    keys: int | None
    mix: WorkloadMix
    value_domain: int | None
    zipf_s: float
    gossip_ms: float
    live_peers: int
    live_ring: int | None
    idle_timeout_ms: float
    linger_ms: float
    max_offset_ms: int
    sync_writes: bool
    flush_ms: float
    gc_grace_ms: float | None
    gc_interval_ms: float
    member_expiry_ms: float | None
    scrub_buckets: int

    def effective_keys(self) -> int:
        """The key-space size the workload will use."""


class ScenarioNode(Protocol):
    """One simulated node as a setup sees it: only its wall clock."""

    @property
    def clock(self) -> SimClock:
        """The node's clock (offset, drift, jump, freeze)."""


class ScenarioHost(Protocol):
    """What a scenario's ``setup(sim)`` may use of the :class:`~crdt_kv.sim.Simulation`.

    Why a protocol: scenarios are registered in this module, which the engine imports to
    look them up; importing the engine back would make the two one import cycle. It also
    states the contract of a setup: schedule faults and tune the network, clocks and
    config before any store opens, nothing else.
    """

    unfreeze_on_heal: bool

    @property
    def cfg(self) -> ScenarioConfig:
        """The run's configuration (changes apply to this run only)."""

    @property
    def nodes(self) -> Sequence[ScenarioNode]:
        """Every node, by index."""

    @property
    def network(self) -> Network:
        """The simulated network: set ``latency`` and ``faults``."""

    @property
    def fault_rng(self) -> random.Random:
        """The only randomness a setup may draw from (it is part of the seed)."""

    @property
    def duration_ms(self) -> float:
        """Length of the fault phase in virtual ms."""

    def schedule(self, plan: Iterable[tuple[float, FaultAction]]) -> None:
        """Queue ``(virtual ms, action)`` pairs."""

    def schedule_final(self, actions: Iterable[FaultAction]) -> None:
        """Queue actions for the end of the fault phase, after the last client operation."""

    def set_rogue(self, index: int) -> None:
        """Mark node ``index`` as one whose writes every peer must refuse."""

    def set_pending(self, index: int) -> None:
        """Keep node ``index`` absent until a ``Join`` or the heal."""

    def watch_stamps(self) -> None:
        """Check that no key's state stamp ever goes back on a node (a resurrection)."""


Setup = Callable[[ScenarioHost], None]
HOUR_MS = 3_600_000
LIVE_RING_MAX = 8


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named fault schedule."""

    name: str
    description: str
    setup: Setup


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str) -> Callable[[Setup], Setup]:
    """Register ``setup`` under ``name`` (``all`` runs every registered one, in order)."""

    def register(fn: Setup) -> Setup:
        if name == "all" or name in SCENARIOS:
            raise ConfigError(f"scenario name {name!r} is reserved or already registered")
        SCENARIOS[name] = Scenario(name, description, fn)
        return fn

    return register


def scenario_names() -> list[str]:
    """Every registered scenario name, in registration order."""
    return list(SCENARIOS)


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; :class:`ConfigError` lists the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ConfigError(
            f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}, all"
        ) from None


def expand(name: str) -> list[str]:
    """``"all"`` -> every scenario; a single name -> ``[name]`` (checked)."""
    if name == "all":
        return scenario_names()
    return [get_scenario(name).name]


def _ntp_clocks(sim: ScenarioHost, *, spread_ms: int = 50, drift_ppm: int = 100) -> None:
    """Clocks as NTP keeps them: a few tens of ms apart, drifting slightly."""
    rng = sim.fault_rng
    for node in sim.nodes:
        node.clock.offset_ms = rng.randint(-spread_ms, spread_ms)
        node.clock.drift_ppm = rng.randint(-drift_ppm, drift_ppm)


@scenario(
    "clean",
    "no faults; gossip plus live sessions: a ring of every node up to 8 nodes, a live pair "
    "(nodes 0 and 1) in bigger clusters",
)
def _clean(sim: ScenarioHost) -> None:
    cfg = sim.cfg
    sim.network.latency = Latency(base_ms=1, jitter_ms=9)
    if cfg.live_peers == 0:
        cfg.live_peers = 1
    if cfg.live_ring is None and cfg.nodes > LIVE_RING_MAX:
        # A live link carries every write once per direction: a ring of n costs ~2n
        # applies per write, which dominates a big run; gossip covers the rest.
        cfg.live_ring = 2
    # After converging, stay quiet for three idle timeouts: live sessions must survive on
    # keep-alives (a driver that times quiet live sessions out fails this check).
    cfg.linger_ms = 3 * cfg.idle_timeout_ms
    _ntp_clocks(sim)


@scenario("flaky", "message loss, duplication, reordering, heavy-tailed latency, resets")
def _flaky(sim: ScenarioHost) -> None:
    sim.network.latency = Latency(base_ms=2, jitter_ms=30, tail_p=0.05, tail_ms=100)
    sim.network.faults = LinkFaults(loss=0.03, duplicate=0.02, reorder=0.03, reorder_ms=80)
    per_s = max(0.5, sim.cfg.nodes / 8)
    sim.schedule(cut_plan(sim.fault_rng, 0, sim.duration_ms, per_s=per_s))
    _ntp_clocks(sim)


@scenario("partition-heal", "the cluster splits into 2-3 groups several times, then heals")
def _partition_heal(sim: ScenarioHost) -> None:
    sim.network.latency = Latency(base_ms=1, jitter_ms=15)
    d = sim.duration_ms
    sim.schedule(partition_plan(sim.fault_rng, sim.cfg.nodes, 0.1 * d, d, episodes=3))
    _ntp_clocks(sim)


@scenario(
    "clock-skew",
    "clocks hours apart within max_offset (4 h), drift, a jump back and a freeze; one rogue "
    "node beyond max_offset whose stamps every peer must refuse",
)
def _clock_skew(sim: ScenarioHost) -> None:
    cfg, rng = sim.cfg, sim.fault_rng
    cfg.max_offset_ms = 4 * HOUR_MS
    spread = HOUR_MS * 5 // 4  # legit clocks within +-1h15m: pairwise < 2h30m
    legit = list(range(cfg.nodes))
    if cfg.nodes >= 3:
        rogue = cfg.nodes - 1
        legit.remove(rogue)
        sim.set_rogue(rogue)
        # Ahead of the fastest legit clock by 5 h > max_offset: refused by everyone.
        sim.nodes[rogue].clock.offset_ms = spread + cfg.max_offset_ms + HOUR_MS
    for i in legit:
        sim.nodes[i].clock.offset_ms = rng.randint(-spread, spread)
        sim.nodes[i].clock.drift_ppm = rng.randint(-2000, 2000)
    d = sim.duration_ms
    jumper, freezer = legit[0], legit[-1]
    sim.schedule([(0.5 * d, ClockJump(jumper, -HOUR_MS))])  # still within 3h45m of all
    sim.schedule([(0.3 * d, Freeze(freezer)), (0.6 * d, Unfreeze(freezer))])


@scenario(
    "clock-step",
    "mid-run one node's clock steps an hour behind and back, another's an hour ahead and "
    "back, a third's an hour behind for good: the ones behind keep pulling and refuse local "
    "writes, the one ahead is refused; an hour passes before the checks",
)
def _clock_step(sim: ScenarioHost) -> None:
    cfg, d, rng = sim.cfg, sim.duration_ms, sim.fault_rng
    sim.network.latency = Latency(base_ms=1, jitter_ms=10)
    _ntp_clocks(sim)
    order = rng.sample(range(cfg.nodes), min(3, cfg.nodes))
    stays = order[0]
    sim.schedule([(0.55 * d, ClockJump(stays, -HOUR_MS))])
    if len(order) == 3:
        back, ahead = order[1], order[2]
        sim.schedule([(0.2 * d, ClockJump(back, -HOUR_MS)), (0.5 * d, ClockJump(back, HOUR_MS))])
        sim.schedule([(0.35 * d, ClockJump(ahead, HOUR_MS)), (0.7 * d, ClockJump(ahead, -HOUR_MS))])
    # The node that was ahead keeps stamps an hour in the future (its clock never goes
    # back): peers refuse them until their clocks get there. Let that hour pass.
    sim.schedule_final([ClockJump(i, HOUR_MS + 1000) for i in range(cfg.nodes)])


@scenario(
    "ties",
    "every clock equal and frozen: HLC ties between peers on a tiny key space; two bursts "
    "where every node writes the same keys with the same stamps, the last one after the "
    "last client operation, so only the resolver (or peer id) decides the final state",
)
def _ties(sim: ScenarioHost) -> None:
    """Ties everywhere, and a final tied burst over every key that nothing overwrites.

    Why the final burst is scheduled with ``schedule_final`` and not at ``duration_ms``:
    client operations may run past the fault phase, and a write stamped after a burst
    replaces its tied winners. A resolver that answers inconsistently then went unnoticed
    whenever the workload ran late (about half the runs); now every key's final value is
    one of the burst's tied writes, so such a resolver makes the replicas disagree.
    """
    cfg, d = sim.cfg, sim.duration_ms
    for node in sim.nodes:
        node.clock.freeze(BASE_WALL_MS)
    sim.unfreeze_on_heal = False
    if cfg.keys is None:
        cfg.keys = max(4, min(12, cfg.effective_keys()))
    cfg.value_domain = 3
    cfg.mix = WorkloadMix(put=0.75, delete=0.15, batch=0.10, read=0.0)
    sim.network.latency = Latency(base_ms=1, jitter_ms=5)
    names = tuple(key_names(cfg.effective_keys()))
    sim.schedule([(0.5 * d, Burst(names[:3]))])
    sim.schedule_final([Burst(names)])


@scenario(
    "crash-restart",
    "nodes crash (sessions, in-flight messages and the Store object lost) and restart from "
    "their backend, some with the clock stepped back",
)
def _crash_restart(sim: ScenarioHost) -> None:
    cfg, d = sim.cfg, sim.duration_ms
    # WAN-like delays keep sessions open long enough that crashes hit them mid-stream.
    sim.network.latency = Latency(base_ms=10, jitter_ms=40, tail_p=0.02, tail_ms=100)
    _ntp_clocks(sim)
    sim.schedule(
        crash_plan(
            sim.fault_rng,
            range(cfg.nodes),
            0.05 * d,
            0.95 * d,
            crashes=max(2, cfg.nodes),
            downtime_ms=(200.0, min(3000.0, 0.3 * d)),
            clock_jump_back_ms=300,
        )
    )


@scenario("churn", "about a third of the nodes join late with empty stores, one only at the heal")
def _churn(sim: ScenarioHost) -> None:
    cfg, rng, d = sim.cfg, sim.fault_rng, sim.duration_ms
    sim.network.latency = Latency(base_ms=1, jitter_ms=10)
    _ntp_clocks(sim)
    late = sorted(rng.sample(range(1, cfg.nodes), max(1, cfg.nodes // 3)))
    for i in late:
        sim.set_pending(i)
    for i in late[:-1]:
        sim.schedule([(d * (0.1 + 0.8 * rng.random()), Join(i))])


@scenario(
    "power-loss",
    "like crash-restart, but disks are written back only every ~200 ms (no fsync per "
    "batch): each crash is a power cut that loses the unsynced tail of the node's log; "
    "only writes that became durable somewhere must survive",
)
def _power_loss(sim: ScenarioHost) -> None:
    sim.cfg.sync_writes = False
    _crash_restart(sim)


@scenario(
    "restore",
    "nodes are restored from plain copies of their disks taken earlier (same incarnation, "
    "an older log): peers must notice the rollback and nothing any other replica "
    "acknowledged may be lost",
)
def _restore(sim: ScenarioHost) -> None:
    cfg, rng, d = sim.cfg, sim.fault_rng, sim.duration_ms
    sim.network.latency = Latency(base_ms=2, jitter_ms=20)
    sim.network.faults = LinkFaults(loss=0.01, duplicate=0.005)
    _ntp_clocks(sim)
    sim.cfg.gossip_ms = min(sim.cfg.gossip_ms, 100.0)  # peers' cursors stay close to heads
    victims = rng.sample(range(cfg.nodes), max(1, cfg.nodes // 3))
    plan: list[tuple[float, FaultAction]] = []
    for i in victims:
        t_snap = d * (0.05 + 0.3 * rng.random())
        t_back = t_snap + d * (0.2 + 0.4 * rng.random())
        plan += [
            (t_snap, Snapshot(i)),
            (t_back - 1500.0, Quiet(i, True)),
            (t_back, Restore(i)),
        ]
    sim.schedule(plan)


@scenario(
    "deletes-gc",
    "a delete-heavy workload with tombstone collection on; nodes are cut off for longer "
    "than the member expiry: the others collect without them, and when they return "
    "nothing deleted may come back",
)
def _deletes_gc(sim: ScenarioHost) -> None:
    cfg, rng, d = sim.cfg, sim.fault_rng, sim.duration_ms
    cfg.mix = WorkloadMix(put=0.45, delete=0.35, batch=0.10, read=0.10)
    cfg.gossip_ms = min(cfg.gossip_ms, 100.0)  # members hear of each other well within expiry
    cfg.gc_grace_ms = 300.0  # covers the clocks' spread: a returning node writes above it
    cfg.gc_interval_ms = max(100.0, d / 40)
    expiry = cfg.member_expiry_ms = max(800.0, d / 4)
    sim.watch_stamps()
    sim.network.latency = Latency(base_ms=2, jitter_ms=15)
    _ntp_clocks(sim)
    away = rng.sample(range(cfg.nodes), max(1, cfg.nodes // 4))
    plan: list[tuple[float, FaultAction]] = []
    for i in away:
        t = d * (0.1 + 0.1 * rng.random())
        span = expiry * (2.0 + rng.random())
        plan += [(t - 0.08 * d, Quiet(i, True)), (t, Isolate(i, span))]
    sim.schedule(plan)


@scenario(
    "bitrot",
    "records vanish or turn unreadable behind the stores' backs on half the nodes during "
    "the run (light message loss, resets, collection on): each node's scrub must find them "
    "and quarantine their keys, absence must not win for them, and repair must heal them",
)
def _bitrot(sim: ScenarioHost) -> None:
    cfg, rng, d = sim.cfg, sim.fault_rng, sim.duration_ms
    sim.network.latency = Latency(base_ms=2, jitter_ms=20)
    sim.network.faults = LinkFaults(loss=0.01, duplicate=0.005)
    _ntp_clocks(sim)
    # Collection on with a short grace, so that the horizon passes the rotten states and
    # only the quarantine keeps peers from taking a lost key for a collected one.
    cfg.gc_grace_ms = 200.0
    cfg.gc_interval_ms = 500.0
    cfg.scrub_buckets = 512  # every node's whole store every 4 s
    # Rot leaves the digest as it was until a scrub finds it: run on after converging
    # for three scrub passes, so the last rot is found and repaired before the check.
    cfg.linger_ms = max(cfg.linger_ms, 12_000.0)
    sim.schedule(cut_plan(rng, 0, d, per_s=0.5))
    victims = rng.sample(range(cfg.nodes), max(2, cfg.nodes // 2))
    sim.schedule(
        (d * (0.2 + 0.75 * rng.random()), Rot(i, rng.randint(1, 3))) for i in victims for _ in "ab"
    )
    # When the clients stop, a tombstone lost on every replica that held it (no write of
    # the key follows): no peer can send its state, so only the members' "not held"
    # answers release its quarantine, and with it the hold on the horizon.
    sim.schedule_final([Rot(victims[0], 1, everywhere=True)])
