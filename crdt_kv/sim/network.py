"""The simulated network: latency distributions, message faults and partitions.

A connection carries the bytes each :class:`~crdt_kv.protocol.Session` hands over from
``data_to_send()`` as one *message* (a TCP segment in spirit: whole protocol frames).
Messages of one direction arrive in order unless a fault says otherwise. The faults act
per message, between the two sessions: *loss* (the message vanishes: the stream stalls or
the receiver sees a gap), *duplication* (a second copy arrives later), *reordering* (the
message is held back so later ones overtake it). A real TCP stream never does these
things; the session is built for such a stream and fails closed when it sees them, which
is what the simulator checks: the failure is counted, the connection torn down, and the
next session resumes from the durable cursor. *Partitions* split the nodes into groups;
nothing crosses between groups (in-flight messages are dropped on arrival, new
connections are refused).

Everything random here draws from the :class:`random.Random` it is given.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Latency", "LinkFaults", "Network"]


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay distribution in milliseconds.

    ``base_ms + uniform(0, jitter_ms)``, plus with probability ``tail_p`` an exponential
    extra delay of mean ``tail_ms`` (a heavy tail: queues, retransmits, GC pauses).
    """

    base_ms: float = 1.0
    jitter_ms: float = 4.0
    tail_p: float = 0.0
    tail_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("base_ms", "jitter_ms", "tail_ms"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"latency {name} must be a finite number >= 0, got {v!r}")
        if not 0 <= self.tail_p <= 1:
            raise ValueError(f"latency tail_p must be in [0, 1], got {self.tail_p!r}")

    def sample_us(self, rng: random.Random) -> int:
        """One delay in integer microseconds (at least 1)."""
        d = self.base_ms + rng.random() * self.jitter_ms
        if self.tail_p and rng.random() < self.tail_p:
            d += rng.expovariate(1.0 / self.tail_ms) if self.tail_ms else 0.0
        return max(1, int(d * 1000))


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Per-message fault probabilities (0 = never) while faults are active.

    ``reorder_ms`` is how long a reordered (held-back) message or a duplicate copy waits
    on top of its normal delay, uniformly in ``(0, reorder_ms]``. Connection resets are
    planned separately (:func:`crdt_kv.sim.faults.cut_plan`).
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 50.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} probability must be in [0, 1], got {v!r}")
        if self.reorder_ms < 0:
            raise ValueError(f"reorder_ms must be >= 0, got {self.reorder_ms!r}")

    @property
    def active(self) -> bool:
        """True when any message fault can happen."""
        return bool(self.loss or self.duplicate or self.reorder)


NO_FAULTS = LinkFaults()


@dataclass(slots=True)
class Network:
    """Latency, faults and partitions of the simulated network.

    :meth:`fate` decides what happens to one message; the engine schedules the arrivals.
    ``groups[i]`` is node ``i``'s partition group (``None``: fully connected).
    """

    nodes: int
    latency: Latency = field(default_factory=Latency)
    faults: LinkFaults = NO_FAULTS
    groups: list[int] | None = None

    def reachable(self, a: int, b: int) -> bool:
        """True when nodes ``a`` and ``b`` are in the same partition group."""
        g = self.groups
        return g is None or g[a] == g[b]

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split the nodes: each listed group can talk only within itself.

        Nodes not listed form one more group together.
        """
        mapping = [-1] * self.nodes
        for gi, members in enumerate(groups):
            for m in members:
                if not 0 <= m < self.nodes:
                    raise ValueError(f"node index {m} is outside 0..{self.nodes - 1}")
                if mapping[m] != -1:
                    raise ValueError(f"node {m} is listed in two partition groups")
                mapping[m] = gi
        rest = len(groups)
        self.groups = [rest if g == -1 else g for g in mapping]

    def heal(self) -> None:
        """Remove every partition."""
        self.groups = None

    def describe_partition(self) -> list[list[int]]:
        """The current groups as sorted lists of node indexes (one group when healed)."""
        if self.groups is None:
            return [list(range(self.nodes))]
        by: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups):
            by.setdefault(g, []).append(i)
        return [by[g] for g in sorted(by)]

    def fate(self, rng: random.Random) -> tuple[int, ...]:
        """Decide one message's fate: a tuple of ``(delay_us, flags)`` codes.

        Returns ``()`` when the message is lost; otherwise one entry per copy that will
        arrive. An entry is a delay in microseconds, negated when that copy is *out of
        order* (it must not be clamped behind the stream's earlier messages, nor hold back
        later ones).
        """
        f = self.faults
        d = self.latency.sample_us(rng)
        if not (f.loss or f.duplicate or f.reorder):
            return (d,)
        if f.loss and rng.random() < f.loss:
            return ()
        extra = max(1, int(f.reorder_ms * 1000))
        first = d
        if f.reorder and rng.random() < f.reorder:
            first = -(d + rng.randint(1, extra))
        if f.duplicate and rng.random() < f.duplicate:
            return (first, -(d + rng.randint(1, extra)))
        return (first,)
