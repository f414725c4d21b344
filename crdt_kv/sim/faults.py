"""Fault actions and generators of timed fault plans.

A scenario describes its faults as a list of ``(time_ms, action)`` pairs built up front
from the run's fault generator, so a plan is part of what the seed determines. The engine
applies each action at its virtual time (:meth:`crdt_kv.sim.runner.Simulation.apply`).
Actions are frozen dataclasses; plans are plain lists that scenarios may combine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from crdt_kv.sim.network import LinkFaults

__all__ = [
    "Burst",
    "ClockJump",
    "Crash",
    "Cut",
    "FaultAction",
    "Freeze",
    "Heal",
    "Join",
    "Partition",
    "Plan",
    "Restart",
    "Rot",
    "SetLinkFaults",
    "Shutdown",
    "Unfreeze",
    "crash_plan",
    "cut_plan",
    "partition_plan",
    "random_groups",
]


@dataclass(frozen=True, slots=True)
class Partition:
    """Split the network into these groups (unlisted nodes form one more group)."""

    groups: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class Heal:
    """Remove every partition."""


@dataclass(frozen=True, slots=True)
class Crash:
    """Kill a node: sessions, in-flight messages and its Store object are lost."""

    node: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stop a node cleanly: ``Store.close()`` (sessions end, the open marker is cleared)
    and its disk written back; a :class:`Restart` brings it up again."""

    node: int


@dataclass(frozen=True, slots=True)
class Restart:
    """Reopen a crashed node from its backend; ``clock_jump_ms`` steps its clock first."""

    node: int
    clock_jump_ms: int = 0


@dataclass(frozen=True, slots=True)
class Join:
    """Bring a not-yet-started node up with an empty store."""

    node: int


@dataclass(frozen=True, slots=True)
class ClockJump:
    """Step a node's wall clock by ``delta_ms`` (negative: backwards)."""

    node: int
    delta_ms: int


@dataclass(frozen=True, slots=True)
class Freeze:
    """Hold a node's wall clock at its current reading."""

    node: int


@dataclass(frozen=True, slots=True)
class Unfreeze:
    """Let a frozen wall clock run again."""

    node: int


@dataclass(frozen=True, slots=True)
class Burst:
    """Every up node writes ``keys`` (in this order, one batch each) at one instant with
    the *same* stamps: each clock is first frozen at one common reading above every
    node's HLC, so each node's batch is stamped ``(wall, 0), (wall, 1), ...``. Every key
    then ends the burst tied between all writers, and only the resolver (or the peer-id
    order) can pick the winner: a resolver that answers inconsistently makes the
    replicas diverge. The clocks stay frozen at that reading.
    """

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Copy what a node's disk holds durably, as a backup of its directory would."""

    node: int


@dataclass(frozen=True, slots=True)
class Restore:
    """Kill a node, put its disk back to its :class:`Snapshot` (same incarnation: a
    plain copy) and start it again. It waits (retrying every 250 ms) until every version
    the node holds is also held or superseded on another up node, so no write that only
    this node held is lost by the restore (the oracle expects every acknowledged write);
    a :class:`Quiet` before it pauses the node's clients so that this happens. The
    restored node's clients resume at once while it and one other node are cut off from
    the rest for 1.5 s: it writes, and pulls that node, at sequences the rest had
    already passed."""

    node: int


@dataclass(frozen=True, slots=True)
class Isolate:
    """Cut a node off from every other for ``span_ms``, once everything it holds is held
    by every other up node (retrying every 250 ms): long enough, it expires from the
    others' membership and they collect without it. (A write of an expiring member that
    reached only some members may be refused by the others once their horizon passes it:
    the known limit of member expiry, ``spec/data-model.md`` section 19.) Its clients
    resume when it returns (pause them before with :class:`Quiet`, so that its writes
    reach the others first)."""

    node: int
    span_ms: float


@dataclass(frozen=True, slots=True)
class Quiet:
    """Pause (``on``) or resume a node's clients: their operations are not performed."""

    node: int
    on: bool


