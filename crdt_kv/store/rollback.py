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

from crdt_kv.fingerprint import state_stamp
from crdt_kv.version import RawEntry

__all__ = ["cursor_mismatch"]


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
