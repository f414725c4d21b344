"""An independent reading of the position index (``x``) and bucket fingerprints (``f``)
of spec/data-model.md section 18, on raw storage, with hashlib only (no crdt_kv parser):
shared by the spec tests and the fingerprint tests."""

from __future__ import annotations

import hashlib

from crdt_kv import Store
from crdt_kv.fingerprint import BUCKETS, POSITION_SPACE
from crdt_kv.store.buckets import Buckets

MOD = 1 << 256


def spec_position(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=8).digest()


def spec_hash(key: bytes, body: bytes) -> int:
    data = len(key).to_bytes(4, "big") + key + body
    return int.from_bytes(hashlib.blake2b(data, digest_size=32).digest(), "big")


def expected_buckets(pairs: dict[bytes, bytes]) -> dict[int, tuple[int, int]]:
    """``{bucket: (count, sum)}`` recomputed from the ``d`` records of a storage map."""
    out: dict[int, tuple[int, int]] = {}
    for k, rec in pairs.items():
        if k[:1] == b"d":
            b = int.from_bytes(spec_position(k[1:]), "big") >> 52
            c, s = out.get(b, (0, 0))
            out[b] = (c + 1, (s + spec_hash(k[1:], rec[:-8])) % MOD)
    return out


def logged_after_checkpoint(pairs: dict[bytes, bytes]) -> set[bytes]:
    """The keys whose newest log entry is after the checkpoint ``mfingerprints`` (u64be
    seq): the only ones whose ``x`` entry and bucket may be missing from storage."""
    since = int.from_bytes(pairs[b"mfingerprints"], "big")
    out = set()
    for k, v in pairs.items():
        if k[:1] == b"l" and int.from_bytes(k[1:], "big") > since:
            out.add(v[1 + (48 if v[0] & 1 else 0) + (4 if v[0] & 2 else 0) :])
    return out


def stale_buckets(pairs: dict[bytes, bytes]) -> set[int]:
    """Buckets whose ``f`` entry may predate the checkpoint: those of the keys logged
    after it."""
    return {int.from_bytes(spec_position(k), "big") >> 52 for k in logged_after_checkpoint(pairs)}


def check_index_and_buckets(pairs: dict[bytes, bytes], *, exact: bool = False) -> None:
    """Every ``x`` entry (``x`` + position + key, empty value) names a record; every record
    has one, except keys logged after the checkpoint (none when ``exact``); the ``f``
    entries hold count and sum of exactly the non-empty buckets, except buckets changed
    after the checkpoint."""
    index = {k for k in pairs if k[:1] == b"x"}
    assert all(pairs[k] == b"" for k in index)
    records = {k[1:] for k in pairs if k[:1] == b"d"}
    want_index = {b"x" + spec_position(k) + k for k in records}
    assert index <= want_index
    late = set() if exact else logged_after_checkpoint(pairs)
    assert want_index - index <= {b"x" + spec_position(k) + k for k in late}
    stored = {
        int.from_bytes(k[1:], "big"): (int.from_bytes(v[:8], "big"), int.from_bytes(v[8:], "big"))
        for k, v in pairs.items()
        if k[:1] == b"f"
    }
    assert all(len(k) == 3 and len(pairs[k]) == 40 for k in pairs if k[:1] == b"f")
    stale = set() if exact else stale_buckets(pairs)
    if exact:
        assert stale_buckets(pairs) == set()
    want = expected_buckets(pairs)
    assert {b: v for b, v in stored.items() if b not in stale} == {
        b: v for b, v in want.items() if b not in stale
    }


def storage(s: Store) -> dict[bytes, bytes]:
    return dict(s.backend.iterate())


def settled(s: Store) -> Buckets:
    """The store's in-memory buckets with every committed change folded in."""
    b = s._log.buckets
    with s._w.lock:
        b.settle()
    return b


def check_store(s: Store) -> None:
    """Storage, memory and the API agree with a recomputation from the records."""
    pairs = storage(s)
    check_index_and_buckets(pairs)
    want = expected_buckets(pairs)
    b = settled(s)
    on_disk = {k[9:] for k in pairs if k[:1] == b"x"}
    assert b.fresh_index() == sorted(b.fresh) and len(set(b.fresh)) == len(b.fresh)
    fresh = {x[9:] for x in b.fresh}
    assert all(x == b"x" + spec_position(x[9:]) + x[9:] for x in b.fresh)
    assert on_disk.isdisjoint(fresh)
    assert on_disk | fresh == {k[1:] for k in pairs if k[:1] == b"d"}
    assert {i: (b.counts[i], b.sums[i]) for i in range(BUCKETS) if b.counts[i]} == want
    assert b.total == sum(c for c, _ in want.values())
    assert s.range_fingerprint(0, POSITION_SPACE) == (int.from_bytes(s.digest(), "big"), b.total)
    stats = s.statistics()
    assert stats.keys == b.total and stats.live == len(s)
    assert stats.tombstones == stats.keys - stats.live
