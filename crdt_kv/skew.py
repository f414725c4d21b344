"""Judging clock skew against the peers, not only against the local wall clock (spec
``hlc.md`` section "The odd one out"): pure, no I/O, no clock reads.

A receiver refuses a stamp more than ``max_offset_ms`` ahead of its wall clock. On its own
that rule cuts off a node whose clock is *behind* for good: every peer's stamp is "ahead"
to it, so every session it joins fails, while it keeps acknowledging local writes that can
never leave it. The judge keeps the offset each peer's Hello showed and decides who is the
odd one out:

- the peer's stamp is in bound: accept (as before);
- most peers measured recently are that far ahead too: *this* node is behind. It accepts
  stamps up to its measured lag further ahead (so it keeps pulling, and its clock advances
  by the HLC receive rule) and fences local writes (:meth:`crdt_kv.hlc.HLC.check_write`)
  until its wall clock is back in bound;
- otherwise the peer is ahead of most others and is refused, as before; with fewer than two
  peers measured nobody can tell which clock is wrong, so the stamp is refused too.

Independently, when most peers' clocks are more than ``max_offset_ms`` behind this node's
newest stamp, its stamps would be refused everywhere: local writes are fenced ("ahead")
until a majority measures in bound again. A Hello held up in transit shows a clock that was
behind by the time it arrives, so that verdict credits the Hello's *transit* bound (how long
before its arrival the connection began: it cannot have been sent earlier) and counts only a
lead no transit delay explains. The other verdicts need no credit: a delay makes a peer
look less far ahead, never further, so it can hide a fast peer for that long but never
invent one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from crdt_kv.hlc import HLC, LOGICAL_BITS

__all__ = ["DEFAULT_WINDOW_MS", "ClockJudge", "Sample"]

DEFAULT_WINDOW_MS = 10 * 60 * 1000
"""A peer's offset sample counts for this long after it was taken (by our wall clock)."""
MAX_SAMPLES = 4096
"""At most this many peers' samples are kept (the oldest go first)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What one Hello of a peer showed: ``offset_ms`` = the peer's stamp minus our wall
    clock (positive: the peer is ahead), ``lead_ms`` = our newest stamp minus the peer's
    stamp and minus ``transit_ms`` (positive: our stamps are ahead of its clock by at
    least that much, however long the Hello was in flight), taken at our wall time
    ``at_ms``; ``transit_ms`` is the bound on the Hello's time in flight that was credited."""

    offset_ms: int
    lead_ms: int
    at_ms: int
    transit_ms: int = 0


class ClockJudge:
    """The offsets measured per peer and the verdicts drawn from them (module docstring).

    Not locked itself: the store calls it under its commit lock.
    """

    __slots__ = ("_samples", "max_offset_ms", "window_ms")

    def __init__(self, *, max_offset_ms: int, window_ms: int = DEFAULT_WINDOW_MS) -> None:
        self.max_offset_ms = max_offset_ms
        self.window_ms = window_ms
        self._samples: dict[str, Sample] = {}

    @property
    def samples(self) -> dict[str, Sample]:
        """The latest sample of every peer measured (a copy)."""
        return dict(self._samples)

    def judge(self, peer: str, remote: int, clock: HLC, *, transit_ms: int = 0) -> str | None:
        """Record the sample a Hello from ``peer`` stamped ``remote`` gives, update the
        clock's lag and fence, and return why the stamp must be refused (None: accept it;
        the caller then merges it into ``clock`` by the receive rule).

        ``transit_ms``: how long the Hello may have been in flight, at most (the time since
        our side saw its connection begin; 0 when unknown, which credits nothing)."""
        if transit_ms < 0:
            raise ValueError(f"transit_ms of peer {peer!r}'s Hello is {transit_ms}, below 0")
        wall = clock.wall()
        remote_wall = remote >> LOGICAL_BITS
        lead = (clock.last >> LOGICAL_BITS) - remote_wall - transit_ms
        sample = Sample(remote_wall - wall, lead, wall, transit_ms)
        samples = self._samples
        samples.pop(peer, None)
        samples[peer] = sample
        if len(samples) > MAX_SAMPLES:
            del samples[next(iter(samples))]
        fresh = [s for s in samples.values() if abs(wall - s.at_ms) <= self.window_ms]
        bound = self.max_offset_ms
        self._fence_ahead(clock, fresh)
        behind = [s.offset_ms for s in fresh if s.offset_ms > bound]
        if 2 * len(behind) <= len(fresh) and clock.lag_ms and clock.fence is None:
            clock.lag_ms = 0  # most peers are in bound again: no extra tolerance
        if sample.offset_ms <= bound + clock.lag_ms:
            return None
        if len(fresh) < 2:
            return (
                f"its clock is {sample.offset_ms} ms ahead of ours (max_offset_ms={bound}) "
                "and no other peer was measured: cannot tell which clock is wrong"
            )
        if 2 * len(behind) > len(fresh):
            lag = int(statistics.median(behind))
            clock.lag_ms = max(clock.lag_ms, lag)
            clock.fence = ("behind", lag)
            return None if sample.offset_ms <= bound + clock.lag_ms else self._odd(sample, fresh)
        return self._odd(sample, fresh)

    def _odd(self, sample: Sample, fresh: list[Sample]) -> str:
        ahead = sum(1 for s in fresh if s.offset_ms > self.max_offset_ms)
        return (
            f"its clock is {sample.offset_ms} ms ahead of ours (max_offset_ms="
            f"{self.max_offset_ms}) and {ahead} of {len(fresh)} peers measured are that far "
            "ahead: its clock is the odd one out"
        )

    def _fence_ahead(self, clock: HLC, fresh: list[Sample]) -> None:
        leads = [s.lead_ms for s in fresh if s.lead_ms > self.max_offset_ms]
        if len(fresh) >= 2 and 2 * len(leads) > len(fresh):
            clock.fence = ("ahead", int(statistics.median(leads)))
        elif clock.fence is not None and clock.fence[0] == "ahead":
            clock.fence = None
