"""Rollback detection: is a peer's cursor into our change log still true?

A store restored from a plain copy of its directory keeps its incarnation, but its log
has gone back: it will issue again sequences that its peers have already passed, and
they would skip those changes forever. A peer's ``Request`` therefore proves its cursor
with the key and state stamp of the newest entry it applied under it
(``spec/protocol.md`` §4.2). That entry was in our log at a sequence up to the cursor,
and a key's state stamp on one replica only grows, so the key must still be here with a
stamp at least as large, unless it was collected (absent, below the collection horizon).
A cursor past our head is just as impossible. Either finding means our log was rolled
back: the caller rotates the incarnation so that peers pull the whole log again.
"""

from __future__ import annotations

import random
import threading

from crdt_kv.backends.base import Backend
from crdt_kv.fingerprint import state_stamp
from crdt_kv.layout import META_INCARNATION
from crdt_kv.store.changelog import ChangeLog
from crdt_kv.version import RawEntry

__all__ = ["CursorChecks", "cursor_mismatch"]


def cursor_mismatch(
    *,
    last_seq: int,
    since: int,
    proof: tuple[bytes, int] | None,
    held: RawEntry | None,
    gc_horizon: int,
) -> str | None:
    """Why a peer's cursor ``since`` (with ``proof``) cannot be true of our log, or None.

    ``held`` is our current state of the proof's key (None: absent).
    """
    if since > last_seq:
        return f"the peer's cursor is at {since} but our log ends at {last_seq}"
    if proof is None:
        return None
    key, stamp = proof
    if held is None:
        if stamp < gc_horizon:
            return None  # collected
        return f"key {key[:40]!r}, which the peer received at stamp {stamp}, is gone"
    mine = state_stamp(held)
    if mine < stamp:
        return (
            f"key {key[:40]!r} is at stamp {mine} here, older than the stamp {stamp} "
            "the peer received from us"
        )
    return None


class CursorChecks:
    """Methods of :class:`~crdt_kv.store.Store` for rollback detection (a base class, so
    the store module stays small)."""

    _changelog: ChangeLog
    _backend: Backend
    _rng: random.Random
    _incarnation: bytes

    @property
    def last_seq(self) -> int:
        raise NotImplementedError

    @property
    def gc_horizon(self) -> int:
        raise NotImplementedError

    def _record(self, k: bytes) -> RawEntry | None:
        raise NotImplementedError

    def _check(self) -> None:
        raise NotImplementedError

    def _writable(self, op: str) -> None:
        raise NotImplementedError

    def _commit_lock(self) -> threading.RLock:
        raise NotImplementedError

    def cursor_proof(self, peer: str, incarnation: bytes) -> tuple[bytes, int] | None:
        """``(key, state stamp)`` of the newest entry applied under that cursor, or None:
        what a ``Request`` sends to prove its cursor (rollback detection)."""
        return self._changelog.cursor_proof(peer, incarnation)

    def check_cursor(self, since: int, proof: tuple[bytes, int] | None) -> str | None:
        """Why a peer's cursor into our log (``since``, ``proof``) cannot be true, meaning
        this store was rolled back (restored from a copy), or None if it may be."""
        held = self._record(proof[0]) if proof is not None else None
        return cursor_mismatch(
            last_seq=self.last_seq,
            since=since,
            proof=proof,
            held=held,
            gc_horizon=self.gc_horizon,
        )

    def rotate_incarnation(self) -> bytes:
        """Take a new random incarnation now (the log was found rolled back): peers then
        pull the whole log again instead of skipping reissued sequences. Returns it."""
        self._writable("rotate_incarnation")
        with self._commit_lock():
            self._check()
            incarnation = self._rng.getrandbits(128).to_bytes(16, "big")
            self._backend.write([(META_INCARNATION, incarnation)])
            self._incarnation = incarnation
            return incarnation
