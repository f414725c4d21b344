"""The change log read side: scanning entries after a sequence, and delta-sync cursors.

The log is compact (one entry per key, at the sequence of its latest change), so a scan
reads a log entry, then the key's record, and skips records rewritten since.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from itertools import islice

from crdt_kv.backends.base import Backend, Op
from crdt_kv.errors import CorruptionError
from crdt_kv.layout import (
    CURSOR,
    CURSOR_END,
    DATA_SKIP,
    cursor_key,
    log_key,
    log_stop,
    pack_cursor,
    pack_source,
    parse_cursor_key,
    source_key,
    unpack_cursor,
    unpack_record_at,
)
from crdt_kv.layout_scan import REWRITTEN, log_chunk, records_at
from crdt_kv.protocol.storage import VERSION_BYTES, entry_size
from crdt_kv.version import RawEntry

__all__ = ["ChangeLog", "Source", "cursor_ops"]

Source = tuple[str, bytes]
"""A remote peer incarnation: ``(peer id, incarnation)``."""

PEER_NAME_CACHE = 4096
_CHUNK = 256


class ChangeLog:
    """Reads of the change log and the cursors for one store.

    ``sources`` is the store's live map of source ids (shared, updated by applies);
    ``lock`` the store's commit lock, which :meth:`read` holds while it reads a chunk.
    """

    __slots__ = ("_backend", "_check", "_lock", "_peer_names", "_sources")

    def __init__(
        self,
        backend: Backend,
        check: Callable[[], None],
        lock: AbstractContextManager[object],
        sources: dict[Source, int],
    ) -> None:
        self._backend, self._check, self._lock, self._sources = backend, check, lock, sources
        self._peer_names: dict[bytes, str] = {}

    def scan(
        self, since: int, limit: int | None, exclude: Source | None, stop_at: int | None
    ) -> Iterator[RawEntry]:
        """Log entries with ``seq > since`` (and ``<= stop_at``) in sequence order.

        Lazy: the closed check and the argument check run on the first ``next``. Entries
        applied from ``exclude`` are left out. Reads the log in chunks, and their records
        with one ``get_many`` per chunk.
        """
        n = 0
        for rows, keys, blobs, seqs in self._chunks(since, exclude, stop_at):
            for i, got in enumerate(rows):
                if isinstance(got, RawEntry):
                    yield got
                else:
                    r = None if got == REWRITTEN else self._slow(keys[i], blobs[i], seqs[i])
                    if r is None:
                        continue  # rewritten since; it appears again later in the log
                    yield r
                n += 1
                if limit is not None and n >= limit:
                    return

    def _chunks(
        self, since: int, exclude: Source | None, stop_at: int | None, locked: bool = False
    ) -> Iterator[tuple[list[RawEntry | int], list[bytes], list[bytes | None], list[int]]]:
        """Per chunk of the log: :func:`records_at` of its entries, with what
        :meth:`_slow` needs for the slots it left (data keys, records, sequences).

        ``locked``: each chunk's log entries and records are read under the commit lock,
        from an iterator of their own, and the lock is let go between chunks. Each chunk
        is then as two consecutive reads would see it (a key rewritten meanwhile is left
        out here and appears later in the log), and a commit waits for one chunk, not for
        a whole batch of a catch-up read.
        """
        self._check()
        if not isinstance(since, int) or since < 0:
            raise ValueError(f"since must be a non-negative int, got {since!r}")
        skip = self._sources.get(exclude, -1) if exclude is not None else -1
        backend, peer_names = self._backend, self._peer_names
        start, stop = log_key(since + 1), log_stop(stop_at)
        it = None if locked else backend.iterate(start, stop)
        while True:
            if it is not None:
                items = list(islice(it, _CHUNK))
                seqs, keys = log_chunk(items, skip)
                blobs = backend.get_many(keys) if keys else []
            else:
                with self._lock:
                    items = list(islice(backend.iterate(start, stop), _CHUNK))
                    seqs, keys = log_chunk(items, skip)
                    blobs = backend.get_many(keys) if keys else []
                if len(items) == _CHUNK:
                    start = items[-1][0] + b"\x00"
            if keys:
                yield records_at(keys, blobs, seqs, peer_names), keys, blobs, seqs
            if len(items) < _CHUNK:
                return

    def _slow(self, dkey: bytes, blob: bytes | None, seq: int) -> RawEntry | None:
        """A record :func:`records_at` left alone: decoded (or refused) by the full parse."""
        k = dkey[DATA_SKIP:]
        if blob is None:
            raise CorruptionError(f"change log names key {k!r} but it has no record")
        return unpack_record_at(k, blob, seq, self._peer_names, PEER_NAME_CACHE)

    def read(
        self,
        since: int,
        limit: int,
        exclude: Source | None,
        stop_at: int | None,
        max_bytes: int | None = None,
    ) -> list[RawEntry]:
        """Up to ``limit`` entries of :meth:`scan`, read chunk by chunk under the commit
        lock (:meth:`_chunks`, ``locked``), ending with the entry that brings
        ``sum(len(key) + len(value) + 24)`` to ``max_bytes`` (so a batch of huge values is
        not read whole to send a part).

        Walks :meth:`_chunks` itself rather than :meth:`scan`: no generator step per entry.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, got {limit!r}")
        if stop_at is not None and (not isinstance(stop_at, int) or stop_at < 0):
            raise ValueError(f"stop_at must be a non-negative int or None, got {stop_at!r}")
        if not limit:
            return []
        out: list[RawEntry] = []
        add = out.append
        size = 0
        for rows, keys, blobs, seqs in self._chunks(since, exclude, stop_at, locked=True):
            for i, got in enumerate(rows):
                if isinstance(got, RawEntry):
                    e: RawEntry | None = got
                else:
                    e = None if got == REWRITTEN else self._slow(keys[i], blobs[i], seqs[i])
                if e is None:
                    continue  # rewritten since; it appears again later in the log
                add(e)
                if max_bytes is not None:
                    if e.others or e.context:
                        size += entry_size(e)
                    else:
                        size += len(e.key) + len(e.value) + VERSION_BYTES  # entry_size
                    if size >= max_bytes:
                        return out
                if len(out) >= limit:
                    return out
        return out

    def cursor(self, peer: str, incarnation: bytes) -> int:
        """The stored cursor of one remote peer incarnation; 0 if none."""
        self._check()
        v = self._backend.get(cursor_key(peer, incarnation))
        return 0 if v is None else unpack_cursor(v)[0]

    def cursor_proof(self, peer: str, incarnation: bytes) -> tuple[bytes, int] | None:
        """The proof stored with one remote cursor: ``(key, state stamp)`` of the newest
        entry applied under it, or None (no cursor, or stored before proofs existed)."""
        self._check()
        v = self._backend.get(cursor_key(peer, incarnation))
        return None if v is None else unpack_cursor(v)[1]

    def cursors(self) -> dict[Source, int]:
        """Every stored cursor: ``{(peer, incarnation): seq}``."""
        self._check()
        it = self._backend.iterate(CURSOR, CURSOR_END)
        return {parse_cursor_key(k): unpack_cursor(v)[0] for k, v in it}


def cursor_ops(
    sources: dict[Source, int],
    peer: str,
    incarnation: bytes,
    seq: int,
    proof: tuple[bytes, int] | None = None,
) -> tuple[list[Op], int]:
    """The writes that store a cursor (with its ``proof``), and the source id of its peer
    incarnation.

    The first op sets the cursor; a second one, present only for a peer incarnation not
    seen before, names its new source id (the caller records it in ``sources`` once the
    commit carrying it succeeded). ``peer`` must already be a checked peer id.
    """
    ops: list[Op] = [(cursor_key(peer, incarnation), pack_cursor(seq, proof))]
    source = sources.get((peer, incarnation), 0)
    if not source:
        source = max(sources.values(), default=0) + 1
        ops.append((source_key(source), pack_source(peer, incarnation)))
    return ops, source
