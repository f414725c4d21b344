"""When a replica raises its collection horizon and collects tombstones, sans-I/O.

One :class:`GcPolicy` per replica (a node, a simulated node). It asks for storage work as
:class:`CollectGarbage` requests, which the driver performs where it performs the rest of
the store's storage work (the trio node's storage worker thread, the simulator inline) and
hands back with :meth:`GcPolicy.storage_done`. Like :class:`~crdt_kv.protocol.PeerLink`,
it is driven by :meth:`GcPolicy.get_timer` / :meth:`GcPolicy.handle_timer` with ``now``
in seconds, and told of the links' events (:meth:`GcPolicy.link_event`):

- every ``interval_s`` the horizon is computed from the membership
  (:mod:`crdt_kv.horizon`, ``grace_s`` held back), raised on the store
  (``raise_gc_horizon``, monotone), ``gc`` is run, the next ``scrub_buckets`` of the
  4,096 buckets are scrubbed (``store.scrub``: rotten records quarantined, for repair to
  heal), so the whole store is checked every ``4096 / scrub_buckets`` intervals, and a
  store ``checkpoint`` is taken (so commits rarely take one on the commit path);
- when a link reports a caught-up batch (a pull completed, which may move the horizon),
  the horizon is raised soon, without collecting, at most once per ``raise_min_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdt_kv.errors import ConfigError
from crdt_kv.fingerprint import BUCKETS
from crdt_kv.horizon import DEFAULT_GC_GRACE_MS
from crdt_kv.protocol.events import BatchApplied
from crdt_kv.protocol.replica import Replica

__all__ = [
    "DEFAULT_GC_INTERVAL_S",
    "DEFAULT_SCRUB_BUCKETS",
    "CollectGarbage",
    "GcPolicy",
    "GcResult",
]

DEFAULT_GC_INTERVAL_S = 60.0
DEFAULT_SCRUB_BUCKETS = 64
"""Buckets scrubbed per collection interval: the whole store every 64 intervals."""


@dataclass(frozen=True, slots=True)
class GcResult:
    """What a :class:`CollectGarbage` did: the horizon in force and keys collected."""

    horizon: int
    collected: int
    quarantined: int = 0
    """Keys the scrub that ran with it found rotten (quarantined, for repair to heal)."""


@dataclass(frozen=True, slots=True)
class CollectGarbage:
    """Raise the horizon to what the membership allows; with ``collect``, run ``gc`` and
    take a store checkpoint."""

    grace_ms: int
    collect: bool
    limit: int | None = None
    scrub: tuple[int, int] = (0, 0)
    """Buckets ``[first, first + count)`` to scrub after collecting (count 0: none)."""

    @property
    def light(self) -> bool:
        """Never performed on an event loop: a collection may scan and write a lot."""
        return False

    def perform(self, replica: Replica) -> GcResult:
        """Compute and raise the horizon, then collect (may block)."""
        horizon = replica.raise_gc_horizon(replica.membership.horizon(self.grace_ms))
        collected = replica.gc(limit=self.limit) if self.collect else 0
        first, count = self.scrub
        rotten = replica.scrub(buckets=range(first, first + count)).quarantined if count else 0
        if self.collect:
            replica.checkpoint()  # off the commit path, on the storage worker
        return GcResult(horizon, collected, rotten)


class GcPolicy:
    """The collection policy of one replica (see the module doc). ``now``: creation time
    in seconds (the first collection is one interval later). ``limit``: most keys one
    ``gc`` call collects (None: all), so one request never holds the store for long."""

    def __init__(
        self,
        *,
        now: float,
        grace_s: float = DEFAULT_GC_GRACE_MS / 1000,
        interval_s: float = DEFAULT_GC_INTERVAL_S,
        raise_min_s: float | None = None,
        limit: int | None = 10_000,
        scrub_buckets: int = DEFAULT_SCRUB_BUCKETS,
    ) -> None:
        if not grace_s >= 0 or not interval_s > 0:
            raise ConfigError(
                f"need gc_grace_s >= 0 and gc_interval_s > 0, got {grace_s!r}, {interval_s!r}"
            )
        self.grace_ms = int(grace_s * 1000)
        self.interval_s = interval_s
        self.raise_min_s = interval_s / 10 if raise_min_s is None else raise_min_s
        self.limit = limit
        if not 0 <= scrub_buckets <= BUCKETS:
            raise ConfigError(f"scrub_buckets must be in 0..{BUCKETS}, got {scrub_buckets!r}")
        self.scrub_buckets = scrub_buckets
        self.quarantined = 0
        self._scrub_next = 0
        self.horizon = 0
        self.collected = 0
        self.runs = 0
        self._next_gc = now + interval_s
        self._raise_at: float | None = None
        self._last_raise = -float("inf")
        self._busy: CollectGarbage | None = None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None while a request runs)."""
        if self._busy is not None:
            return None
        return self._next_gc if self._raise_at is None else min(self._next_gc, self._raise_at)

    def handle_timer(self, now: float) -> CollectGarbage | None:
        """The storage request due at ``now`` (perform it, then :meth:`storage_done`)."""
        if self._busy is not None:
            return None
        if now >= self._next_gc:
            self._next_gc = now + self.interval_s
            self._raise_at = None
            n = self.scrub_buckets
            request = CollectGarbage(self.grace_ms, True, self.limit, (self._scrub_next, n))
            self._scrub_next = (self._scrub_next + n) % BUCKETS
        elif self._raise_at is not None and now >= self._raise_at:
            self._raise_at = None
            request = CollectGarbage(self.grace_ms, False)
        else:
            return None
        self._last_raise = now
        self._busy = request
        return request

    def storage_done(self, request: CollectGarbage, result: GcResult | None) -> None:
        """The request was performed (``result`` None: it failed; the next interval
        tries again)."""
        if request is not self._busy:
            return
        self._busy = None
        if result is not None:
            self.runs += 1
            self.horizon = max(self.horizon, result.horizon)
            self.collected += result.collected
            self.quarantined += result.quarantined
            if request.limit is not None and result.collected >= request.limit:
                self._next_gc = self._last_raise  # more to collect: go on at once

    def link_event(self, event: object, now: float) -> None:
        """A link's event: a caught-up batch (a completed pull) schedules a raise."""
        if isinstance(event, BatchApplied) and event.caught_up and self._raise_at is None:
            self._raise_at = max(now, self._last_raise + self.raise_min_s)
