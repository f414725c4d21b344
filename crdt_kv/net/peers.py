"""Per-peer replication statistics of a node, summed over all sessions with each peer.

Bookkeeping only: the node feeds it the link events it sees (:meth:`PeerBook.connected`,
:meth:`PeerBook.touch`, :meth:`PeerBook.ended`) and :meth:`Node.stats` reads
:meth:`PeerBook.snapshot`. Clocks are injected (the node passes its loop clock), so
pruning can be tested without waiting.

Records are pruned (:meth:`PeerBook.prune`): a peer not heard from for the store's member
expiry is forgotten here, and at most ``max_records`` are kept (oldest contact goes
first), so peers that come and go (discovery, clients, forged Hellos) cannot grow the
table without bound. A peer with an open session or one the node dials is never pruned.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from crdt_kv.errors import PeerIdentityError
from crdt_kv.protocol import InState, Session, SessionStats
from crdt_kv.store import Store

__all__ = [
    "COUNTERS",
    "MAX_PEER_RECORDS",
    "UNIDENTIFIED",
    "PeerBook",
    "PeerRecord",
    "TargetInfo",
]

UNIDENTIFIED = "(unidentified)"
"""Stats key of connections that failed before the peer identified itself with a Hello or
a certificate (a failed TLS handshake, plaintext on a TLS port)."""

COUNTERS = (
    "bytes_sent",
    "bytes_received",
    "entries_sent",
    "entries_received",
    "entries_changed",
    "batches_sent",
    "batches_received",
    "skew_rejected",
    "divergences",
    "repairs",
)

MAX_PEER_RECORDS = 4096
"""Per-peer records kept at most (see :class:`PeerBook`)."""
PRUNE_EVERY_S = 1.0
"""A new session prunes the book at most this often, unless it is over ``max_records``:
pruning scans every record, and under a flood of new peer ids (bench_hostile) it ran on
every accepted Hello."""


@dataclass(slots=True)
class PeerRecord:
    """What we know about one peer id, summed over all its sessions."""

    peer_id: str
    incarnation: bytes | None = None
    address: str | None = None
    remote_last_seq: int = 0
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    active: list[Session] = field(default_factory=list)
    sessions: int = 0
    rounds_completed: int = 0
    errors: int = 0
    protocol_errors: int = 0
    last_sync: float | None = None
    caught_up_at: float | None = None
    last_error: str | None = None
    seen_at: float = 0.0
    """Clock time of the last contact (for pruning)."""
    last_contact: float | None = None
    """Wall time of the last contact (handshake, batch, round or session end)."""
    ok: bool | None = None
    """How the last session went: True once connected or ended cleanly, False if failed."""

    def fold(self, stats: SessionStats) -> None:
        """Add a finished session's counters to the totals."""
        for name in COUNTERS:
            self.totals[name] += getattr(stats, name)


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """What the node knows of an address it dials, for :meth:`PeerBook.snapshot`."""

    address: str
    peer_id: str | None
    discovered: bool
    connect_errors: int
    last_error: str | None
    failures: int = 0
    """Failed dials or sessions in a row (0 once a session ended cleanly)."""


