"""Opening a store: options, metadata (format, peer id, incarnation, encodings, the open
marker, source ids), the counters restored from the newest change-log entry (or from the
newest collection, ``mgc``), the collection horizon and the bucket fingerprints.

Runs once per open, before the store exists, so it works on the bare backend.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from crdt_kv.backends.base import Backend
from crdt_kv.codec import key_codec, value_codec
from crdt_kv.errors import ConfigError, CorruptionError, StoreNotFoundError
from crdt_kv.layout import (
    FORMAT_SIBLINGS,
    FORMAT_VERSION,
    LOG,
    LOG_END,
    META_BACKEND,
    META_CONFLICTS,
    META_FORMAT,
    META_INCARNATION,
    META_KEY_ENCODING,
    META_OPEN,
    META_PEER,
    META_SOURCE,
    META_SOURCE_END,
    META_VALUE_ENCODING,
    pack_u64,
    seq_of_log_key,
    source_of_key,
    unpack_log,
    unpack_source,
    unpack_u64,
)
from crdt_kv.layout_fingerprints import META_GC, META_GC_HORIZON, unpack_gc_state
from crdt_kv.store.buckets import Buckets, load_buckets
from crdt_kv.version import Resolver

__all__ = [
    "CONFLICT_MODES",
    "Meta",
    "State",
    "check_options",
    "check_peer_id",
    "load_state",
    "mark_closed",
    "open_meta",
    "open_store",
]


CONFLICT_MODES = ("lww", "siblings")
"""``lww``: one last-writer-wins register per key (store format 1). ``siblings``:
concurrent writes are kept side by side with a causal context (store format 2)."""


@dataclass(frozen=True, slots=True)
class Meta:
    """What an open settled: who this replica is, how its keys and values are encoded and
    how it resolves concurrent writes."""

    peer_id: str
    incarnation: bytes
    key_encoding: str
    value_encoding: str
    sources: dict[tuple[str, bytes], int]
    """Source ids of the remote peer incarnations entries were applied from."""
    conflicts: str = "lww"


@dataclass(frozen=True, slots=True)
class State:
    """The counters of the newest commit: last sequence, live count, digest, HLC floor;
    and the collection horizon."""

    seq: int
    count: int
    digest: int
    hlc: int
    gc_horizon: int = 0


def check_peer_id(peer_id: object, what: str = "peer_id") -> str:
    """Return ``peer_id`` if it is a non-empty string of at most 255 utf-8 bytes.

    Raises :class:`ConfigError` naming ``what`` otherwise (a peer id is stored with a
    one-byte length in records, cursor keys and source ids).
    """
    if not isinstance(peer_id, str) or not peer_id:
        raise ConfigError(f"{what} must be a non-empty string, got {peer_id!r}")
    try:
        size = len(peer_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {peer_id!r} is not encodable as utf-8") from None
    if size > 255:
        raise ConfigError(f"{what} {peer_id[:20]!r}... is longer than 255 utf-8 bytes")
    return peer_id


def check_options(
    key_encoding: str | None,
    value_encoding: str | None,
    resolver: Resolver | None,
    max_offset_ms: object,
    conflicts: object = None,
) -> None:
    """Reject bad store options with :class:`ConfigError` before the backend is touched."""
    if conflicts is not None and conflicts not in CONFLICT_MODES:
        raise ConfigError(f"conflicts must be 'lww' or 'siblings', got {conflicts!r}")
    if key_encoding is not None:
        key_codec(key_encoding)
    if value_encoding is not None:
        value_codec(value_encoding)
    if resolver is not None and not callable(resolver):
        raise ConfigError("resolver must be callable (a, b) -> bool")
    if not isinstance(max_offset_ms, int) or max_offset_ms < 0:
        raise ConfigError(f"max_offset_ms must be a non-negative int, got {max_offset_ms!r}")


def open_store(
    backend: Backend,
    *,
    peer_id: str | None,
    rng: random.Random,
    key_encoding: str | None,
    value_encoding: str | None,
    resolver: Resolver | None,
    max_offset_ms: object,
    new_incarnation: bool,
    boot_id: bytes,
    conflicts: str | None = None,
    read_only: bool = False,
) -> tuple[Meta, State, Buckets]:
    """Check the options, settle the metadata and restore the counters and the bucket
    fingerprints of an open (building those once for a store that predates them).

    ``read_only``: write nothing (what a writable open would write is kept in memory).
    Any failure closes the backend before it propagates: a rejected open must not leave
    the backend (its lock) open.
    """
    try:
        check_options(key_encoding, value_encoding, resolver, max_offset_ms, conflicts)
        if read_only and new_incarnation:
            raise ConfigError("new_incarnation=True writes a new incarnation: not read-only")
        m = open_meta(
            backend,
            peer_id=peer_id,
            rng=rng,
            key_encoding=key_encoding,
            value_encoding=value_encoding,
            new_incarnation=new_incarnation,
            boot_id=boot_id,
            conflicts=conflicts,
            read_only=read_only,
        )
        state = load_state(backend)
        return m, state, load_buckets(backend, state.seq, read_only=read_only)
    except BaseException:
        backend.close()
        raise


def open_meta(
    backend: Backend,
    *,
    peer_id: str | None,
    rng: random.Random,
    key_encoding: str | None,
    value_encoding: str | None,
    new_incarnation: bool,
    boot_id: bytes,
    conflicts: str | None = None,
    read_only: bool = False,
) -> Meta:
    """Create or check the store's metadata; settle peer id, incarnation, encodings and
    conflict mode.

    Encodings and mode not given default to what the store was created with
    (``utf-8``/``cbor``/``lww`` for a new store); given ones must match it. Leaves the open
    marker (``boot_id``) written, and durable on a backend that is not power-safe. A
    ``read_only`` open writes nothing and refuses a backend holding no store
    (:class:`StoreNotFoundError`).
    """
    if peer_id is not None:
        check_peer_id(peer_id)
    if backend.get(META_FORMAT) is None:
        if read_only:
            raise StoreNotFoundError(f"no crdt_kv store {backend.where} (no store metadata)")
        mode = conflicts or "lww"
        peer, incarnation, kname, vname = _create(
            backend, peer_id, rng, key_encoding or "utf-8", value_encoding or "cbor", mode
        )
    else:
        peer, incarnation, kname, vname, mode = _check_existing(
            backend, peer_id, key_encoding, value_encoding, conflicts
        )
        if not read_only and (new_incarnation or _lost_tail(backend, boot_id)):
            # A restored copy, or an unclean shutdown without fsync across a reboot, or
            # of unknown boot (the log tail may be lost): peers' cursors into our log
            # could skip reissued sequences, so a new incarnation makes them start over.
            # A process crash within one boot loses nothing the OS accepted, so it keeps
            # the incarnation and peers resume from their cursors.
            incarnation = rng.getrandbits(128).to_bytes(16, "big")
            backend.write([(META_INCARNATION, incarnation)])
    key_codec(kname)
    value_codec(vname)
    if not read_only:
        ops: list[tuple[bytes, bytes | None]] = [(META_OPEN, boot_id)]
        if backend.get(META_BACKEND) != _layout(backend):  # an older layout, now upgraded
            ops.append((META_BACKEND, _layout(backend)))
        backend.write(ops)
    if not read_only and not backend.power_safe:
        # Durable before any commit: if a power cut lost the marker (with the writes
        # after it), the next open would trust a log whose tail peers already hold
        # cursors past, reissue those sequence numbers, and peers would skip them.
        backend.make_durable()
    sources = {
        unpack_source(v): source_of_key(k) for k, v in backend.iterate(META_SOURCE, META_SOURCE_END)
    }
    return Meta(peer, incarnation, kname, vname, sources, mode)


def _create(  # noqa: PLR0917 - private; the settled options of a new store
    backend: Backend, peer_id: str | None, rng: random.Random, kname: str, vname: str, mode: str
) -> tuple[str, bytes, str, str]:
    if next(backend.iterate(None, None), None) is not None:
        raise CorruptionError("backend holds data but no crdt_kv metadata")
    peer = peer_id or f"{rng.getrandbits(64):016x}"
    incarnation = rng.getrandbits(128).to_bytes(16, "big")
    backend.write(
        [
            (META_FORMAT, pack_u64(FORMAT_SIBLINGS if mode == "siblings" else FORMAT_VERSION)),
            (META_BACKEND, _layout(backend)),
            (META_PEER, peer.encode("utf-8")),
            (META_INCARNATION, incarnation),
            (META_KEY_ENCODING, kname.encode()),
            (META_VALUE_ENCODING, vname.encode()),
            *([(META_CONFLICTS, b"siblings")] if mode == "siblings" else []),
        ]
    )
    return peer, incarnation, kname, vname


def _layout(backend: Backend) -> bytes:
    """What ``mbackend`` records for ``backend``'s stores (:attr:`Backend.layout`)."""
    return (backend.layout or backend.name).encode("utf-8")


