"""The store: last-writer-wins registers over an ordered bytes map.

A pure object (sans-I/O): it reads time only through the injected ``clock`` and randomness
only through the injected ``rng``, and touches storage only through its
:class:`~crdt_kv.backends.base.Backend`. Every commit is one atomic backend batch holding
the new record(s), the change-log entry at the next local sequence, the removal of the
key's previous log entry, the HLC high-water mark, the live count and the digest (the last
three ride in the trailer of the commit's last log entry), and, for replication, the
remote cursor. The change log therefore stays compact (one entry per key) and reopening
restores every counter in O(1).

A Store is not thread-safe: use it from one thread (or one trio task tree) at a time.
"""

from __future__ import annotations

import contextlib
import logging
import random
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from crdt_kv.backends.base import Backend, Op
from crdt_kv.codec import (
    CURSOR,
    CURSOR_END,
    DATA,
    DATA_END,
    FORMAT_VERSION,
    LOG,
    LOG_END,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    META,
    RECORD_HEAD,
    body_hash,
    cursor_key,
    key_codec,
    log_key,
    pack_log,
    pack_source,
    pack_u64,
    parse_cursor_key,
    record_body,
    seq_of_log_key,
    unpack_log,
    unpack_log_source,
    unpack_record,
    unpack_source,
    unpack_u64,
    value_codec,
)
from crdt_kv.errors import ClosedError, ConfigError, CorruptionError, EncodingError
from crdt_kv.hlc import HLC, MAX_STAMP
from crdt_kv.version import Entry, RawEntry, Resolver, Version, supersedes

__all__ = ["DEFAULT_MAX_OFFSET_MS", "Batch", "Store"]

log = logging.getLogger("crdt_kv.store")

_Change = tuple[bytes, bytes, bytes | None]
"""One key's replacement in a commit: ``(key, new record body, old record or None)``."""

DEFAULT_MAX_OFFSET_MS = 500
APPLY_CHUNK = 5000
_PEER_NAME_CACHE = 4096
_MOD = 1 << 256
_DELETED = 1  # flags bit of a record (codec layout)
_LOG_PLAIN = pack_log(b"", None)  # prefix of a local log entry without trailer
_TRAILER_LOG = struct.Struct(">BQ32sQ")
"""Head of a local log entry carrying the commit trailer: kind 1, live count, digest, HLC
high-water mark (then the key). Byte for byte ``pack_log(key, (count, digest, hlc))``;
packed in one call here because every local put writes one."""
_M_FORMAT = META + b"format"
_M_PEER = META + b"peer"
_M_INCARNATION = META + b"incarnation"
_M_KEYENC = META + b"key_encoding"
_M_VALENC = META + b"value_encoding"
_M_OPEN = META + b"open"
_M_SOURCE = META + b"src:"
_M_SOURCE_END = META + b"src;"


