"""The implementation reproduces every core test vector in ``spec/vectors/core-*.json``.

The vectors pin the HLC rules, the merge order and the storage layout byte for byte, so a
change to any of them fails here (and needs a new format version and new vectors). Each
group is also checked against a small model written from the text of ``spec/hlc.md`` and
``spec/data-model.md``, so the vectors and the prose cannot drift apart either.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fingerprint_layout import check_index_and_buckets

import crdt_kv
from crdt_kv import codec
from crdt_kv.backends import open_backend
from crdt_kv.backends.base import Backend
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.errors import ClockSkewError, CorruptionError, EncodingError
from crdt_kv.hlc import HLC, pack, unpack
from crdt_kv.layout import META_BACKEND
from crdt_kv.store import Store
from crdt_kv.version import Entry, RawEntry, supersedes

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
MOD = 1 << 256


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


HLC_V = _load("core-hlc.json")
MERGE_V = _load("core-merge.json")
CODEC_V = _load("core-codec.json")
STORE_V = _load("core-store.json")

CHECKED = {
    "core-hlc.json": {"description", "pack", "sequences"},
    "core-merge.json": {"description", "resolvers", "cases"},
    "core-codec.json": {
        "description",
        "format_version",
        "value_encodings",
        "value_rejects",
        "key_encodings",
        "key_rejects",
        "records",
        "corrupt_records",
        "log_entries",
        "corrupt_log_entries",
        "cursor_keys",
        "source_meta",
        "digest_contributions",
        "digest_sums",
    },
    "core-store.json": {"description", "scenarios"},
    # conflict mode siblings, storage format 2: checked in tests/test_spec_siblings.py
    "core-siblings.json": {
        "description",
        "format_version",
        "resolvers",
        "joins",
        "writes",
        "records",
        "corrupt_records",
        "scenarios",
    },
}


def test_every_vector_group_is_checked() -> None:
    files = {p.name for p in VECTORS.glob("core*.json")}
    assert files == set(CHECKED), "a core vector file was added or removed: check it here"
    for name, groups in CHECKED.items():
        assert set(_load(name)) == groups, f"{name} has groups this test does not check"


def _untag(v: Any) -> Any:
    """Decode the vectors' JSON tags for values JSON cannot hold."""
    if isinstance(v, dict):
        if set(v) == {"$bytes"}:
            return bytes.fromhex(v["$bytes"])
        if set(v) == {"$float"}:
            return float(v["$float"])
        if set(v) == {"$str_utf16_surrogate"}:
            return chr(int(v["$str_utf16_surrogate"], 16))
        return {k: _untag(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_untag(x) for x in v]
    return v


# --- HLC ---------------------------------------------------------------------------------


def _spec_now(last: int, pt: int) -> int:
    """spec/hlc.md, now(): wall' = max(l, pt); counter reset on a newer wall, else + 1."""
    wall, logical = last >> 16, last & 0xFFFF
    if pt > wall:
        return pt << 16
    logical += 1
    if logical > 0xFFFF:
        wall, logical = wall + 1, 0
    return wall << 16 | logical


def _spec_update(last: int, remote: int, pt: int, max_offset_ms: int) -> int | None:
    """spec/hlc.md, update(): None means ClockSkewError (the clock keeps ``last``)."""
    l_old, c_old = last >> 16, last & 0xFFFF
    l_m, c_m = remote >> 16, remote & 0xFFFF
    if l_m > pt + max_offset_ms:
        return None
    wall = max(l_old, l_m, pt)
    if wall == l_old == l_m:
        logical = max(c_old, c_m) + 1
    elif wall == l_old:
        logical = c_old + 1
    elif wall == l_m:
        logical = c_m + 1
    else:
        logical = 0
    if logical > 0xFFFF:
        wall, logical = wall + 1, 0
    return wall << 16 | logical


@pytest.mark.parametrize("v", HLC_V["pack"], ids=lambda v: f"{v['wall']}.{v['logical']}")
def test_hlc_pack(v: dict[str, Any]) -> None:
    assert pack(v["wall"], v["logical"]) == v["stamp"]
    assert f"{v['stamp']:016x}" == v["hex"]
    assert unpack(v["stamp"]) == (v["wall"], v["logical"])
    assert v["stamp"] == v["wall"] << 16 | v["logical"]


@pytest.mark.parametrize("seq", HLC_V["sequences"], ids=lambda s: s["name"])
def test_hlc_sequence(seq: dict[str, Any], clock: Any) -> None:
    h = HLC(clock, max_offset_ms=seq["max_offset_ms"], last=seq["last"])
    assert unpack(seq["last"]) == tuple(seq["last_parts"])
    model = seq["last"]
    for i, step in enumerate(seq["steps"]):
        where = f"{seq['name']} step {i} ({step.get('case', step['op'])})"
        clock.now = step["pt"]
        if step["op"] == "now":
            assert h.now() == step["expect"], where
            assert _spec_now(model, step["pt"]) == step["expect"], f"spec text: {where}"
        elif "error" in step:
            assert step["error"] == "ClockSkewError"
            with pytest.raises(ClockSkewError) as info:
                h.update(step["remote"])
            assert info.value.remote_hlc == step["remote"]
            assert info.value.local_wall_ms == step["pt"]
            assert info.value.max_offset_ms == seq["max_offset_ms"]
            assert h.last == step["expect_last"] == model, where
            assert _spec_update(model, step["remote"], step["pt"], seq["max_offset_ms"]) is None
            continue
        else:
            assert unpack(step["remote"]) == tuple(step["remote_parts"])
            assert h.update(step["remote"]) == step["expect"], where
            got = _spec_update(model, step["remote"], step["pt"], seq["max_offset_ms"])
            assert got == step["expect"], f"spec text: {where}"
        assert h.last == step["expect"], where
        assert unpack(step["expect"]) == tuple(step["expect_parts"]), where
        assert step["expect"] > model, f"{where}: a stamp must exceed every earlier one"
        model = step["expect"]


# --- merge order -------------------------------------------------------------------------


def _resolver(name: str) -> Callable[[Entry, Entry], bool] | None:
    """The resolvers the vectors name; their behaviour is described in the vector file."""

    def as_int(e: Entry) -> tuple[bool, int]:
        return (not e.deleted, 0 if e.deleted else int(e.value))

    table: dict[str, Callable[[Entry, Entry], bool] | None] = {
        "none": None,
        "canonical_first": lambda a, b: True,
        "canonical_second": lambda a, b: False,
        "max_int": lambda a, b: as_int(a) > as_int(b),
    }
    return table[name]


def _raw(d: dict[str, Any]) -> RawEntry:
    return RawEntry(
        bytes.fromhex(d["key_hex"]),
        bytes.fromhex(d["value_hex"]),
        d["hlc"],
        d["peer"],
        d["deleted"],
    )


def _decoder(value_encoding: str) -> Callable[[RawEntry], Entry]:
    """Decode raw entries for a resolver, as a store with ``value_encoding`` does."""
    vdec = codec.value_codec(value_encoding)[1]

    def to_entry(r: RawEntry) -> Entry:
        value = None if r.deleted else vdec(r.value)
        return Entry(r.key.decode("utf-8"), value, r.hlc, r.peer, r.deleted, r.seq, r.value)

    return to_entry


def _spec_winner(
    a: RawEntry,
    b: RawEntry,
    resolver: Callable[[Entry, Entry], bool] | None,
    to_entry: Callable[[RawEntry], Entry],
) -> str:
    """spec/data-model.md, merge order, written independently of crdt_kv.version."""
    if a.hlc != b.hlc:
        return "a" if a.hlc > b.hlc else "b"
    ka = (a.peer.encode("utf-8"), a.deleted, a.value)
    kb = (b.peer.encode("utf-8"), b.deleted, b.value)
    if ka == kb:
        return "equal"
    first, second = ("a", "b") if ka < kb else ("b", "a")
    if resolver is None:
        return second
    entries = {"a": to_entry(a), "b": to_entry(b)}
    return first if resolver(entries[first], entries[second]) else second


@pytest.mark.parametrize("case", MERGE_V["cases"], ids=lambda c: c["name"])
def test_merge_order(case: dict[str, Any]) -> None:
    assert case["resolver"] in MERGE_V["resolvers"]
    a, b = _raw(case["a"]), _raw(case["b"])
    fn = _resolver(case["resolver"])
    to_entry = _decoder(case["value_encoding"])
    calls: list[list[str]] = []

    def label(e: Entry) -> str:
        return "a" if (e.peer, e.deleted, e.raw) == (a.peer, a.deleted, a.value) else "b"

    recording = None
    if fn is not None:
        inner = fn

        def recording(x: Entry, y: Entry) -> bool:
            calls.append([label(x), label(y)])
            return inner(x, y)

    assert supersedes(a, b, recording, to_entry) is case["a_supersedes_b"]
    assert calls == case["resolver_calls_a_over_b"]
    calls.clear()
    assert supersedes(b, a, recording, to_entry) is case["b_supersedes_a"]
    assert calls == case["resolver_calls_b_over_a"]
    assert _spec_winner(a, b, fn, to_entry) == case["winner"], "spec text disagrees with the vector"


@pytest.mark.parametrize("case", MERGE_V["cases"], ids=lambda c: c["name"])
def test_merge_order_in_store(case: dict[str, Any], clock: Any) -> None:
    """Both arrival orders leave the vector's winner stored, with equal digests."""
    a, b = _raw(case["a"]), _raw(case["b"])
    clock.now = max(a.hlc, b.hlc) >> 16
    results = []
    for order in ((a, b), (b, a)):
        s = Store(
            MemoryBackend(),
            clock=clock,
            rng=random.Random(0),
            peer_id="local",
            value_encoding=case["value_encoding"],
            resolver=_resolver(case["resolver"]),
        )
        for e in order:
            s.apply_raw([e])
        got = s.entry(a.key.decode("utf-8"))
        assert got is not None
        results.append(((got.hlc, got.peer, got.deleted, got.raw), s.digest()))
    assert results[0] == results[1]
    winner = a if case["winner"] in ("a", "equal") else b
    assert results[0][0] == (winner.hlc, winner.peer, winner.deleted, winner.value)


# --- codec -------------------------------------------------------------------------------


def test_format_version() -> None:
    assert codec.FORMAT_VERSION == CODEC_V["format_version"] == 1


@pytest.mark.parametrize(
    "v", CODEC_V["value_encodings"], ids=lambda v: f"{v['encoding']}:{v['hex']}"
)
def test_value_encoding(v: dict[str, Any]) -> None:
    enc, dec = codec.value_codec(v["encoding"])
    value = _untag(v["value"])
    assert enc(value).hex() == v["hex"]
    assert dec(bytes.fromhex(v["hex"])) == value


@pytest.mark.parametrize("v", CODEC_V["value_rejects"], ids=lambda v: v["encoding"])
def test_value_reject(v: dict[str, Any]) -> None:
    with pytest.raises(EncodingError):
        codec.value_codec(v["encoding"])[0](_untag(v["value"]))


@pytest.mark.parametrize("v", CODEC_V["key_encodings"], ids=lambda v: f"{v['encoding']}:{v['hex']}")
def test_key_encoding(v: dict[str, Any]) -> None:
    enc, dec = codec.key_codec(v["encoding"])
    key = _untag(v["key"])
    assert enc(key).hex() == v["hex"]
    assert dec(bytes.fromhex(v["hex"])) == key


@pytest.mark.parametrize("v", CODEC_V["key_rejects"], ids=lambda v: v["encoding"])
def test_key_reject(v: dict[str, Any]) -> None:
    with pytest.raises(EncodingError):
        codec.key_codec(v["encoding"])[0](_untag(v["key"]))


def _spec_body(hlc: int, peer: str, deleted: bool, value: bytes) -> bytes:
    """The record body table of spec/data-model.md, field by field."""
    pb = peer.encode("utf-8")
    return bytes([1, 1 if deleted else 0]) + hlc.to_bytes(8, "big") + bytes([len(pb)]) + pb + value


@pytest.mark.parametrize("v", CODEC_V["records"], ids=lambda v: str(v["seq"]))
def test_record(v: dict[str, Any]) -> None:
    pb, value = v["peer"].encode("utf-8"), bytes.fromhex(v["value_hex"])
    body = codec.record_body(v["hlc"], pb, v["deleted"], value)
    assert body.hex() == v["body_hex"]
    assert body == _spec_body(v["hlc"], v["peer"], v["deleted"], value)
    blob = codec.pack_record(v["hlc"], v["seq"], pb, v["deleted"], value)
    assert blob.hex() == v["hex"] == v["body_hex"] + v["seq"].to_bytes(8, "big").hex()
    r = codec.unpack_record(b"k", bytes.fromhex(v["hex"]))
    assert (r.key, r.value, r.hlc, r.peer, r.deleted, r.seq) == (
        b"k",
        value,
        v["hlc"],
        v["peer"],
        v["deleted"],
        v["seq"],
    )


@pytest.mark.parametrize("v", CODEC_V["corrupt_records"], ids=lambda v: v["why"])
def test_corrupt_record(v: dict[str, Any]) -> None:
    with pytest.raises(CorruptionError):
        codec.unpack_record(b"k", bytes.fromhex(v["hex"]))


def _spec_log(key: bytes, trailer: dict[str, Any] | None, source: int) -> bytes:
    """The change-log value table of spec/data-model.md."""
    kind = (1 if trailer is not None else 0) | (2 if source else 0)
    out = bytes([kind])
    if trailer is not None:
        out += struct.pack(">Q", trailer["live_count"]) + bytes.fromhex(trailer["digest_hex"])
        out += struct.pack(">Q", trailer["hlc"])
    if source:
        out += struct.pack(">I", source)
    return out + key


@pytest.mark.parametrize("v", CODEC_V["log_entries"], ids=lambda v: str(v["seq"]))
def test_log_entry(v: dict[str, Any]) -> None:
    key, t = bytes.fromhex(v["key_hex"]), v["trailer"]
    trailer = None if t is None else (t["live_count"], int(t["digest_hex"], 16), t["hlc"])
    assert codec.log_key(v["seq"]).hex() == v["storage_key_hex"]
    assert codec.seq_of_log_key(bytes.fromhex(v["storage_key_hex"])) == v["seq"]
    assert codec.pack_log(key, trailer, v["source"]).hex() == v["hex"]
    assert _spec_log(key, t, v["source"]).hex() == v["hex"]
    blob = bytes.fromhex(v["hex"])
    assert codec.unpack_log(blob) == (key, trailer)
    assert codec.unpack_log_source(blob) == (key, v["source"])


@pytest.mark.parametrize("v", CODEC_V["corrupt_log_entries"], ids=lambda v: v["why"])
def test_corrupt_log_entry(v: dict[str, Any]) -> None:
    with pytest.raises(CorruptionError):
        codec.unpack_log(bytes.fromhex(v["hex"]))


@pytest.mark.parametrize("v", CODEC_V["cursor_keys"], ids=lambda v: v["peer"])
def test_cursor_key(v: dict[str, Any]) -> None:
    inc = bytes.fromhex(v["incarnation_hex"])
    pb = v["peer"].encode("utf-8")
    assert (
        codec.cursor_key(v["peer"], inc).hex()
        == v["hex"]
        == (b"c" + bytes([len(pb)]) + pb + inc).hex()
    )
    assert codec.parse_cursor_key(bytes.fromhex(v["hex"])) == (v["peer"], inc)
    assert codec.pack_u64(v["value_seq"]).hex() == v["value_hex"]


@pytest.mark.parametrize("v", CODEC_V["source_meta"], ids=lambda v: str(v["source"]))
def test_source_meta(v: dict[str, Any]) -> None:
    inc = bytes.fromhex(v["incarnation_hex"])
    assert codec.pack_source(v["peer"], inc).hex() == v["value_hex"]
    assert codec.unpack_source(bytes.fromhex(v["value_hex"])) == (v["peer"], inc)
    assert (b"msrc:" + codec.pack_u64(v["source"])).hex() == v["key_hex"]


def _spec_hash(key: bytes, body: bytes) -> int:
    h = hashlib.blake2b(len(key).to_bytes(4, "big") + key + body, digest_size=32)
    return int.from_bytes(h.digest(), "big")


@pytest.mark.parametrize(
    "v", CODEC_V["digest_contributions"], ids=lambda v: v["key_hex"] or "empty"
)
def test_digest_contribution(v: dict[str, Any]) -> None:
    key, body = bytes.fromhex(v["key_hex"]), bytes.fromhex(v["body_hex"])
    assert codec.body_hash(key, body).to_bytes(32, "big").hex() == v["hash_hex"]
    assert _spec_hash(key, body) == int(v["hash_hex"], 16)


@pytest.mark.parametrize("v", CODEC_V["digest_sums"], ids=lambda v: str(v["contributions"]))
def test_digest_sum(v: dict[str, Any]) -> None:
    hashes = [int(CODEC_V["digest_contributions"][i]["hash_hex"], 16) for i in v["contributions"]]
    assert (sum(hashes) >= MOD) is v["wraps"]
    assert (sum(hashes) % MOD).to_bytes(32, "big").hex() == v["digest_hex"]


# --- store scenarios ---------------------------------------------------------------------


class _Harness:
    """Opens a scenario's store on one backend and reopens it from the same storage."""

    def __init__(self, backend_name: str, path: Path, opts: dict[str, Any], clock: Any) -> None:
        self.name, self.path, self.opts, self.clock = backend_name, path, opts, clock
        self.memory = MemoryBackend() if backend_name == "memory" else None
        self.store = self._open()

    def _backend(self) -> Backend:
        if self.memory is not None:
            return self.memory  # a crash: the old Store is dropped, its storage survives
        return open_backend(self.name, str(self.path))

    def _open(self) -> Store:
        return crdt_kv.open(
            backend=self._backend(),
            peer_id=self.opts["peer_id"],
            key_encoding=self.opts.get("key_encoding", "utf-8"),
            value_encoding=self.opts.get("value_encoding", "cbor"),
            max_offset_ms=self.opts.get("max_offset_ms", 500),
            clock=self.clock,
            rng=random.Random(0),
        )

    def reopen(self) -> None:
        if self.memory is None:
            self.store.close()
        self.store = self._open()

    def dump(self) -> list[list[str | None]]:
        """Storage as the vectors give it: without ``mbackend``, which names the backend."""
        return [[k.hex(), v.hex()] for k, v in self.store.backend.iterate() if k != META_BACKEND]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def harness(
    backend_name: str, tmp_path: Path, clock: Any
) -> Iterator[Callable[[dict[str, Any]], _Harness]]:
    made: list[_Harness] = []

    def make(opts: dict[str, Any]) -> _Harness:
        h = _Harness(backend_name, tmp_path / f"s{len(made)}", opts, clock)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def _key(step: dict[str, Any]) -> Any:
    return bytes.fromhex(step["key_hex"]) if "key_hex" in step else step["key"]


def _value(step: dict[str, Any]) -> Any:
    return bytes.fromhex(step["value_hex"]) if "value_hex" in step else step["value"]


def _run_step(h: _Harness, step: dict[str, Any], where: str) -> None:
    s, op = h.store, step["op"]
    if op == "put":
        v = s.put(_key(step), _value(step))
        assert [v.hlc, v.peer] == step["expect_version"], where
    elif op == "delete":
        v = s.delete(_key(step))
        assert [v.hlc, v.peer] == step["expect_version"], where
    elif op == "batch":
        with s.batch() as b:
            for o in step["ops"]:
                if o["op"] == "put":
                    b.put(o["key"], o["value"])
                else:
                    b.delete(o["key"])
        assert [[v.hlc, v.peer] for v in b.versions] == step["expect_versions"], where
    elif op == "apply":
        entries = [_raw(e) for e in step["entries"]]
        c = step.get("cursor")
        cursor = None if c is None else (c["peer"], bytes.fromhex(c["incarnation_hex"]), c["seq"])
        if "error" in step:
            assert step["error"] == "ClockSkewError"
            before = h.dump()
            with pytest.raises(ClockSkewError):
                s.apply_raw(entries, cursor=cursor)
            assert h.dump() == before, f"{where}: a refused apply changed storage"
        else:
            assert s.apply_raw(entries, cursor=cursor) == step["expect_changed"], where
    elif op == "reopen":
        h.reopen()
    else:
        raise AssertionError(f"unknown step {op!r}")


def _check_layout(dump: list[list[str | None]], expect: dict[str, Any]) -> None:
    """Invariants of spec/data-model.md, checked on raw storage without crdt_kv's parsers."""
    pairs = {bytes.fromhex(str(k)): bytes.fromhex(v) for k, v in dump if v is not None}
    records = {k[1:]: v for k, v in pairs.items() if k[:1] == b"d"}
    logs = sorted((int.from_bytes(k[1:], "big"), v) for k, v in pairs.items() if k[:1] == b"l")
    assert {k[:1] for k in pairs} <= {b"c", b"d", b"f", b"l", b"m", b"x"}
    check_index_and_buckets(pairs)
    digest, live = 0, 0
    for key, rec in records.items():
        assert rec[0] == 1, "record format version"
        digest += _spec_hash(key, rec[:-8])
        live += not rec[1] & 1
    assert digest % MOD == int(expect["digest_hex"], 16)
    assert live == expect["len"]
    # one log entry per key, at the sequence stored at the end of the key's record
    assert len(logs) == len(records)
    for seq, value in logs:
        kind = value[0]
        key = value[1 + (48 if kind & 1 else 0) + (4 if kind & 2 else 0) :]
        assert int.from_bytes(records[key][-8:], "big") == seq
    seq, newest = logs[-1]
    assert seq == expect["last_seq"]
    assert newest[0] & 1, "the newest log entry carries the commit trailer"
    assert int.from_bytes(newest[1:9], "big") == expect["len"]
    assert int.from_bytes(newest[9:41], "big") == int(expect["digest_hex"], 16)
    assert int.from_bytes(newest[41:49], "big") == expect["hlc_last"]


@pytest.mark.parametrize("sc", STORE_V["scenarios"], ids=lambda s: s["name"])
def test_store_scenario(
    sc: dict[str, Any], harness: Callable[[dict[str, Any]], _Harness], clock: Any
) -> None:
    clock.now = sc["initial_clock"]
    h = harness(sc["options"])
    for i, step in enumerate(sc["steps"]):
        where = f"{sc['name']} step {i} ({step['op']})"
        clock.now = step.get("clock", clock.now)
        _run_step(h, step, where)
        s = h.store
        assert s.last_seq == step["expect_last_seq"], where
        assert len(s) == step["expect_len"], where
        assert s.digest().hex() == step["expect_digest_hex"], where
        assert s.hlc.last == step["expect_hlc_last"], where
    s, ex = h.store, sc["expect"]
    assert (s.last_seq, len(s), s.digest().hex(), s.hlc.last) == (
        ex["last_seq"],
        ex["len"],
        ex["digest_hex"],
        ex["hlc_last"],
    )
    changes = [
        {
            "seq": e.seq,
            "key_hex": e.key.hex(),
            "hlc": e.hlc,
            "peer": e.peer,
            "deleted": e.deleted,
            "value_hex": e.value.hex(),
        }
        for e in s.raw_changes(0)
    ]
    assert changes == ex["changes"]
    cursors = [
        {"peer": p, "incarnation_hex": i.hex(), "seq": q}
        for (p, i), q in sorted(s.cursors().items())
    ]
    assert cursors == ex["cursors"]
    dump = h.dump()
    inc_key = (b"m" + b"incarnation").hex()
    assert [k for k, _ in dump] == [k for k, _ in ex["dump"]]
    for (k, v), (_, want) in zip(dump, ex["dump"], strict=True):
        if k == inc_key:
            assert want is None and v is not None and len(bytes.fromhex(v)) == 16
        else:
            assert v == want, f"storage value of key {k} differs"
    assert s.incarnation.hex() == dict((k, v) for k, v in dump)[inc_key]
    _check_layout(ex["dump"], ex)
