"""What one reconciliation did: :class:`ReconcileReport`, and the machine's events."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "Finished", "HelloReceived", "ReconcileReport", "TurnDone"]


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """Counters of one ``reconcile`` call, from this end's point of view.

    ``round_trips`` counts message flights (the hellos, sent at once, are one; each turn
    after them another) halved and rounded up: what the repair cost in latency. ``changed``
    counts received entries that changed our state, ``dropped`` our states removed
    because the peer collected them (absence wins), ``refused`` received states not
    applied for the same reason on our side. ``in_sync``: the digests and counts were
    equal at the hellos and neither end held a quarantined key; nothing else was
    exchanged.
    """

    peer_id: str
    leader: bool
    in_sync: bool
    round_trips: int
    bytes_sent: int
    bytes_received: int
    entries_sent: int
    entries_received: int
    changed: int
    dropped: int
    refused: int


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The peer's hello passed the checks. ``leader``: our peer id is the smaller, so the
    peer takes the first turn (answering our top fingerprints); ``in_sync``: equal digests
    and counts and no quarantined key, the reconciliation is already over."""

    peer_id: str
    leader: bool
    in_sync: bool


@dataclass(frozen=True, slots=True)
class TurnDone:
    """A turn of the peer was received and answered (``answered`` False: it was the last)."""

    entries_received: int
    changed: int
    refused: int
    entries_sent: int
    dropped: int
    answered: bool


@dataclass(frozen=True, slots=True)
class Finished:
    """The reconciliation is over; nothing more will be sent or accepted."""

    report: ReconcileReport


Event = HelloReceived | TurnDone | Finished