def _check_existing(
    backend: Backend,
    peer_id: str | None,
    key_encoding: str | None,
    value_encoding: str | None,
    conflicts: str | None,
) -> tuple[str, bytes, str, str, str]:
    version = unpack_u64(backend.get(META_FORMAT) or b"")
    if version not in (FORMAT_VERSION, FORMAT_SIBLINGS):
        raise CorruptionError(
            f"store format {version} is not supported (this library reads formats "
            f"{FORMAT_VERSION} and {FORMAT_SIBLINGS})"
        )
    made_by = backend.get(META_BACKEND)
    known = {_layout(backend), *(o.encode("utf-8") for o in backend.older_layouts)}
    if made_by is not None and made_by not in known:
        used = made_by.decode("utf-8", "replace")
        name = used.split("/")[0]
        if name == backend.name:
            raise ConfigError(
                f"the store {backend.where} has the {used} layout of the {name} backend, which "
                "this release does not know (written by a newer one); upgrade crdt_kv to open it"
            )
        raise ConfigError(
            f"the store {backend.where} uses the {name} backend, not {backend.name}; "
            f"open it with backend {name!r}"
        )
    mode = "siblings" if version == FORMAT_SIBLINGS else "lww"
    if (backend.get(META_CONFLICTS) == b"siblings") != (mode == "siblings"):
        raise CorruptionError(f"store format {version} contradicts its conflict mode")
    if conflicts is not None and conflicts != mode:
        raise ConfigError(
            f"store was created with conflicts={mode!r}; it cannot be opened with "
            f"conflicts={conflicts!r} (the mode is fixed at creation)"
        )
    names = (META_PEER, META_INCARNATION, META_KEY_ENCODING, META_VALUE_ENCODING)
    stored = [backend.get(k) for k in names]
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
    return peer, incarnation, kname, vname, mode


