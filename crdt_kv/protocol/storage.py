"""Storage work a session asks its driver to perform.

The session never calls the blocking half of :class:`~crdt_kv.protocol.replica.Replica`
from inside :meth:`Session.receive_data`: it describes the work as a request object, and
whoever drives the session runs :meth:`StorageRequest.perform` (inline, as the simulator
does, or on a storage worker thread, as the trio node does, so an fsync or a long log scan
never stalls the event loop) and hands the result back with ``storage_done``. Requests of
one store must be performed one at a time, in the order they were taken, so commits stay
ordered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from crdt_kv.codec import MAX_KEY_BYTES, MAX_VALUE_BYTES
from crdt_kv.errors import ClockSkewError, CrdtKvError, EncodingError, RemoteProtocolError
from crdt_kv.protocol.framing import short
from crdt_kv.protocol.messages import AbortCode
from crdt_kv.protocol.replica import Replica
from crdt_kv.version import RawEntry

__all__ = [
    "LIGHT_ENTRIES",
    "VERSION_BYTES",
    "ApplyBatch",
    "LogSlice",
    "ReadLog",
    "RepairWork",
    "StorageRequest",
    "entry_size",
    "fit_frame",
    "fit_frame_sized",
    "oversized_entry",
    "oversized_frame",
    "peer_fault",
]

LIGHT_ENTRIES = 16
"""Applies of at most this many entries count as :attr:`ApplyBatch.light`."""


VERSION_BYTES = 24
"""What :func:`entry_size` counts per version besides its value."""


def entry_size(e: RawEntry) -> int:
    """The size an entry counts for towards ``max_batch_bytes`` (spec section 7): 24 per
    version plus its value, the key once, 16 per causal-context entry."""
    size = len(e.key) + len(e.value) + VERSION_BYTES
    if e.others or e.context:
        size += sum(len(o.value) + VERSION_BYTES for o in e.others) + 16 * len(e.context)
    return size


BATCH_OVERHEAD = 64
"""Bytes of a Batch frame outside its rows: prefix, type, sequences, flags, array heads."""
_ROW_OVER_ENTRY = 4
""":func:`row_bound` of a single version beyond its :func:`entry_size` and peer id."""


def _text_bound(peer: str) -> int:
    return 3 + len(peer.encode("utf-8", "surrogatepass"))


def row_bound(e: RawEntry) -> int:
    """At least the bytes ``e`` adds to an encoded Batch: its row with the longest integer
    heads, and its writers' peer ids as if each were new to the batch."""
    size = len(e.key) + len(e.value) + VERSION_BYTES + _ROW_OVER_ENTRY + _text_bound(e.peer)
    if e.others or e.context:
        size += 10 + sum(18 + _text_bound(p) for p, _ in e.context)
        size += sum(23 + len(o.value) + _text_bound(o.peer) for o in e.others)
    return size


def fit_frame(rows: list[RawEntry], frame_bytes: int) -> list[RawEntry]:
    """The longest prefix of ``rows`` whose Batch frame payload fits ``frame_bytes`` (the
    receiver's ``max_frame_bytes``); at least one row, which alone may not fit (the session
    then refuses to send it, naming its key)."""
    return fit_frame_sized(rows, frame_bytes)[0]


def fit_frame_sized(rows: list[RawEntry], frame_bytes: int) -> tuple[list[RawEntry], int]:
    """:func:`fit_frame` and the sum of :func:`entry_size` over the rows it keeps, in one
    pass over the rows that sizes a single-version row once (a log read's hot path)."""
    total = BATCH_OVERHEAD
    size = 0
    peers: dict[str, int] = {}
    for i, e in enumerate(rows):
        if e.others or e.context:
            es, bound = entry_size(e), row_bound(e)
        else:
            es = len(e.key) + len(e.value) + VERSION_BYTES
            peer = peers.get(e.peer)
            if peer is None:
                peer = peers[e.peer] = _ROW_OVER_ENTRY + _text_bound(e.peer)
            bound = es + peer
        total += bound
        if total > frame_bytes:
            return (rows[:i], size) if i else (rows[:1], es)
        size += es
    return rows, size


@dataclass(frozen=True, slots=True)
class LogSlice:
    """The next batch to send: ``entries`` cover our log up to ``to_seq``."""

    entries: tuple[RawEntry, ...]
    to_seq: int
    done: bool


