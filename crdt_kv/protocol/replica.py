"""The narrow interface between a replication session and the storage it replicates.

A :class:`~crdt_kv.protocol.Session` needs very little of a store: who it is, its clock,
its change log from a cursor, and one atomic "apply these entries and remember this
cursor". Writing that down as a :class:`typing.Protocol` keeps the protocol core free of
any concrete store (``crdt_kv.store.Store`` implements it; the protocol tests use a small
in-memory fake) and says exactly which calls may block: :meth:`Replica.read_changes` and
:meth:`Replica.apply_raw` touch the disk, so a shell may run them on a worker thread.
Every method must be safe to call from one worker thread while the event-loop thread
writes locally (the store serializes commits and its clock with a lock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from crdt_kv.horizon import GossipRow
from crdt_kv.version import RawEntry

__all__ = ["MembershipView", "Replica"]


class MembershipView(Protocol):
    """The replica's membership table (:mod:`crdt_kv.horizon`), as sessions update it.

    Calls are quick (in memory, plus at most one small write of the changed rows) and are
    made from the thread that drives the session."""

    def gossip(self, own_hlc: int) -> tuple[GossipRow, ...]:
        """The gossip table for our Hello stamped ``own_hlc``."""
        ...

    def heard(self, peer: str, table: Iterable[GossipRow]) -> None:
        """``peer``'s Hello (accepted) carried ``table``: a direct contact."""
        ...

    def pulled(self, peer: str, hello_hlc: int, table: Iterable[GossipRow]) -> None:
        """We received ``peer``'s log to a ``done`` batch in a session whose Hello carried
        ``hello_hlc`` and ``table``."""
        ...

    def horizon(self, grace_ms: int) -> int:
        """The collection horizon the membership allows now, ``grace_ms`` held back."""
        ...


class ScrubCounts(Protocol):
    """What the collection policy reads of a scrub's report."""

    @property
    def quarantined(self) -> int:
        """Keys found rotten and put in quarantine."""
        ...


class Replica(Protocol):
    """What a session reads and writes of the replica it serves."""

    @property
    def peer_id(self) -> str:
        """This replica's peer id (sent in our Hello)."""
        ...

    @property
    def incarnation(self) -> bytes:
        """This store's incarnation: a new one means a new log (peers restart from 0)."""
        ...

    @property
    def last_seq(self) -> int:
        """Sequence of the newest change-log entry (0 for an empty log)."""
        ...

    @property
    def key_encoding(self) -> str:
        """Name of the key encoding; both peers must agree."""
        ...

    @property
    def value_encoding(self) -> str:
        """Name of the value encoding; both peers must agree."""
        ...

    @property
    def conflict_mode(self) -> str:
        """``lww`` or ``siblings``; both peers must agree."""
        ...

    @property
    def membership(self) -> MembershipView:
        """The membership table that Hellos and completed pulls update."""
        ...

    def clock_now(self) -> int:
        """A fresh HLC stamp (for our Hello)."""
        ...

    def digest(self) -> bytes:
        """The 32-byte digest of every key's state (kept per commit: costs nothing)."""
        ...

    def observe_clock(self, stamp: int, *, peer: str | None = None, transit_ms: int = 0) -> None:
        """Merge a peer's stamp into our HLC; raises ``ClockSkewError`` if too far ahead.
        With ``peer`` (its Hello's stamp) the skew is judged against the other peers too
        (:mod:`crdt_kv.skew`), crediting ``transit_ms``, the most the Hello can have been in
        flight (``Session.hello_transit_ms``); 0 credits nothing."""
        ...

    def cursor(self, peer: str, incarnation: bytes) -> int:
        """The last sequence of ``peer``'s log at ``incarnation`` applied here (0: none)."""
        ...

    def cursor_proof(self, peer: str, incarnation: bytes) -> tuple[bytes, int] | None:
        """``(key, state stamp)`` of the newest entry applied under that cursor, or None:
        the proof our ``Request`` carries."""
        ...

    def check_cursor(self, since: int, proof: tuple[bytes, int] | None) -> str | None:
        """Why a peer's cursor into our log cannot be true (our log was rolled back), or
        None. One point read."""
        ...

    def rotate_incarnation(self) -> bytes:
        """Take a new incarnation (our log was found rolled back); returns it."""
        ...

    def read_changes(
        self,
        since: int,
        *,
        limit: int,
        exclude_source: tuple[str, bytes] | None = None,
        stop_at: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RawEntry]:
        """Up to ``limit`` log entries with ``since < seq <= stop_at`` in order, skipping
        those whose current state came from ``exclude_source``, ending early with the entry
        that brings ``sum(len(key) + len(value) + 24)`` to ``max_bytes``. May block."""
        ...

    def raise_gc_horizon(self, h: int) -> int:
        """Raise the collection horizon to ``h`` (never lowered); returns the one in force."""
        ...

    def gc(self, *, limit: int | None = None) -> int:
        """Collect tombstones below the horizon (up to ``limit`` keys); may block."""
        ...

    def scrub(self, *, buckets: Iterable[int] | None = None) -> ScrubCounts:
        """Check these buckets' records, quarantine the rotten ones; may block."""
        ...

    def wants_probe(self, peer: str) -> bool:
        """Whether a key of our quarantine awaits ``peer``'s answer (``spec/reconcile.md``
        section 6): the session then repairs after its round even with equal digests."""
        ...

    def checkpoint(self) -> bool:
        """Save what the store keeps in memory between checkpoints (bucket fingerprints,
        new keys' index entries); True if it wrote. May block."""
        ...

    def apply_raw(
        self, entries: Sequence[RawEntry], *, cursor: tuple[str, bytes, int] | None = None
    ) -> int:
        """Merge ``entries`` and store ``cursor`` in one atomic commit; return how many
        changed our state. All or nothing; may block (fsync)."""
        ...
