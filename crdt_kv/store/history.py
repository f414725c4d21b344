"""Revisions (``keep_history=True``): every version this replica held and later superseded,
local or received, kept under the ``h`` namespace. Local only: revisions never replicate.

The commit builder asks :meth:`History.ops` for the revisions a change retires and writes
them in the same atomic batch, so a revision exists exactly when its supersession does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from crdt_kv.backends.base import Backend, Op
from crdt_kv.causal import siblings
from crdt_kv.layout import (
    HISTORY,
    HISTORY_END,
    history_bound,
    history_key,
    history_value,
    unpack_history,
    unpack_record,
)
from crdt_kv.store.reads import Bounds, key_range
from crdt_kv.version import Entry, RawEntry

__all__ = ["History"]

_NO_SEQ = bytes(8)


class History:
    """Writes and reads the revisions of one store."""

    __slots__ = ("_backend", "_check", "_enc_key", "_to_entry")

    def __init__(
        self,
        backend: Backend,
        check: Callable[[], None],
        enc_key: Callable[[Any], bytes],
        to_entry: Callable[[RawEntry], Entry],
    ) -> None:
        self._backend, self._check = backend, check
        self._enc_key, self._to_entry = enc_key, to_entry

    @staticmethod
    def ops(k: bytes, body: bytes, old: bytes | None) -> list[Op]:
        """The revisions a commit replacing record ``old`` by ``body`` retires: the old
        state's versions the new one no longer holds."""
        if old is None:
            return []
        kept = {(s.peer, s.hlc) for s in siblings(unpack_record(k, body + _NO_SEQ))}
        return [
            (history_key(k, s.hlc, s.peer), history_value(s.deleted, s.value))
            for s in siblings(unpack_record(k, old))
            if (s.peer, s.hlc) not in kept
        ]

    def of_key(self, key: Any, limit: int | None) -> list[Entry]:
        """``key``'s revisions, newest first."""
        self._check()
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        k = self._enc_key(key)
        out: list[Entry] = []
        if limit == 0:
            return out
        rows = self._backend.iterate(history_bound(k, False), history_bound(k, True), reverse=True)
        for hk, blob in rows:
            out.append(self._to_entry(unpack_history(hk, blob)))
            if limit is not None and len(out) >= limit:
                break
        return out

    def revisions(self, bounds: Bounds) -> Iterator[tuple[Any, Entry]]:
        """``(key, Entry)`` of every revision in a key range: keys in order, each key's
        revisions oldest first (all reversed with ``reverse``)."""
        self._check()
        lo, lo_incl, hi, hi_incl = key_range(bounds, self._enc_key)
        reverse, limit = bounds[4], bounds[5]
        start = HISTORY if lo is None else history_bound(lo, not lo_incl)
        stop = HISTORY_END if hi is None else history_bound(hi, hi_incl)
        if limit == 0 or start >= stop:
            return
        rows = self._backend.iterate(start, stop, reverse=reverse)
        for n, (hk, blob) in enumerate(rows, 1):
            e = self._to_entry(unpack_history(hk, blob))
            yield e.key, e
            if limit is not None and n >= limit:
                return
