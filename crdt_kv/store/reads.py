"""Range reads: live records in key order between optional bounds, decoded.

Every iterator here is lazy: bounds are checked, and the store's closed check runs, on the
first ``next``. Reads take no lock; each backend read is atomic on its own.

``items``, ``keys`` and ``values`` are one flat generator over the backend's iterator
(issue 13). With the compiled speedups built (and ``cbor`` values, or keys only), each
record is one call to :func:`crdt_kv.accel.scan_item`, whose reference is
:func:`crdt_kv.layout_reads.scan_item`. Otherwise a well-formed ``lww`` record of a peer id
already seen in the scan is sliced in place, and anything else (a siblings record, a new
peer id, a malformed record) goes through :func:`~crdt_kv.layout.unpack_record`. Either
way, what is yielded or raised is what a full parse of every record would give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cbor2 import loads

from crdt_kv.accel import COMPILED, scan_item
from crdt_kv.backends.base import Backend
from crdt_kv.causal import siblings
from crdt_kv.codec import (
    CBOR_BREAK,
    CBOR_CLOSE_LIST,
    CBOR_OPEN_LIST,
    Decoder,
    decode_cbor,
    decode_utf8,
    key_codec,
)
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import (
    DATA,
    DATA_END,
    DATA_SKIP,
    FLAG_DELETED,
    FORMAT_VERSION,
    RECORD_HEAD,
    SEQ_SIZE,
    unpack_record,
)
from crdt_kv.layout_reads import ITEMS, KEYS, SKIP, VALUES
from crdt_kv.version import Entry, RawEntry

__all__ = ["RangeReader", "key_range", "stored_corruption", "to_entry"]

Bounds = tuple[Any, Any, Any, Any, bool, int | None]
"""``(gt, gte, lt, lte, reverse, limit)`` as the public range methods take them."""
_BINARY_KEYS = key_codec("binary")[1]
_PEER_CACHE = 256
"""Peer ids a scan remembers as well-formed (records of others take the full parse)."""


def stored_corruption(r: RawEntry, exc: EncodingError) -> CorruptionError:
    """A stored key or value that does not decode is the storage's fault, not the caller's."""
    return CorruptionError(f"stored record of key {r.key!r} does not decode: {exc}")


def to_entry(r: RawEntry, kdec: Decoder, vdec: Decoder) -> Entry:
    """Decode a stored record into the :class:`Entry` users see."""
    try:
        key = kdec(r.key)
        value = None if r.deleted else vdec(r.value)
    except EncodingError as exc:
        raise stored_corruption(r, exc) from exc
    if not r.others and not r.context:
        return Entry(key, value, r.hlc, r.peer, r.deleted, r.seq, r.value)
    others = tuple(to_entry(o, kdec, vdec) for o in r.others)
    return Entry(key, value, r.hlc, r.peer, r.deleted, r.seq, r.value, r.context, others)


def key_range(
    bounds: Bounds, enc_key: Callable[[Any], bytes]
) -> tuple[bytes | None, bool, bytes | None, bool]:
    """Check ``bounds`` and encode them: ``(low key or None, low inclusive, high key or
    None, high inclusive)``. Raises ValueError for contradictory bounds or a bad limit."""
    gt, gte, lt, lte, _, limit = bounds
    if gt is not None and gte is not None:
        raise ValueError("give at most one of gt and gte")
    if lt is not None and lte is not None:
        raise ValueError("give at most one of lt and lte")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    lo = None if gte is None and gt is None else enc_key(gte if gte is not None else gt)
    hi = None if lt is None and lte is None else enc_key(lt if lt is not None else lte)
    return lo, gte is not None, hi, lte is not None


class RangeReader:
    """Key-ordered scans of live records for :meth:`Store.items` and friends."""

    __slots__ = ("_backend", "_check", "_compiled", "_enc_key", "_kdec", "_vdec")

    def __init__(
        self,
        backend: Backend,
        check: Callable[[], None],
        enc_key: Callable[[Any], bytes],
        kdec: Decoder,
        vdec: Decoder,
        *,
        compiled: bool = False,
    ) -> None:
        """``compiled``: range reads may use the compiled :func:`~crdt_kv.accel.scan_item`
        (the store says so when it is built and the records are format 1)."""
        self._backend, self._check, self._enc_key = backend, check, enc_key
        self._kdec, self._vdec = kdec, vdec
        self._compiled = compiled and COMPILED is not None

    def _span(self, bounds: Bounds) -> tuple[bytes, bytes]:
        """``(start, stop)`` storage keys of ``bounds``; runs the closed check first."""
        self._check()
        lo, lo_incl, hi, hi_incl = key_range(bounds, self._enc_key)
        start = DATA if lo is None else DATA + lo + (b"" if lo_incl else b"\x00")
        stop = DATA_END if hi is None else DATA + hi + (b"\x00" if hi_incl else b"")
        return start, stop

    def rows(self, bounds: Bounds) -> Iterator[RawEntry]:
        """Live records within ``bounds``; raises ValueError for contradictory bounds."""
        start, stop = self._span(bounds)
        return self._scan(start, stop, bounds[4], bounds[5])

    def _scan(
        self, start: bytes, stop: bytes, reverse: bool, limit: int | None
    ) -> Iterator[RawEntry]:
        if limit == 0 or start >= stop:
            return
        n = 0
        for k, blob in self._backend.iterate(start, stop, reverse=reverse):
            r = unpack_record(k, blob, DATA_SKIP)
            if r.deleted:
                continue
            yield r
            n += 1
            if limit is not None and n >= limit:
                return

    def _live(self, bounds: Bounds, what: int) -> Iterator[Any]:
        """Decoded items, keys or values (``what``: ITEMS, KEYS or VALUES) of the live
        records within ``bounds``: :meth:`_scan_items` where the compiled twin of
        :func:`~crdt_kv.accel.scan_item` can decode them, else :meth:`_scan_decoded`."""
        utf8 = self._kdec is decode_utf8
        if (
            self._compiled
            and (what == KEYS or self._vdec is decode_cbor)
            and (utf8 or self._kdec is _BINARY_KEYS)
        ):
            return self._scan_items(bounds, what, utf8)
        return self._scan_decoded(bounds, what)

    def _scan_items(self, bounds: Bounds, what: int, utf8: bool) -> Iterator[Any]:
        """:meth:`_live` as one :func:`~crdt_kv.accel.scan_item` call per record."""
        start, stop = self._span(bounds)
        reverse, limit = bounds[4], bounds[5]
        if limit == 0 or start >= stop:
            return
        n = 0
        for k, blob in self._backend.iterate(start, stop, reverse=reverse):
            item = scan_item(k, blob, what, utf8)
            if item is SKIP:
                continue
            yield item
            n += 1
            if n == limit:
                return

    def _scan_decoded(self, bounds: Bounds, what: int) -> Iterator[Any]:
        """:meth:`_live` with any decoders, in Python.

        The hot loop of every range read, kept flat: no per-record objects or calls but
        the decoders'. A format-1 record is sliced when its peer id is one this scan has
        seen parse (``peers``) and its length holds the peer id and seq; the rest are
        parsed in full, which raises :class:`CorruptionError` for a malformed record (so
        ``end`` is set whenever a format-1 record reaches ``peers.add``).
        """
        start, stop = self._span(bounds)
        reverse, limit = bounds[4], bounds[5]
        if limit == 0 or start >= stop:
            return
        kdec, vdec = self._kdec, self._vdec
        utf8_keys, cbor = kdec is decode_utf8, vdec is decode_cbor
        head, fmt, seq_size, deleted = RECORD_HEAD, FORMAT_VERSION, SEQ_SIZE, FLAG_DELETED
        keys_only, pairs, skip = what == KEYS, what == ITEMS, DATA_SKIP
        peers: set[bytes] = set()
        n = 0
        k = b""
        try:
            for k, blob in self._backend.iterate(start, stop, reverse=reverse):
                try:
                    end = head + blob[head - 1]
                    sliced = (
                        blob[0] == fmt and len(blob) >= end + seq_size and blob[head:end] in peers
                    )
                except IndexError:  # shorter than a record head: the parse below says so
                    sliced = False
                if sliced:
                    if blob[1] & deleted:
                        continue
                    value = blob[end:-seq_size]
                else:
                    r = unpack_record(k, blob, DATA_SKIP)
                    if blob[0] == fmt and len(peers) < _PEER_CACHE:
                        peers.add(blob[head:end])  # it parsed: a valid peer id
                    if r.deleted:
                        continue
                    value = r.value
                if pairs or keys_only:
                    key = k[skip:].decode() if utf8_keys else kdec(k[skip:])
                    if keys_only:
                        yield key
                        n += 1
                        if n == limit:
                            return
                        continue
                if cbor and CBOR_BREAK not in value:  # decode_cbor's first path, inlined
                    try:
                        (v,) = loads(CBOR_OPEN_LIST + value + CBOR_CLOSE_LIST)
                    except Exception:
                        v = vdec(value)
                else:
                    v = vdec(value)
                yield (key, v) if pairs else v
                n += 1
                if n == limit:
                    return
        except (EncodingError, UnicodeDecodeError) as exc:
            why = f"bytes are not valid utf-8: {exc}" if type(exc) is UnicodeDecodeError else exc
            raise CorruptionError(
                f"stored record of key {k[DATA_SKIP:]!r} does not decode: {why}"
            ) from exc

    def items(self, bounds: Bounds) -> Iterator[tuple[Any, Any]]:
        """Decoded ``(key, value)`` pairs."""
        return self._live(bounds, ITEMS)

    def keys(self, bounds: Bounds) -> Iterator[Any]:
        """Decoded keys."""
        return self._live(bounds, KEYS)

    def values(self, bounds: Bounds) -> Iterator[Any]:
        """Decoded values."""
        return self._live(bounds, VALUES)

    def conflicts(self, bounds: Bounds) -> Iterator[tuple[Any, list[Entry]]]:
        """``(key, live siblings)`` of every key holding two or more live siblings
        (``limit`` counts such keys); see :meth:`Store.conflicts`."""
        gt, gte, lt, lte, reverse, limit = bounds
        kdec, vdec = self._kdec, self._vdec
        n = 0
        for r in self.rows((gt, gte, lt, lte, reverse, None)):
            if not r.others:
                continue
            live = [s for s in siblings(r) if not s.deleted]
            if len(live) < 2:
                continue
            entries = [
                to_entry(RawEntry(s.key, s.value, s.hlc, s.peer, False, r.seq), kdec, vdec)
                for s in live
            ]
            yield entries[0].key, entries
            n += 1
            if limit is not None and n >= limit:
                return