def _lost_tail(backend: Backend, boot_id: bytes) -> bool:
    """True when the last life ended uncleanly in a way that may have lost the log tail."""
    marker = backend.get(META_OPEN)
    return marker is not None and not backend.power_safe and (marker == b"1" or marker != boot_id)


def load_state(backend: Backend) -> State:
    """Restore the counters from the trailer of the newest change-log entry: O(1).

    A collection (``gc``, ``drop_collected``) writes no log entry but moves the digest and
    counts, and may delete the newest log entry: its ``mgc`` record wins when its seq is
    not below the newest log entry's, so ``last_seq`` never goes back after a reopen.
    """
    raw = backend.get(META_GC_HORIZON)
    horizon = 0 if raw is None else unpack_u64(raw)
    last = next(backend.iterate(LOG, LOG_END, reverse=True), None)
    gc = backend.get(META_GC)
    gc_state = unpack_gc_state(gc) if gc is not None else None
    seq = count = digest = hlc = 0
    if last is not None:
        seq = seq_of_log_key(last[0])
        _, trailer = unpack_log(last[1])
        if trailer is not None:
            count, digest, hlc = trailer
        elif gc_state is None or gc_state[0] < seq:
            # A collection may leave a plain entry of a multi-key commit newest; only its
            # ``mgc`` record, written after that commit, may stand in for the trailer.
            raise CorruptionError("newest change-log entry lacks the commit trailer")
    if gc_state is not None and gc_state[0] >= seq:
        gc_seq, gc_count, gc_digest, gc_hlc = gc_state
        seq, count, digest, hlc = gc_seq, gc_count, gc_digest, max(hlc, gc_hlc)
    return State(seq, count, digest, hlc, horizon)


def mark_closed(backend: Backend) -> None:
    """Remove the open marker: the next open knows this life ended cleanly."""
    backend.write([(META_OPEN, None)])