@dataclass(frozen=True, slots=True)
class Rot:
    """Bit rot on a node's disk: ``records`` of its records, picked by the fault generator
    among those whose state another up node also holds (or supersedes), each either
    vanishes or is overwritten with bytes that do not parse, behind the store's back (its
    index and change-log entries stay). The scrub must find them and repair heal them.

    ``everywhere``: instead, one key that every node holds deleted or not at all (all
    nodes up; this node's tombstone stamped over 300 ms ago) vanishes from every one of
    them: a key no replica holds any more, whose quarantine repair must release
    (``data-model.md`` section 20)."""

    node: int
    records: int = 2
    everywhere: bool = False


@dataclass(frozen=True, slots=True)
class Cut:
    """Reset one open connection, picked by the network generator (none open: nothing)."""


@dataclass(frozen=True, slots=True)
class SetLinkFaults:
    """Change the per-message fault probabilities."""

    faults: LinkFaults


FaultAction = (
    Partition
    | Heal
    | Crash
    | Restart
    | Join
    | ClockJump
    | Freeze
    | Unfreeze
    | Cut
    | SetLinkFaults
    | Burst
    | Shutdown
    | Snapshot
    | Restore
    | Quiet
    | Isolate
    | Rot
)
Plan = list[tuple[float, FaultAction]]


def random_groups(rng: random.Random, nodes: Sequence[int], k: int) -> tuple[tuple[int, ...], ...]:
    """Split ``nodes`` into ``k`` non-empty random groups (``k`` capped at ``len(nodes)``)."""
    order = list(nodes)
    rng.shuffle(order)
    k = max(1, min(k, len(order)))
    groups: list[list[int]] = [[order[i]] for i in range(k)]
    for n in order[k:]:
        groups[rng.randrange(k)].append(n)
    return tuple(tuple(sorted(g)) for g in groups)


def partition_plan(
    rng: random.Random,
    nodes: int,
    start_ms: float,
    end_ms: float,
    *,
    episodes: int = 3,
    max_groups: int = 3,
) -> Plan:
    """``episodes`` partitions of random groups in ``[start_ms, end_ms)``; the last one
    lasts until ``end_ms`` (the engine heals everything when faults stop)."""
    plan: Plan = []
    if nodes < 2 or episodes < 1 or end_ms <= start_ms:
        return plan
    span = (end_ms - start_ms) / episodes
    for i in range(episodes):
        t0 = start_ms + i * span + rng.random() * span * 0.2
        plan.append((t0, Partition(random_groups(rng, range(nodes), rng.randint(2, max_groups)))))
        if i < episodes - 1:
            plan.append((t0 + span * (0.4 + 0.4 * rng.random()), Heal()))
    return plan


def crash_plan(
    rng: random.Random,
    nodes: Sequence[int],
    start_ms: float,
    end_ms: float,
    *,
    crashes: int,
    downtime_ms: tuple[float, float] = (200.0, 3000.0),
    clock_jump_back_ms: int = 0,
) -> Plan:
    """``crashes`` crash/restart pairs at random times on random ``nodes``.

    A node is not crashed again while down. Each restart may step the node's clock back by
    up to ``clock_jump_back_ms`` (a reboot with a bad RTC: the HLC must not go backwards).
    """
    plan: Plan = []
    if not nodes or crashes < 1 or end_ms <= start_ms:
        return plan
    down_until: dict[int, float] = {}
    times = sorted(start_ms + rng.random() * (end_ms - start_ms) for _ in range(crashes))
    for t in times:
        candidates = [n for n in nodes if down_until.get(n, -1.0) < t]
        if not candidates:
            continue
        n = rng.choice(candidates)
        back = rng.randint(0, clock_jump_back_ms) if clock_jump_back_ms else 0
        up = t + rng.uniform(*downtime_ms)
        down_until[n] = up
        plan.append((t, Crash(n)))
        plan.append((up, Restart(n, -back)))
    return plan


def cut_plan(rng: random.Random, start_ms: float, end_ms: float, *, per_s: float) -> Plan:
    """Connection resets as a Poisson process of ``per_s`` per virtual second."""
    plan: Plan = []
    if per_s <= 0:
        return plan
    t = start_ms
    while True:
        t += rng.expovariate(per_s) * 1000
        if t >= end_ms:
            return plan
        plan.append((t, Cut()))
