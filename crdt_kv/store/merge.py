"""Merging remote entries: validation and the last-writer-wins decisions. Pure: no storage
access, no clock; the store reads the current records and commits what this decides.

The merge order itself (:func:`crdt_kv.version.supersedes`) is passed in as ``prefer`` by
the caller, so the store decides which function that is at call time.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any

import cbor2

from crdt_kv.causal import Order, join, join_at
from crdt_kv.codec import (
    CBOR_BREAK,
    CBOR_CLOSE_LIST,
    CBOR_OPEN_LIST,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Decoder,
    Encoder,
    decode_cbor,
    decode_utf8,
    plain_string,
)
from crdt_kv.errors import ConfigError, EncodingError
from crdt_kv.fingerprint import state_stamp
from crdt_kv.hlc import MAX_STAMP
from crdt_kv.layout import (
    DATA,
    MAX_SIBLING_PEERS,
    MAX_SIBLINGS,
    pack_siblings,
    pack_single,
    record_body,
    sole_dot,
    unpack_record,
)
from crdt_kv.store.commit import Change
from crdt_kv.store.meta import check_peer_id
from crdt_kv.version import Entry, RawEntry, Resolver

__all__ = [
    "EntryChecker",
    "absent_below",
    "Prefer",
    "changes",
    "raw_chunks",
    "sibling_changes",
    "to_raw",
    "winners",
]

Prefer = Callable[[RawEntry, RawEntry, Resolver | None, Callable[[RawEntry], Entry] | None], bool]
"""The merge order: ``prefer(new, old, resolver, to_entry)`` is True when ``new`` wins."""


class EntryChecker:
    """Validates remote entries against this store's encodings.

    Remembers the peer ids of entries that passed (and their utf-8 bytes, which records
    store), so each peer id is checked and encoded once.
    """

    __slots__ = ("_kdec", "_vdec", "peer_bytes", "siblings")

    def __init__(self, kdec: Decoder, vdec: Decoder, *, siblings: bool = False) -> None:
        self._kdec, self._vdec = kdec, vdec
        self.peer_bytes: dict[str, bytes] = {}
        self.siblings = siblings
        """``siblings`` mode: entries may carry ``others`` and ``context``."""

    def validate_state(self, e: RawEntry) -> int:
        """Validate the ``others`` and ``context`` of a state; return its highest stamp.

        An ``lww`` store refuses both (a sibling state would be silently flattened).
        """
        if not self.siblings:
            raise EncodingError(
                f"entry of key {e.key!r} carries siblings or a causal context, but this "
                "store's conflict mode is 'lww'"
            )
        if type(e.others) is not tuple or type(e.context) is not tuple:
            raise EncodingError(f"state of key {e.key!r}: others and context must be tuples")
        top = e.hlc
        dots = {(e.peer, e.hlc)}
        for o in e.others:
            if not isinstance(o, RawEntry) or o.key != e.key or o.others or o.context:
                raise EncodingError(f"state of key {e.key!r} has a malformed sibling")
            self.validate(o)
            if (o.peer, o.hlc) in dots:
                raise EncodingError(f"state of key {e.key!r} holds dot {o.peer}@{o.hlc} twice")
            dots.add((o.peer, o.hlc))
            top = max(top, o.hlc)
        last = None
        for item in e.context:
            if type(item) is not tuple or len(item) != 2:
                raise EncodingError(f"context of key {e.key!r} has a malformed entry")
            peer, hlc = item
            try:
                check_peer_id(peer, "context peer")
            except ConfigError as exc:
                raise EncodingError(f"context of key {e.key!r}: {exc}") from None
            if type(hlc) is not int or not 0 <= hlc <= MAX_STAMP:
                raise EncodingError(f"context of key {e.key!r} has invalid hlc {hlc!r}")
            if last is not None and peer <= last:
                raise EncodingError(f"context of key {e.key!r} is not sorted by peer")
            last = peer
            top = max(top, hlc)
        _check_counts(e)
        return top

    def validate(self, e: RawEntry) -> None:
        """Raise the precise :class:`EncodingError` (or TypeError) for a malformed entry."""
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
            check_peer_id(e.peer, "entry peer")
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

    def validate_all(self, batch: Sequence[RawEntry]) -> int:
        """:meth:`validate` every entry; return the highest stamp (0 for none).

        Entries of the common shape take a quick check; anything unusual (and anything
        that fails it) goes through :meth:`validate`, which raises the precise error.
        """
        kdec, vdec, peers = self._kdec, self._vdec, self.peer_bytes
        keys_checked = kdec is decode_utf8 and _ascii_keys(batch)
        cbor, loads, plain = vdec is decode_cbor, cbor2.loads, plain_string
        top = 0
        for e in batch:
            try:
                if (
                    type(e) is RawEntry
                    and type(e.key) is bytes
                    and type(e.value) is bytes
                    and len(e.key) <= MAX_KEY_BYTES
                    and len(e.value) <= MAX_VALUE_BYTES
                    and type(hlc := e.hlc) is int
                    and 0 <= hlc <= MAX_STAMP
                    and type(e.peer) is str
                    and e.peer in peers
                    and not e.others
                    and not e.context
                ):
                    if not keys_checked:
                        kdec(e.key)
                    if e.deleted:
                        ok = not e.value
                    elif cbor and plain(v := e.value):
                        ok = True
                    elif cbor and CBOR_BREAK not in v:
                        try:  # decode_cbor's first path, inlined; it reports a failure
                            (_,) = loads(CBOR_OPEN_LIST + v + CBOR_CLOSE_LIST)
                        except Exception:
                            vdec(v)
                        ok = True
                    else:
                        vdec(e.value)
                        ok = True
                    if ok:
                        if hlc > top:  # noqa: PLR1730 - max() costs a call per entry
                            top = hlc
                        continue
            except EncodingError:
                pass  # validate reports it with the key named
            self.validate(e)
            if e.others or e.context:
                top = max(top, self.validate_state(e))
            else:
                peers[e.peer] = e.peer.encode("utf-8")
            top = max(top, e.hlc)
        return top


def _ascii_keys(batch: Sequence[RawEntry]) -> bool:
    """Whether every key of ``batch`` is ASCII bytes, so valid utf-8: one pass over the
    joined keys instead of a decode per key. False (check each key) for anything odd."""
    try:
        return b"".join([e.key for e in batch]).isascii()
    except (AttributeError, TypeError):
        return False


def _check_counts(e: RawEntry) -> None:
    """Refuse a state a format-2 record cannot hold (its counts are u16)."""
    if len(e.others) >= MAX_SIBLINGS:
        raise EncodingError(f"state of key {e.key!r} holds more than {MAX_SIBLINGS} siblings")
    peers = {e.peer, *(o.peer for o in e.others), *(p for p, _ in e.context)}
    if len(peers) > MAX_SIBLING_PEERS:
        raise EncodingError(f"state of key {e.key!r} names more than {MAX_SIBLING_PEERS} peers")


def winners(
    batch: Sequence[RawEntry],
    prefer: Prefer,
    resolver: Resolver | None,
    to_entry: Callable[[RawEntry], Entry],
) -> dict[bytes, RawEntry]:
    """The winning entry of each key among ``batch`` (validated entries)."""
    best: dict[bytes, RawEntry] = {}
    for e in batch:
        cur = best.get(e.key)
        if cur is None or prefer(e, cur, resolver, to_entry):
            best[e.key] = e
    return best


def changes(  # noqa: PLR0917 - private; the merge's inputs, all needed
    best: dict[bytes, RawEntry],
    olds: Sequence[bytes | None],
    prefer: Prefer,
    resolver: Resolver | None,
    to_entry: Callable[[RawEntry], Entry],
    peer_bytes: dict[str, bytes],
) -> list[Change]:
    """The commit changes of the winners that beat the stored records ``olds`` (one per
    key of ``best``, in its order; None where the key has no record)."""
    items: list[Change] = []
    for (k, new), blob in zip(best.items(), olds, strict=True):
        if blob is None or prefer(new, unpack_record(k, blob), resolver, to_entry):
            pb = peer_bytes.get(new.peer)
            if pb is None:
                pb = peer_bytes[new.peer] = new.peer.encode("utf-8")
            items.append((k, record_body(new.hlc, pb, new.deleted, new.value), blob))
    return items


def absent_below(
    batch: list[RawEntry],
    horizon: int,
    get_many: Callable[[list[bytes]], list[bytes | None]],
    quarantined: Container[bytes] = (),
) -> tuple[list[RawEntry], int]:
    """Absence wins: ``batch`` without the entries of keys this store holds no record of
    whose incoming state (the newest over the batch) is older than ``horizon``, and how
    many entries that left out. Such a key was collected here, or is about to be
    everywhere: taking it back would resurrect what collection removed. Keys in
    ``quarantined`` are exempt: their absence here is a loss, not a collection."""
    tops: dict[bytes, int] = {}
    for e in batch:
        s = state_stamp(e)
        if s > tops.get(e.key, -1):
            tops[e.key] = s
    old = [k for k, s in tops.items() if s < horizon and k not in quarantined]
    if not old:
        return batch, 0
    gone = {
        k for k, blob in zip(old, get_many([DATA + k for k in old]), strict=True) if blob is None
    }
    if not gone:
        return batch, 0
    kept = [e for e in batch if e.key not in gone]
    return kept, len(batch) - len(kept)


def min_stamp(e: RawEntry) -> int:
    """The oldest version stamp of a state."""
    return min(s.hlc for s in (e, *e.others))


def sibling_changes(
    batch: Sequence[RawEntry],
    get_many: Callable[[list[bytes]], list[bytes | None]],
    order: Order,
    horizon: int = 0,
    quarantined: Container[bytes] = (),
) -> tuple[list[Change], frozenset[bytes]]:
    """``siblings`` mode: join each key's incoming states (validated) with its stored
    state; the changes of the keys whose state moved, and the keys among them whose new
    state is not the incoming one (it kept local versions the sender lacks, so it must
    not be echo-suppressed towards that sender). A joined state a record cannot hold
    raises :class:`EncodingError` before anything is written. Versions older than
    ``horizon`` that the stored state does not hold are left out (absence wins version by
    version, :func:`crdt_kv.causal.join`), except for ``quarantined`` keys, whose stored
    state may lack versions it lost."""
    joined: dict[bytes, RawEntry] = {}
    for e in batch:
        joined[e.key] = join(joined.get(e.key), e, order)
        _check_counts(joined[e.key])
    olds = get_many([DATA + k for k in joined])
    items: list[Change] = []
    mixed: set[bytes] = set()
    for (k, new), blob in zip(joined.items(), olds, strict=True):
        h = 0 if k in quarantined else horizon
        single = not new.others and not new.context
        if single:
            pb = new.peer.encode("utf-8")
            incoming = pack_single(new.hlc, pb, new.deleted, new.value)
        else:
            incoming = pack_siblings(new)
        if blob is None:
            if h and state_stamp(new) >= h > min_stamp(new):
                trimmed = join_at(None, new, order, h)
                if trimmed is not None:
                    items.append((k, pack_siblings(trimmed), None))
                continue
            items.append((k, incoming, None))
            continue
        if single and (mine := sole_dot(blob, pb)) is not None and mine < new.hlc:
            # One writer's newer version over its own older one: the join is the new one.
            items.append((k, incoming, blob))
            continue
        merged = join_at(unpack_record(k, blob), new, order, h)
        if merged is None:
            continue
        _check_counts(merged)
        body = pack_siblings(merged)
        if body != blob[:-8]:
            items.append((k, body, blob))
            if body != incoming:
                mixed.add(k)
    return items, frozenset(mixed)


def to_raw(e: Entry | RawEntry, enc_key: Callable[[Any], bytes], venc: Encoder) -> RawEntry:
    """An :class:`Entry` (decoded) in wire form, encoded with this store's encodings."""
    if isinstance(e, RawEntry):
        return e
    if not isinstance(e, Entry):
        raise TypeError(f"apply() takes Entry or RawEntry objects, not {type(e).__name__}")
    if e.others:
        head = to_raw(Entry(e.key, e.value, e.hlc, e.peer, e.deleted, 0, e.raw), enc_key, venc)
        others = tuple(to_raw(o, enc_key, venc) for o in e.others)
        return RawEntry(
            head.key, head.value, head.hlc, head.peer, head.deleted, 0, tuple(e.context), others
        )
    k = enc_key(e.key)
    if e.deleted:
        v = b""
    elif e.raw is not None:
        v = e.raw
    else:
        try:
            v = venc(e.value)
        except EncodingError as exc:
            raise EncodingError(f"value of key {e.key!r}: {exc}") from None
    return RawEntry(k, v, e.hlc, e.peer, bool(e.deleted), 0, tuple(e.context))


def raw_chunks(
    entries: Iterable[Entry | RawEntry], enc_key: Callable[[Any], bytes], venc: Encoder, size: int
) -> Iterator[list[RawEntry]]:
    """``entries`` in wire form (:func:`to_raw`), lazily, in lists of at most ``size``."""
    chunk: list[RawEntry] = []
    for e in entries:
        chunk.append(to_raw(e, enc_key, venc))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
