"""The clock methods of :class:`~crdt_kv.store.Store`: HLC stamps for Hellos and the
receive rule for peers' stamps, judged against the other peers (:mod:`crdt_kv.skew`)."""

from __future__ import annotations

from crdt_kv.skew import ClockJudge
from crdt_kv.store.writes import Writer

__all__ = ["ClockApi"]


class ClockApi:
    """A base class of the store (so the store module stays small); every method runs
    under the store's commit lock, so clock updates serialize with commits."""

    _w: Writer

    def clock_now(self) -> int:
        """A fresh HLC stamp (for a replication Hello), issued under the commit lock."""
        return self._w.clock_now()

    def observe_clock(self, stamp: int, *, peer: str | None = None, transit_ms: int = 0) -> None:
        """Merge a remote HLC stamp into the clock (the receive rule), under the commit lock.

        Raises :class:`~crdt_kv.errors.ClockSkewError` and leaves the clock unchanged when
        ``stamp`` is too far ahead of the local wall clock, as ``store.hlc.update`` does.
        With ``peer`` (the stamp of that peer's Hello) the store judges the skew against
        its peers first (:mod:`crdt_kv.skew`): a node behind most of its peers accepts the
        stamp and fences its local writes instead of being cut off. ``transit_ms`` bounds
        how long that Hello was in flight (the time since the connection began; 0: not
        known): a Hello that late is not taken for a peer clock that far behind ours.
        """
        self._w.observe_clock(stamp, peer, transit_ms)

    @property
    def clock_judge(self) -> ClockJudge:
        """The per-peer clock offsets this store measured and rules on."""
        return self._w.judge
