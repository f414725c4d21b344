"""What a simulation run depends on (:class:`SimConfig`) and what it reports
(:class:`SimResult`), and the command line that replays a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from crdt_kv.errors import ConfigError
from crdt_kv.sim.workload import WorkloadMix
from crdt_kv.version import Resolver

__all__ = [
    "BACKENDS",
    "CONFLICT_MODES",
    "MAX_REPORTED_MISMATCHES",
    "SimConfig",
    "SimResult",
    "repro_command",
]

BACKENDS = ("memory", "rocksdb", "sqlite")
CONFLICT_MODES = ("lww", "siblings")
MAX_REPORTED_MISMATCHES = 50


@dataclass(slots=True)
class SimConfig:
    """Everything a run depends on besides the scenario's own choices.

    ``keys`` (key-space size) and ``duration_ms`` (length of the fault phase, over which
    the ``ops`` operations are spread as a Poisson process) are derived from ``nodes``
    and ``ops`` when left at ``None``. Scenarios may adjust any field in their setup.
    ``conflicts`` is the stores' conflict mode; ``"siblings"`` also adds sibling reads and
    merges to the workload and checks with the happened-before oracle.
    """

    scenario: str = "clean"
    nodes: int = 8
    ops: int = 2000
    seed: int = 1
    backend: str = "memory"
    conflicts: str = "lww"
    resolver: Resolver | None = None
    resolver_name: str | None = None
    resolver_screen: bool = True
    """Screen ``resolver`` for determinism before the run (:mod:`crdt_kv.sim.screen`).
    Off only in tests that show a scenario alone catches a bad resolver."""
    keys: int | None = None
    zipf_s: float = 1.0
    mix: WorkloadMix = field(default_factory=WorkloadMix)
    value_domain: int | None = None
    duration_ms: float | None = None
    gossip_ms: float = 1000.0
    gossip_mode: str = "both"
    gossip_fanout: int | None = None
    live_peers: int = 0
    live_ring: int | None = None
    live_flush_ms: float = 20.0
    backoff_base_ms: float = 100.0
    backoff_max_ms: float = 1000.0
    idle_timeout_ms: float = 2000.0
    verify_interval_ms: float = 5_000.0
    """A live link's verifying round every this long (``LinkConfig.verify_interval_s``,
    10 minutes in production, scaled down like the other times so runs exercise it)."""
    max_offset_ms: int = 500
    sync_writes: bool = True
    flush_ms: float = 200.0
    max_batch_entries: int = 1000
    window: int = 4
    convergence_bound_ms: float = 60_000.0
    check_ms: float = 50.0
    linger_ms: float = 0.0
    sample_ms: float | None = None
    gc_grace_ms: float | None = None
    """Run each node's collection policy with this grace (None: never collect)."""
    gc_interval_ms: float = 1000.0
    scrub_buckets: int = 64
    """Buckets each node's collection policy scrubs per interval (of 4096; 0: none)."""
    member_expiry_ms: float | None = None
    """Members silent this long stop holding the horizon back (None: the store default)."""

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
        if self.conflicts not in CONFLICT_MODES:
            raise ConfigError(
                f"unknown conflict mode {self.conflicts!r}; use one of {', '.join(CONFLICT_MODES)}"
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
        if not isinstance(self.resolver_screen, bool):
            raise ConfigError(f"resolver_screen must be a bool, got {self.resolver_screen!r}")
        if self.gc_grace_ms is not None and not self.gc_grace_ms >= 0:
            raise ConfigError(f"gc_grace_ms must be >= 0 or None, got {self.gc_grace_ms!r}")
        if self.member_expiry_ms is not None and not self.member_expiry_ms > 0:
            raise ConfigError(f"member_expiry_ms must be > 0, got {self.member_expiry_ms!r}")
        fanout = self.gossip_fanout
        if fanout is not None and (not isinstance(fanout, int) or fanout < 0):
            raise ConfigError(f"gossip_fanout must be an int >= 0, got {self.gossip_fanout!r}")
        for name in (
            "gossip_ms",
            "idle_timeout_ms",
            "check_ms",
            "convergence_bound_ms",
            "backoff_base_ms",
            "backoff_max_ms",
            "gc_interval_ms",
            "verify_interval_ms",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")

    def effective_fanout(self) -> int:
        """Round links per node besides its ring successor: ``gossip_fanout``; by default
        every other node in clusters of up to 8 (a full mesh, so a node can always reach
        a peer whose clock is within ``max_offset_ms`` of its own, as random gossip
        partners could) and none beyond (each extra link makes every entry arrive once
        more at every node, and the ring alone converges in a few seconds). Each node
        still starts about one round per ``gossip_ms``: the round interval of a link is
        ``gossip_ms`` times the node's number of round links."""
        if self.gossip_fanout is not None:
            return self.gossip_fanout
        return self.nodes - 2 if self.nodes <= 8 else 0

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
    conflicts: str
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
    merges: int
    sibling_keys: int
    sessions: int
    session_failures: dict[str, int]
    timeouts: int
    quiet_timeouts: int
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
    divergences: int
    """Sessions whose verification found clean replicas with different digests (counted at
    each end of a session)."""
    repairs: int
    """Reconciliations run inside sessions, first contact or after a divergence (counted at
    each end)."""
    rogue_nodes: list[str]
    rogue_writes: int
    writes_fenced: int
    """Client writes a node refused because its clock was judged out of bound with most
    of its peers (``ClockSkewError``; never acknowledged)."""
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
    if cfg.conflicts != "lww":
        parts.append(f"--conflicts {cfg.conflicts}")
    if cfg.keys is not None:
        parts.append(f"--keys {cfg.keys}")
    if cfg.backend != "memory":
        parts.append(f"--backend {cfg.backend}")
    if cfg.resolver_name:
        parts.append(f"--resolver {cfg.resolver_name}")
    return " ".join(parts)
