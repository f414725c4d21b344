"""Exponential backoff with jitter for reconnecting to peers.

Why jitter: when a node restarts, every peer that lost it retries; without randomness they
all retry in lock step and hammer it at the same instants. Randomness comes from an
injected :class:`random.Random`, so tests and simulations replay exactly.
"""

from __future__ import annotations

import random

from crdt_kv.errors import ConfigError

__all__ = ["Backoff"]


class Backoff:
    """Delays ``base * factor**n`` capped at ``maximum``, each scaled by a random factor.

    The scale is drawn uniformly from ``(1 - jitter, 1]`` ("equal jitter" for
    ``jitter=0.5``): the delay never exceeds the cap and, for ``jitter < 1``, never
    collapses to zero, so a dead peer costs at most one connection attempt per
    ``maximum * (1 - jitter)`` seconds.
    :meth:`reset` after a success starts again from ``base``.
    """

    def __init__(
        self,
        *,
        base: float = 0.2,
        factor: float = 2.0,
        maximum: float = 30.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not base > 0 or not maximum >= base:
            raise ConfigError(f"backoff needs 0 < base <= maximum, got {base!r}, {maximum!r}")
        if not factor >= 1:
            raise ConfigError(f"backoff factor must be >= 1, got {factor!r}")
        if not 0 <= jitter <= 1:
            raise ConfigError(f"backoff jitter must be in [0, 1], got {jitter!r}")
        self.base = base
        self.factor = factor
        self.maximum = maximum
        self.jitter = jitter
        self.rng = rng if rng is not None else random.Random()
        self.attempts = 0

    def peek(self) -> float:
        """The un-jittered delay the next :meth:`next` call scales."""
        # The power overflows a float for large factors or attempt counts; past the cap
        # the delay is the cap anyway, so stop multiplying once it is reached.
        delay = self.base
        for _ in range(min(self.attempts, 64)):
            delay *= self.factor
            if delay >= self.maximum:
                return float(self.maximum)
        return float(min(self.maximum, delay))

    def next(self) -> float:
        """The delay before the next attempt (seconds); counts one more failure."""
        delay = self.peek() * (1.0 - self.jitter * self.rng.random())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``base`` again."""
        self.attempts = 0