@dataclass(frozen=True, slots=True)
class ReadLog:
    """Build the next outgoing batch from position ``pos`` (spec section 7, steps 1-5).

    ``stop_at`` is the pinned head of a one-shot pull (None: tail our current head).
    """

    pos: int
    limit: int
    max_bytes: int
    stop_at: int | None
    exclude_source: tuple[str, bytes] | None
    tail: bool = False
    """Asked while tailing the peer live: only what was committed since the last push."""
    frame_bytes: int | None = None
    """The receiver's ``max_frame_bytes``: the batch is cut to fit it (:func:`fit_frame`)."""

    @property
    def light(self) -> bool:
        """Cheap enough to perform on the event loop (a live tail read)."""
        return self.tail

    def perform(self, replica: Replica) -> LogSlice:
        """Read the log; never writes."""
        head = replica.last_seq if self.stop_at is None else self.stop_at
        rows = replica.read_changes(
            self.pos,
            limit=self.limit,
            exclude_source=self.exclude_source,
            stop_at=head,
            max_bytes=self.max_bytes,
        )
        cut = False
        if self.frame_bytes is not None and rows:
            fitted, size = fit_frame_sized(rows, self.frame_bytes)
            cut, rows = len(fitted) < len(rows), fitted
        else:
            size = sum(map(entry_size, rows))
        if rows and (cut or len(rows) >= self.limit or size >= self.max_bytes):
            covered = rows[-1].seq
        else:
            covered = head
        done = covered >= head
        if done and self.stop_at is not None:
            last = replica.last_seq
            if last > covered:
                # Past the pinned head: skip what we applied from this very peer meanwhile
                # (never sent back), so its cursor need not lag behind our head for nothing.
                nxt = replica.read_changes(covered, limit=1, exclude_source=self.exclude_source)
                covered = last if not nxt else max(covered, nxt[0].seq - 1)
        return LogSlice(tuple(rows), covered, done)


@dataclass(frozen=True, slots=True)
class ApplyBatch:
    """Apply a received batch's entries with the cursor ``(peer, incarnation, to_seq)``."""

    entries: tuple[RawEntry, ...]
    cursor: tuple[str, bytes, int]

    @property
    def light(self) -> bool:
        """Cheap enough to perform on the event loop: a few entries (a live push)."""
        return len(self.entries) <= LIGHT_ENTRIES

    def perform(self, replica: Replica) -> int:
        """One atomic commit; returns how many entries changed our state."""
        return replica.apply_raw(self.entries, cursor=self.cursor)


class _Work(Protocol):
    def perform(self, source: Any) -> object: ...


@dataclass(frozen=True, slots=True)
class RepairWork:
    """Storage work of a reconciliation running inside the session: one
    :mod:`crdt_kv.repair.work` request (fingerprints, item lists, reads, merges, drops),
    performed against the replica (which is then a ``RangeSource``)."""

    work: _Work
    cursor: tuple[str, bytes, int] | None = None
    """Merges store this (unchanged) cursor, so what they apply counts as the peer's:
    never echoed back to it."""

    @property
    def light(self) -> bool:
        """Never: listing a range or merging a chunk may read and write a lot."""
        return False

    def perform(self, replica: Replica) -> object:
        """Run the work; a replica whose Hello offered repair is a range source."""
        if self.cursor is None:
            return self.work.perform(replica)
        return self.work.perform(_Sourced(replica, self.cursor))


class _Sourced:
    """The replica, its merges applied under a cursor."""

    def __init__(self, replica: Replica, cursor: tuple[str, bytes, int]) -> None:
        self._replica = replica
        self._cursor = cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._replica, name)

    def apply_raw(self, entries: Iterable[RawEntry]) -> int:
        return self._replica.apply_raw(list(entries), cursor=self._cursor)


StorageRequest = ReadLog | ApplyBatch | RepairWork


def oversized_entry(entries: tuple[RawEntry, ...], peer: str) -> str | None:
    """Why a received batch is refused because a key or value of it exceeds the store's
    limits (the store enforces them on local writes only), or None."""
    for e in entries:
        if len(e.key) > MAX_KEY_BYTES or max(len(s.value) for s in (e, *e.others)) > (
            MAX_VALUE_BYTES
        ):
            return (
                f"batch from peer {peer!r} rejected: key {e.key[:40]!r} "
                f"({len(e.key)} bytes, limit {MAX_KEY_BYTES}) or a value of it "
                f"(limit {MAX_VALUE_BYTES} bytes) is too large"
            )
    return None


def oversized_frame(size: int, entries: tuple[RawEntry, ...], peer: str, limit: int) -> str | None:
    """Why a Batch whose frame payload takes ``size`` bytes cannot go to ``peer``, whose
    ``max_frame_bytes`` is ``limit`` (a batch is cut to fit, so only a single state can be
    too big: in mode ``siblings``, several large values), or None."""
    if size <= limit:
        return None
    key = short(entries[0].key if entries else b"")
    return (
        f"cannot send key {key} to peer {peer!r}: its state takes a {size}-byte frame, over "
        f"the peer's max_frame_bytes={limit} (resolve its siblings to shrink it)"
    )


def peer_fault(
    request: StorageRequest, error: BaseException, peer: str
) -> tuple[CrdtKvError, AbortCode, int] | None:
    """If ``error`` of performing ``request`` is the peer's fault (a stamp too far ahead,
    an undecodable entry): the error to fail the session with, its abort code, and how
    many entries count as skew-rejected. None: our own failure."""
    if isinstance(error, ClockSkewError):
        n = len(request.entries) if isinstance(request, ApplyBatch) else 0
        wrapped = ClockSkewError(
            f"batch from peer {peer!r} rejected: {error}",
            remote_hlc=error.remote_hlc,
            local_wall_ms=error.local_wall_ms,
            max_offset_ms=error.max_offset_ms,
        )
        return wrapped, AbortCode.CLOCK_SKEW, n
    if isinstance(error, EncodingError):
        err = RemoteProtocolError(f"batch from peer {peer!r} rejected: {error}")
        return err, AbortCode.REJECTED_DATA, 0
    return None