class PeerBook:
    """Every :class:`PeerRecord` of a node, keyed by peer id."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        keep: Callable[[], Collection[str | None]] = tuple,
        max_records: int = MAX_PEER_RECORDS,
    ) -> None:
        self.store = store
        self.records: dict[str, PeerRecord] = {}
        self.clock, self.wall, self.keep = clock, wall, keep
        """``clock``: seconds for expiry; ``wall``: Unix time; ``keep``: peer ids the
        node dials (never pruned)."""
        self.max_records = max_records
        self._next_prune = -math.inf
        self.pruned = 0
        """Records pruned since the book was made."""
        self.refusals: Counter[str] = Counter()
        """Peers refused for who they are, by :attr:`PeerIdentityError.reason`: TLS
        handshakes failed, certificates naming no peer id, Hellos claiming another peer id
        than the certificate names, peer ids outside ``allowed_peers``."""

    def record(self, peer_id: str) -> PeerRecord:
        """The record of ``peer_id`` (created on first use)."""
        rec = self.records.get(peer_id)
        if rec is None:
            rec = self.records[peer_id] = PeerRecord(peer_id, seen_at=self.clock())
        return rec

    def touch(self, rec: PeerRecord) -> None:
        """We just heard from the peer of ``rec``."""
        rec.seen_at = self.clock()
        rec.last_contact = self.wall()

    def prune(self) -> int:
        """Forget records of peers not heard from for the store's member expiry, then the
        oldest beyond ``max_records``; never one with an open session or one in
        ``keep()``. Returns how many were dropped."""
        now = self.clock()
        self._next_prune = now + PRUNE_EVERY_S
        expiry_s = self.store.membership.table.expiry_ms / 1000
        keep = set(self.keep())
        idle = [r for r in self.records.values() if not r.active and r.peer_id not in keep]
        drop = [r for r in idle if now - r.seen_at > expiry_s]
        excess = len(self.records) - len(drop) - self.max_records
        if excess > 0:
            rest = sorted((r for r in idle if now - r.seen_at <= expiry_s), key=_seen_at)
            drop += rest[:excess]
        for r in drop:
            del self.records[r.peer_id]
        self.pruned += len(drop)
        return len(drop)

    def connected(
        self, session: Session, peer_id: str, incarnation: bytes, remote_last_seq: int, address: str
    ) -> PeerRecord:
        """A session's Hello was accepted."""
        rec = self.record(peer_id)
        rec.active.append(session)
        rec.sessions += 1
        rec.address = address
        rec.ok = True
        self.touch(rec)
        if rec.incarnation != incarnation:
            rec.incarnation = incarnation
            rec.remote_last_seq = 0
        if session.in_state is not InState.DISABLED:
            rec.remote_last_seq = max(rec.remote_last_seq, remote_last_seq)
        if len(self.records) > self.max_records or self.clock() >= self._next_prune:
            self.prune()
        return rec

    def count_refusal(self, error: BaseException | None) -> None:
        """Count ``error`` in :attr:`refusals` if it refused a peer for who it is."""
        if isinstance(error, PeerIdentityError):
            self.refusals[error.reason] += 1

    def refused(self, error: PeerIdentityError) -> PeerRecord:
        """An inbound connection was refused before any session started (its TLS
        handshake): counted under the peer id it proved, else :data:`UNIDENTIFIED`."""
        self.count_refusal(error)
        rec = self.record(error.peer_id or UNIDENTIFIED)
        rec.errors += 1
        rec.last_error = str(error)
        self.touch(rec)
        return rec

    def ended(
        self, rec: PeerRecord | None, session: Session, error: BaseException | None
    ) -> PeerRecord:
        """A session ended; ``rec`` is None if its Hello was never accepted: then the
        session is counted under the peer id its Hello claimed, if it sent one (a clock
        skew refusal, an incompatible peer), else under :data:`UNIDENTIFIED`."""
        final = rec if rec is not None else self.record(session.claimed_peer or UNIDENTIFIED)
        if session in final.active:
            final.active.remove(session)
        final.fold(session.stats)
        self.touch(final)
        self.count_refusal(error)
        if rec is not None:
            rec.ok = error is None
        if error is not None:
            final.errors += 1
            if session.error is not None:
                final.protocol_errors += 1
            final.last_error = str(error)
        return final

    def stats(self, targets: Iterable[TargetInfo], now: float) -> dict[str, dict[str, Any]]:
        """The per-peer table of :meth:`Node.stats` (see there for the fields)."""
        self.prune()
        out: dict[str, dict[str, Any]] = {}
        # One scan of the cursors, not a read per peer: with hundreds of peers (a flood of
        # made-up ids) the reads were most of a metrics scrape's time on the event loop.
        cursors = {} if self.store.closed else self.store.cursors()
        for rec in self.records.values():
            out[rec.peer_id] = self.snapshot(rec, now, cursors)
        for t in targets:
            entry = out.get(t.peer_id) if t.peer_id is not None else None
            if entry is None:
                entry = out[t.address] = self.snapshot(PeerRecord(UNIDENTIFIED), now)
                entry["peer_id"] = None
            entry["address"] = t.address
            entry["discovered"] = t.discovered
            entry["dialed"] = True
            entry["errors"] += t.connect_errors
            entry["reachable"] = entry["connected"] or (entry["reachable"] and not t.failures)
            if t.last_error is not None and entry["last_error"] is None:
                entry["last_error"] = t.last_error
        return out

    def snapshot(
        self, rec: PeerRecord, now: float, cursors: dict[tuple[str, bytes], int] | None = None
    ) -> dict[str, Any]:
        """One peer's row: totals plus what its open sessions have done so far
        (``cursors``: :meth:`Store.cursors`, read once for many rows)."""
        totals = dict(rec.totals)
        remote_seq = rec.remote_last_seq
        tailing = False
        live = False
        for session in rec.active:
            for name in COUNTERS:
                totals[name] += getattr(session.stats, name)
            if session.in_state is not InState.DISABLED:
                remote_seq = max(remote_seq, session.cursor + session.lag)
            if session.live and session.remote is not None:
                live = True
                if session.in_state is InState.LIVE and session.lag == 0:
                    tailing = True
        cursor = 0
        if rec.incarnation is not None and cursors is not None:
            cursor = cursors.get((rec.peer_id, rec.incarnation), 0)
        elif rec.incarnation is not None and not self.store.closed:
            cursor = self.store.cursor(rec.peer_id, rec.incarnation)
        lag_s: float | None
        if tailing:
            lag_s = 0.0
        elif rec.caught_up_at is not None:
            lag_s = max(0.0, now - rec.caught_up_at)
        else:
            lag_s = None
        return {
            "peer_id": rec.peer_id,
            "address": rec.address,
            "discovered": False,
            "dialed": False,
            "incarnation": rec.incarnation.hex() if rec.incarnation is not None else None,
            "cursor": cursor,
            "remote_last_seq": remote_seq,
            "lag_entries": max(0, remote_seq - cursor),
            "lag_seconds": lag_s,
            **totals,
            "sessions": rec.sessions,
            "rounds_completed": rec.rounds_completed,
            "errors": rec.errors,
            "protocol_errors": rec.protocol_errors,
            "connected": bool(rec.active),
            "live": live,
            "last_sync": rec.last_sync,
            "last_contact": self.wall() if rec.active else rec.last_contact,
            "reachable": bool(rec.active) or rec.ok is True,
            "last_error": rec.last_error,
        }


def _seen_at(rec: PeerRecord) -> float:
    return rec.seen_at
