"""An independent reading of the position index (``x``) and bucket fingerprints (``f``)
of spec/data-model.md section 18, on raw storage, with hashlib only (no crdt_kv parser):
shared by the spec tests and the fingerprint tests."""

from __future__ import annotations

import hashlib

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


def check_index_and_buckets(pairs: dict[bytes, bytes]) -> None:
    """Every record has exactly one ``x`` entry (``x`` + position + key, empty value), and
    the ``f`` entries hold count and sum of exactly the non-empty buckets."""
    index = [k for k in pairs if k[:1] == b"x"]
    assert all(pairs[k] == b"" for k in index)
    records = {k[1:] for k in pairs if k[:1] == b"d"}
    assert sorted(index) == sorted(b"x" + spec_position(k) + k for k in records)
    stored = {
        int.from_bytes(k[1:], "big"): (int.from_bytes(v[:8], "big"), int.from_bytes(v[8:], "big"))
        for k, v in pairs.items()
        if k[:1] == b"f"
    }
    assert all(len(k) == 3 and len(pairs[k]) == 40 for k in pairs if k[:1] == b"f")
    assert stored == expected_buckets(pairs)
    assert pairs.get(b"mfingerprints") == b"1"