def _check_peer_id(peer_id: object, what: str = "peer_id") -> str:
    if not isinstance(peer_id, str) or not peer_id:
        raise ConfigError(f"{what} must be a non-empty string, got {peer_id!r}")
    try:
        size = len(peer_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {peer_id!r} is not encodable as utf-8") from None
    if size > 255:
        raise ConfigError(f"{what} {peer_id[:20]!r}... is longer than 255 utf-8 bytes")
    return peer_id


class Store:
    """A replicated key-value store holding one LWW register per key.

    Build one with :func:`crdt_kv.open`; the constructor takes an already-open backend and
    the injected clock and randomness. Options are keyword-only.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Callable[[], int],
        rng: random.Random,
        peer_id: str | None = None,
        key_encoding: str | None = None,
        value_encoding: str | None = None,
        resolver: Resolver | None = None,
        max_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
        new_incarnation: bool = False,
        boot_id: bytes | None = None,
    ) -> None:
        try:
            if key_encoding is not None:
                key_codec(key_encoding)
            if value_encoding is not None:
                value_codec(value_encoding)
            if resolver is not None and not callable(resolver):
                raise ConfigError("resolver must be callable (a, b) -> bool")
            if not isinstance(max_offset_ms, int) or max_offset_ms < 0:
                raise ConfigError(
                    f"max_offset_ms must be a non-negative int, got {max_offset_ms!r}"
                )
        except BaseException:
            backend.close()  # a rejected option must not leave the backend (its lock) open
            raise
        self._backend = backend
        self._lock = threading.RLock()
        self._bget = backend.get
        self._bwrite = backend.write
        self._closed = False
        self.resolver = resolver
        self._commit_listeners: list[Callable[[int], object]] = []
        self._change_listeners: list[Callable[[Entry], object]] = []
        self._peer_bytes: dict[str, bytes] = {}  # peer ids of entries that passed _validate
        self._peer_names: dict[bytes, str] = {}  # peer ids as stored in records, decoded
        self.stats: dict[str, int] = {
            "commits": 0,
            "applied": 0,
            "apply_rejected": 0,
            "hook_errors": 0,
        }
        try:
            self._load_meta(
                peer_id, rng, key_encoding, value_encoding, new_incarnation, boot_id=boot_id or b"1"
            )
            self._load_state()
        except BaseException:
            backend.close()
            raise
        self._hlc = HLC(clock, max_offset_ms=max_offset_ms, last=self._hlc_floor)

    # --- opening --------------------------------------------------------------------

    def _load_meta(
        self,
        peer_id: str | None,
        rng: random.Random,
        key_encoding: str | None,
        value_encoding: str | None,
        new_incarnation: bool,
        *,
        boot_id: bytes,
    ) -> None:
        """Create or check the store's metadata; settle peer id, incarnation, encodings.

        Encodings not given default to what the store was created with (``utf-8``/``cbor``
        for a new store); given ones must match it.
        """
        b = self._backend
        fmt = b.get(_M_FORMAT)
        if peer_id is not None:
            _check_peer_id(peer_id)
        if fmt is None:
            if next(b.iterate(None, None), None) is not None:
                raise CorruptionError("backend holds data but no crdt_kv metadata")
            peer = peer_id or f"{rng.getrandbits(64):016x}"
            incarnation = rng.getrandbits(128).to_bytes(16, "big")
            kname, vname = key_encoding or "utf-8", value_encoding or "cbor"
            b.write(
                [
                    (_M_FORMAT, pack_u64(FORMAT_VERSION)),
                    (_M_PEER, peer.encode("utf-8")),
                    (_M_INCARNATION, incarnation),
                    (_M_KEYENC, kname.encode()),
                    (_M_VALENC, vname.encode()),
                ]
            )
        else:
            version = unpack_u64(fmt)
            if version != FORMAT_VERSION:
                raise CorruptionError(
                    f"store format {version} is not supported (this library writes "
                    f"{FORMAT_VERSION})"
                )
            stored = [b.get(k) for k in (_M_PEER, _M_INCARNATION, _M_KEYENC, _M_VALENC)]
            if any(v is None for v in stored):
                raise CorruptionError("store metadata is incomplete")
            peer_b, incarnation, kenc, venc = (v or b"" for v in stored)
            peer = peer_b.decode("utf-8")
            if peer_id is not None and peer_id != peer:
                raise ConfigError(f"this store belongs to peer {peer!r}, not {peer_id!r}")
            kname, vname = kenc.decode(), venc.decode()
            for name, want, have in (
                ("key_encoding", key_encoding, kname),
                ("value_encoding", value_encoding, vname),
            ):
                if want is not None and want != have:
                    raise ConfigError(f"store was created with {name}={have!r}, not {want!r}")
            marker = b.get(_M_OPEN)
            lost_tail = (
                marker is not None and not b.power_safe and (marker == b"1" or marker != boot_id)
            )
            if new_incarnation or lost_tail:
                # A restored copy, or an unclean shutdown without fsync across a reboot, or
                # of unknown boot (the log tail may be lost): peers' cursors into our log
                # could skip reissued sequences, so a new incarnation makes them start over.
                # A process crash within one boot loses nothing the OS accepted, so it keeps
                # the incarnation and peers resume from their cursors.
                incarnation = rng.getrandbits(128).to_bytes(16, "big")
                b.write([(_M_INCARNATION, incarnation)])
        self._kenc, self._kdec = key_codec(kname)
        self._venc, self._vdec = value_codec(vname)
        self.key_encoding, self.value_encoding = kname, vname
        b.write([(_M_OPEN, boot_id)])
        if not b.power_safe:
            # Durable before any commit: if a power cut lost the marker (with the writes
            # after it), the next open would trust a log whose tail peers already hold
            # cursors past, reissue those sequence numbers, and peers would skip them.
            b.make_durable()
        self._peer_id = peer
        self._peer_b = peer.encode("utf-8")
        self._incarnation = incarnation
        self._sources: dict[tuple[str, bytes], int] = {}
        for k, v in b.iterate(_M_SOURCE, _M_SOURCE_END):
            self._sources[unpack_source(v)] = unpack_u64(k[len(_M_SOURCE) :])

    def _load_state(self) -> None:
        last = next(self._backend.iterate(LOG, LOG_END, reverse=True), None)
        if last is None:
            self._seq, self._count, self._digest, self._hlc_floor = 0, 0, 0, 0
            return
        _, trailer = unpack_log(last[1])
        if trailer is None:
            raise CorruptionError("newest change-log entry lacks the commit trailer")
        self._seq = seq_of_log_key(last[0])
        self._count, self._digest, self._hlc_floor = trailer

    # --- properties -----------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """This replica's peer id (persisted in the store)."""
        return self._peer_id

    @property
    def incarnation(self) -> bytes:
        """16 random bytes naming this life of the store; peers key their cursors by it.

        Minted at creation, and again when reopened with ``new_incarnation=True`` (a restored
        or copied store) or after an unclean shutdown of a backend that is not power-safe
        (its log tail may be gone), so peers never confuse two lives of one peer id.
        """
        return self._incarnation

    @property
    def hlc(self) -> HLC:
        """The store's hybrid logical clock (replication feeds remote stamps through it)."""
        return self._hlc

    @property
    def last_seq(self) -> int:
        """The newest local change-log sequence (0 for an empty store)."""
        return self._seq

    @property
    def backend(self) -> Backend:
        """The storage backend this store writes to."""
        return self._backend

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"store of peer {self._peer_id!r} is closed")

    # --- reads ----------------------------------------------------------------------

    def _enc_key(self, key: Any) -> bytes:
        try:
            return self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {key!r}: {exc}") from None

    def _to_entry(self, r: RawEntry) -> Entry:
        try:
            key = self._kdec(r.key)
            value = None if r.deleted else self._vdec(r.value)
        except EncodingError as exc:
            raise CorruptionError(f"stored record of key {r.key!r} does not decode: {exc}") from exc
        return Entry(key, value, r.hlc, r.peer, r.deleted, r.seq, r.value)

    def _record(self, k: bytes) -> RawEntry | None:
        blob = self._backend.get(DATA + k)
        return None if blob is None else unpack_record(k, blob)

    def get(self, key: Any, default: Any = None) -> Any:
        """The live value of ``key``, or ``default`` if absent or deleted."""
        if self._closed:
            self._check()
        try:
            k = self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {key!r}: {exc}") from None
        blob = self._bget(DATA + k)
        if blob is None:
            return default
        if blob[0] != FORMAT_VERSION or len(blob) < RECORD_HEAD + 8:
            raise CorruptionError(f"record of key {key!r} is malformed")
        if blob[1] & _DELETED:
            return default
        try:
            return self._vdec(blob[RECORD_HEAD + blob[RECORD_HEAD - 1] : -8])
        except EncodingError as exc:
            raise CorruptionError(f"stored value of key {key!r} does not decode: {exc}") from exc

    def entry(self, key: Any) -> Entry | None:
        """The full register state of ``key`` (tombstones included), or None."""
        self._check()
        r = self._record(self._enc_key(key))
        return None if r is None else self._to_entry(r)

    def __getitem__(self, key: Any) -> Any:
        marker = _MISSING
        v = self.get(key, marker)
        if v is marker:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        self._check()
        r = self._record(self._enc_key(key))
        return r is not None and not r.deleted

    def __len__(self) -> int:
        """Number of live (not deleted) keys, kept incrementally: O(1)."""
        self._check()
        return self._count

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def digest(self) -> bytes:
        """32-byte order-independent fingerprint of every key's state (tombstones included).

        Two replicas that applied the same set of entries have equal digests. Maintained
        incrementally per commit, so this costs nothing.
        """
        self._check()
        return self._digest.to_bytes(32, "big")

    def _range(  # noqa: PLR0917 - private; mirrors the public keyword bounds
        self,
        gt: Any,
        gte: Any,
        lt: Any,
        lte: Any,
        reverse: bool,
        limit: int | None,
    ) -> Iterator[RawEntry]:
        self._check()
        if gt is not None and gte is not None:
            raise ValueError("give at most one of gt and gte")
        if lt is not None and lte is not None:
            raise ValueError("give at most one of lt and lte")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        if gte is not None:
            start = DATA + self._enc_key(gte)
        elif gt is not None:
            start = DATA + self._enc_key(gt) + b"\x00"
        else:
            start = DATA
        if lt is not None:
            stop = DATA + self._enc_key(lt)
        elif lte is not None:
            stop = DATA + self._enc_key(lte) + b"\x00"
        else:
            stop = DATA_END
        return self._scan(start, stop, reverse, limit)

    def _scan(
        self, start: bytes, stop: bytes, reverse: bool, limit: int | None
    ) -> Iterator[RawEntry]:
        if limit == 0 or start >= stop:
            return
        n = 0
        for k, blob in self._backend.iterate(start, stop, reverse=reverse):
            r = unpack_record(k[1:], blob)
            if r.deleted:
                continue
            yield r
            n += 1
            if limit is not None and n >= limit:
                return

    def items(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Live ``(key, value)`` pairs in key order over a half-open (by default) range."""
        kdec, vdec = self._kdec, self._vdec
        rows = self._range(gt, gte, lt, lte, reverse, limit)
        try:
            for r in rows:
                yield kdec(r.key), vdec(r.value)
        except EncodingError as exc:
            raise _stored_corruption(r, exc) from exc

    def keys(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """Live keys in key order; same bounds as :meth:`items`."""
        kdec = self._kdec
        rows = self._range(gt, gte, lt, lte, reverse, limit)
        try:
            for r in rows:
                yield kdec(r.key)
        except EncodingError as exc:
            raise _stored_corruption(r, exc) from exc

    def values(
        self,
        *,
        gt: Any = None,
        gte: Any = None,
        lt: Any = None,
        lte: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """Live values in key order; same bounds as :meth:`items`."""
        vdec = self._vdec
        rows = self._range(gt, gte, lt, lte, reverse, limit)
        try:
            for r in rows:
                yield vdec(r.value)
        except EncodingError as exc:
            raise _stored_corruption(r, exc) from exc

    def raw_changes(
        self,
        since: int = 0,
        *,
        limit: int | None = None,
        exclude_source: tuple[str, bytes] | None = None,
    ) -> Iterator[RawEntry]:
        """Change-log entries with ``seq > since`` in sequence order, in wire form.

        The log is compact: a key appears once, at the sequence of its latest change.
        Writes made while iterating are either seen at their new sequence or not at all.
        ``exclude_source=(peer, incarnation)`` skips entries whose current state was applied
        from that replica: sending them back to it could never change it.
        """
        self._check()
        if not isinstance(since, int) or since < 0:
            raise ValueError(f"since must be a non-negative int, got {since!r}")
        skip = self._sources.get(exclude_source, -1) if exclude_source is not None else -1
        peer_names = self._peer_names
        n = 0
        pending: list[tuple[int, bytes]] = []
        it = self._backend.iterate(log_key(since + 1), LOG_END)
        while True:
            pending.clear()
            scanned = 0
            for lk, lv in it:
                scanned += 1
                if lv[:1] == _LOG_PLAIN:  # a local entry without trailer: the common case
                    k, source = lv[1:], 0
                else:
                    k, source = unpack_log_source(lv)
                if source != skip:
                    seq = int.from_bytes(lk[1:], "big") if len(lk) == 9 else seq_of_log_key(lk)
                    pending.append((seq, k))
                if scanned >= 256:
                    break
            if not scanned:
                return
            if not pending:
                continue  # a whole chunk from the excluded source: keep scanning
            blobs = self._backend.get_many([DATA + k for _, k in pending])
            for (seq, k), blob in zip(pending, blobs, strict=True):
                if blob is None:
                    raise CorruptionError(f"change log names key {k!r} but it has no record")
                # unpack_record, inlined for well-formed records whose peer id is known.
                if len(blob) < RECORD_HEAD + 8 or blob[0] != FORMAT_VERSION:
                    r = unpack_record(k, blob)  # raises CorruptionError
                else:
                    end = RECORD_HEAD + blob[RECORD_HEAD - 1]
                    peer = peer_names.get(blob[RECORD_HEAD:end])
                    if peer is None or len(blob) < end + 8:
                        r = unpack_record(k, blob)
                        if len(peer_names) < _PEER_NAME_CACHE:
                            peer_names[blob[RECORD_HEAD:end]] = r.peer
                    elif int.from_bytes(blob[-8:], "big") != seq:
                        continue
                    else:
                        r = RawEntry(
                            k,
                            blob[end:-8],
                            int.from_bytes(blob[2:10], "big"),
                            peer,
                            bool(blob[1] & _DELETED),
                            seq,
                        )
                if r.seq != seq:
                    continue  # rewritten since; it appears again later in the log
                yield r
                n += 1
                if limit is not None and n >= limit:
                    return
            if scanned < 256:
                return

    def changes(self, since: int = 0) -> Iterator[Entry]:
        """The change log after ``since`` as decoded :class:`Entry` objects (with ``seq``)."""
        for r in self.raw_changes(since):
            yield self._to_entry(r)

    # --- cursors (delta sync) ---------------------------------------------------------

    def cursor(self, peer: str, incarnation: bytes) -> int:
        """The last sequence of ``peer``'s log (at that incarnation) applied here; 0 if none."""
        self._check()
        v = self._backend.get(cursor_key(peer, incarnation))
        return 0 if v is None else unpack_u64(v)

    def cursors(self) -> dict[tuple[str, bytes], int]:
        """Every stored delta-sync cursor: ``{(peer, incarnation): seq}``."""
        self._check()
        return {
            parse_cursor_key(k): unpack_u64(v) for k, v in self._backend.iterate(CURSOR, CURSOR_END)
        }

    # --- writes ---------------------------------------------------------------------

    def _commit(self, items: Sequence[_Change], extra: Sequence[Op], source: int = 0) -> None:
        """Write ``(key, new body, old record or None)`` changes plus ``extra`` atomically.

        The hot path of every batch and apply: keep it lean. Counters change only after
        the backend accepted the batch, so a failed write leaves the store exactly as it was.
        """
        seq, count, digest = self._seq, self._count, self._digest
        ops: list[Op] = []
        add = ops.append
        log_ops: list[tuple[bytes, bytes]] = []
        add_log = log_ops.append
        for k, body, old in items:
            seq += 1
            sb = pack_u64(seq)
            if old is not None:
                if old[0] != FORMAT_VERSION or len(old) < RECORD_HEAD + 8:
                    raise CorruptionError(f"record of key {k!r} is malformed")
                add((LOG + old[-8:], None))
                digest -= body_hash(k, old[:-8])
                if not old[1] & _DELETED:
                    count -= 1
            digest += body_hash(k, body)
            if not body[1] & _DELETED:
                count += 1
            add((DATA + k, body + sb))
            add_log((LOG + sb, k))
        digest %= _MOD
        first = self._seq + 1
        if log_ops:
            last_key, last_k = log_ops.pop()
            if source:
                prefix = pack_log(b"", None, source)
                ops.extend((lk, prefix + k) for lk, k in log_ops)
                ops.append((last_key, pack_log(last_k, (count, digest, self._hlc.last), source)))
            else:
                ops.extend((lk, _LOG_PLAIN + k) for lk, k in log_ops)
                head = _TRAILER_LOG.pack(1, count, digest.to_bytes(32, "big"), self._hlc.last)
                ops.append((last_key, head + last_k))
        ops.extend(extra)
        self._bwrite(ops)
        self._seq, self._count, self._digest = seq, count, digest
        self.stats["commits"] += 1
        if items and (self._commit_listeners or self._change_listeners):
            self._notify(items, first)

    def _notify(self, items: Sequence[_Change], first_seq: int) -> None:
        for fn in list(self._commit_listeners):
            try:
                fn(self._seq)
            except Exception:
                self.stats["hook_errors"] += 1
                log.exception("commit listener %r failed", fn)
        if not self._change_listeners:
            return
        for i, (k, body, _) in enumerate(items):
            entry = self._to_entry(unpack_record(k, body + pack_u64(first_seq + i)))
            for cb in list(self._change_listeners):
                try:
                    cb(entry)
                except Exception:
                    self.stats["hook_errors"] += 1
                    log.exception("change listener %r failed", cb)

    def _write_local(self, k: bytes, v: bytes, deleted: bool) -> Version:
        """One local write: :meth:`_commit` for a single key, inlined (the hottest path).

        Builds the same batch, in the same order, as ``_commit`` would: the removal of the
        key's previous log entry, the record, and the new log entry with the trailer.
        """
        dk = DATA + k
        old = self._bget(dk)
        hlc = self._hlc.now()
        body = record_body(hlc, self._peer_b, deleted, v)
        seq = self._seq + 1
        sb = pack_u64(seq)
        count = self._count if deleted else self._count + 1
        digest = self._digest + body_hash(k, body)
        if old is not None:
            if old[0] != FORMAT_VERSION or len(old) < RECORD_HEAD + 8:
                raise CorruptionError(f"record of key {k!r} is malformed")
            digest -= body_hash(k, old[:-8])
            if not old[1] & _DELETED:
                count -= 1
        digest %= _MOD
        log_v = _TRAILER_LOG.pack(1, count, digest.to_bytes(32, "big"), hlc) + k
        ops: list[Op] = [(dk, body + sb), (LOG + sb, log_v)]
        if old is not None:
            ops.insert(0, (LOG + old[-8:], None))
        self._bwrite(ops)
        self._seq, self._count, self._digest = seq, count, digest
        self.stats["commits"] += 1
        if self._commit_listeners or self._change_listeners:
            self._notify(((k, body, old),), seq)
        return Version(hlc, self._peer_id)

    def put(self, key: Any, value: Any) -> Version:
        """Write ``value`` under ``key``; returns the :class:`Version` it was stamped with."""
        if self._closed:
            self._check()
        try:
            k = self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {key!r}: {exc}") from None
        try:
            v = self._venc(value)
        except EncodingError as exc:
            raise EncodingError(f"value of key {key!r}: {exc}") from None
        with self._lock:
            return self._write_local(k, v, False)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def delete(self, key: Any) -> Version:
        """Write a tombstone for ``key`` (even if absent here: it may exist elsewhere)."""
        self._check()
        k = self._enc_key(key)
        with self._lock:
            return self._write_local(k, b"", True)

    def __delitem__(self, key: Any) -> None:
        self.delete(key)

    def batch(self) -> Batch:
        """An atomic batch: ``with store.batch() as b: b.put(...); b.delete(...)``."""
        self._check()
        return Batch(self)

    def _commit_batch(self, ops: list[tuple[bytes, bytes, bool]]) -> list[Version]:
        with self._lock:
            return self._commit_batch_locked(ops)

    def _commit_batch_locked(self, ops: list[tuple[bytes, bytes, bool]]) -> list[Version]:
        self._check()
        last_index: dict[bytes, int] = {}
        for i, (k, _, _) in enumerate(ops):
            last_index[k] = i
        kept = ops if len(last_index) == len(ops) else [ops[i] for i in sorted(last_index.values())]
        olds = self._backend.get_many([DATA + k for k, _, _ in kept])
        items: list[_Change] = []
        versions: list[Version] = []
        add_item, add_version = items.append, versions.append
        now, peer_b, peer = self._hlc.now, self._peer_b, self._peer_id
        for (k, v, deleted), blob in zip(kept, olds, strict=True):
            hlc = now()
            add_item((k, record_body(hlc, peer_b, deleted, v), blob))
            add_version(Version(hlc, peer))
        if items:
            self._commit(items, ())
        return versions

    # --- merging remote state -----------------------------------------------------------

    def _validate(self, e: RawEntry) -> None:
        if not isinstance(e, RawEntry):
            raise TypeError(f"expected RawEntry, got {type(e).__name__}")
        if not isinstance(e.key, bytes) or not isinstance(e.value, bytes):
            raise EncodingError(f"entry key and value must be bytes (key {e.key!r})")
        if len(e.key) > MAX_KEY_BYTES:
            raise EncodingError(
                f"entry key {e.key[:40]!r} is {len(e.key)} bytes; the limit is {MAX_KEY_BYTES}"
            )
        if len(e.value) > MAX_VALUE_BYTES:
            raise EncodingError(
                f"value of key {e.key[:40]!r} is {len(e.value)} bytes; "
                f"the limit is {MAX_VALUE_BYTES}"
            )
        try:
            self._kdec(e.key)
        except EncodingError as exc:
            raise EncodingError(f"entry key {e.key!r} is corrupt: {exc}") from None
        if not isinstance(e.hlc, int) or isinstance(e.hlc, bool) or not 0 <= e.hlc <= MAX_STAMP:
            raise EncodingError(f"entry of key {e.key!r} has invalid hlc {e.hlc!r}")
        try:
            _check_peer_id(e.peer, "entry peer")
        except ConfigError as exc:
            raise EncodingError(f"entry of key {e.key!r}: {exc}") from None
        if e.deleted:
            if e.value:
                raise EncodingError(f"tombstone of key {e.key!r} carries a value")
        else:
            try:
                self._vdec(e.value)
            except EncodingError as exc:
                raise EncodingError(f"value of key {e.key!r} is corrupt: {exc}") from None

    def _validate_all(self, batch: list[RawEntry]) -> int:
        """:meth:`_validate` every entry; return the highest stamp (0 for none).

        Entries of the common shape take a quick check; anything unusual (and anything
        that fails it) goes through :meth:`_validate`, which raises the precise error.
        Peer ids seen in a valid entry are remembered, so each is checked once.
        """
        kdec, vdec, peers = self._kdec, self._vdec, self._peer_bytes
        top = 0
        for e in batch:
            try:
                if (
                    type(e) is RawEntry
                    and type(e.key) is bytes
                    and type(e.value) is bytes
                    and type(e.hlc) is int
                    and 0 <= e.hlc <= MAX_STAMP
                    and type(e.peer) is str
                    and e.peer in peers
                ):
                    kdec(e.key)
                    if e.deleted:
                        ok = not e.value
                    else:
                        vdec(e.value)
                        ok = True
                    if ok:
                        top = max(top, e.hlc)
                        continue
            except EncodingError:
                pass  # _validate reports it with the key named
            self._validate(e)
            peers[e.peer] = e.peer.encode("utf-8")
            top = max(top, e.hlc)
        return top

    def apply_raw(
        self,
        entries: Iterable[RawEntry],
        *,
        cursor: tuple[str, bytes, int] | None = None,
    ) -> int:
        """Merge remote entries atomically; return how many changed this store's state.

        All-or-nothing: a malformed entry (:class:`EncodingError`) or a stamp too far in
        the future (:class:`ClockSkewError`) rejects the whole call before anything is
        written. ``cursor=(peer, incarnation, seq)`` is stored in the same batch, so a
        delta sync resumes exactly where the last applied batch ended.
        """
        with self._lock:
            return self._apply_raw_locked(entries, cursor)

    def _apply_raw_locked(
        self, entries: Iterable[RawEntry], cursor: tuple[str, bytes, int] | None
    ) -> int:
        self._check()
        batch = list(entries)
        try:
            top = self._validate_all(batch)
            if batch:
                self._hlc.check(top)
        except Exception:
            self.stats["apply_rejected"] += 1
            raise
        extra: list[Op] = []
        source = 0
        if cursor is not None:
            peer, incarnation, seq = cursor
            extra.append((cursor_key(_check_peer_id(peer), incarnation), pack_u64(seq)))
            source = self._sources.get((peer, incarnation), 0)
            if not source:
                source = max(self._sources.values(), default=0) + 1
                extra.append((_M_SOURCE + pack_u64(source), pack_source(peer, incarnation)))
        if not batch:
            if extra:
                self._backend.write(extra[:1])
            return 0
        self._hlc.update(top)
        winners: dict[bytes, RawEntry] = {}
        resolver, to_entry = self.resolver, self._to_entry
        for e in batch:
            cur = winners.get(e.key)
            if cur is None or supersedes(e, cur, resolver, to_entry):
                winners[e.key] = e
        keys = list(winners)
        olds = self._backend.get_many([DATA + k for k in keys])
        items: list[_Change] = []
        peer_bytes = self._peer_bytes
        for k, blob in zip(keys, olds, strict=True):
            new = winners[k]
            if blob is None or supersedes(new, unpack_record(k, blob), resolver, to_entry):
                pb = peer_bytes.get(new.peer)
                if pb is None:
                    pb = peer_bytes[new.peer] = new.peer.encode("utf-8")
                items.append((k, record_body(new.hlc, pb, new.deleted, new.value), blob))
        if items:
            self._commit(items, extra, source)
            if source:
                self._sources[(peer, incarnation)] = source
        elif extra:
            self._backend.write(extra[:1])
        self.stats["applied"] += len(items)
        return len(items)

    def apply(self, entries: Iterable[Entry | RawEntry]) -> int:
        """Merge entries from another replica (e.g. ``other.changes()``).

        Commutative, associative and idempotent: any order, any repetition, interleaved
        with other replicas' entries, converges to the same state. Applied in bounded
        atomic chunks so a huge input neither blocks writers for long nor fills memory.
        Returns how many entries changed the state.
        """
        self._check()
        total = 0
        chunk: list[RawEntry] = []
        for e in entries:
            chunk.append(self._to_raw(e))
            if len(chunk) >= APPLY_CHUNK:
                total += self.apply_raw(chunk)
                chunk = []
        if chunk:
            total += self.apply_raw(chunk)
        return total

    def _to_raw(self, e: Entry | RawEntry) -> RawEntry:
        if isinstance(e, RawEntry):
            return e
        if not isinstance(e, Entry):
            raise TypeError(f"apply() takes Entry or RawEntry objects, not {type(e).__name__}")
        k = self._enc_key(e.key)
        if e.deleted:
            v = b""
        elif e.raw is not None:
            v = e.raw
        else:
            try:
                v = self._venc(e.value)
            except EncodingError as exc:
                raise EncodingError(f"value of key {e.key!r}: {exc}") from None
        return RawEntry(k, v, e.hlc, e.peer, bool(e.deleted))

    # --- hooks ------------------------------------------------------------------------

    def on_commit(self, callback: Callable[[int], object]) -> Callable[[], None]:
        """Call ``callback(last_seq)`` after every commit that changed state (local or applied).

        Cheap: used by live replication to wake up. Returns a function that unsubscribes.
        Exceptions from callbacks are logged and counted in ``stats['hook_errors']``.
        """
        self._commit_listeners.append(callback)
        return lambda: _discard(self._commit_listeners, callback)

    def on_change(self, callback: Callable[[Entry], object]) -> Callable[[], None]:
        """Call ``callback(entry)`` for every key whose state changed (update hook)."""
        self._change_listeners.append(callback)
        return lambda: _discard(self._change_listeners, callback)

    # --- lifecycle ----------------------------------------------------------------------

    def clock_now(self) -> int:
        """A fresh HLC stamp, taken under the commit lock (for a protocol Hello)."""
        with self._lock:
            return self._hlc.now()

    def observe_clock(self, stamp: int) -> None:
        """Merge a peer's stamp into the HLC; :class:`ClockSkewError` if too far ahead."""
        with self._lock:
            self._hlc.update(stamp)

    def read_changes(
        self,
        since: int,
        *,
        limit: int,
        exclude_source: tuple[str, bytes] | None = None,
        stop_at: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RawEntry]:
        """Like :meth:`raw_changes`, materialized under the lock (safe from a worker
        thread): at most ``limit`` entries with ``seq <= stop_at``, ending with the entry
        that brings ``sum(len(key) + len(value) + 24)`` to ``max_bytes``."""
        out: list[RawEntry] = []
        size = 0
        with self._lock:
            for e in self.raw_changes(since, limit=limit, exclude_source=exclude_source):
                if stop_at is not None and e.seq > stop_at:
                    break
                out.append(e)
                if max_bytes is not None:
                    size += len(e.key) + len(e.value) + 24
                    if size >= max_bytes:
                        break
        return out

    def close(self) -> None:
        """Close the store and its backend. Idempotent; later use raises :class:`ClosedError`."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                if not self._backend.closed:
                    self._backend.write([(_M_OPEN, None)])
            finally:
                self._backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._count} keys, seq {self._seq}"
        return f"<Store peer={self._peer_id!r} backend={self._backend.name} {state}>"


def _stored_corruption(r: RawEntry, exc: EncodingError) -> CorruptionError:
    """A stored key or value that does not decode is the storage's fault, not the caller's."""
    return CorruptionError(f"stored record of key {r.key!r} does not decode: {exc}")


def _discard(lst: list[Any], item: Any) -> None:
    with contextlib.suppress(ValueError):
        lst.remove(item)


class _Missing:
    pass


_MISSING = _Missing()


class Batch:
    """Writes collected and committed atomically on ``__exit__`` (or :meth:`commit`).

    If the ``with`` block raises, nothing is written. Values are encoded as they are added,
    so an unencodable value raises :class:`EncodingError` at once.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._kenc, self._venc = store._kenc, store._venc
        self._ops: list[tuple[bytes, bytes, bool]] = []
        self._done = False
        self.versions: list[Version] = []

    def _check(self) -> None:
        if self._done:
            raise ClosedError("batch was already committed or discarded")

    def put(self, key: Any, value: Any) -> None:
        """Queue a put."""
        if self._done:
            self._check()
        try:
            k = self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {key!r}: {exc}") from None
        try:
            v = self._venc(value)
        except EncodingError as exc:
            raise EncodingError(f"value of key {key!r}: {exc}") from None
        self._ops.append((k, v, False))

    def delete(self, key: Any) -> None:
        """Queue a tombstone."""
        self._check()
        self._ops.append((self._store._enc_key(key), b"", True))

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> list[Version]:
        """Write every queued operation in one atomic batch; returns their versions."""
        self._check()
        self._done = True
        self.versions = self._store._commit_batch(self._ops) if self._ops else []
        return self.versions

    def discard(self) -> None:
        """Drop every queued operation."""
        self._done = True
        self._ops.clear()

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()
