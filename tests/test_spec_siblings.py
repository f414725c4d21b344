"""crdt_kv reproduces ``spec/vectors/core-siblings.json`` (conflict mode ``siblings``,
storage format 2), and so does a model written from ``spec/data-model.md`` section 16.

The model (join, local writes, canonical state, sibling order) and the record parser here
do not use ``crdt_kv.causal`` or ``crdt_kv.layout``: the vectors, the prose and the code
must agree three ways. Store-level checks run on the ``rocksdb``, ``memory`` and
``sqlite`` backends.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from fingerprint_layout import check_index_and_buckets

import crdt_kv
from crdt_kv.backends import open_backend
from crdt_kv.backends.base import Backend
from crdt_kv.backends.memory import MemoryBackend
from crdt_kv.causal import join, sibling_order
from crdt_kv.errors import ClockSkewError, ConfigError, CorruptionError, EncodingError
from crdt_kv.layout import META_BACKEND, history_key, pack_siblings, unpack_record
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from crdt_kv.version import Entry, RawEntry, Version

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
V = json.loads((VECTORS / "core-siblings.json").read_text("utf-8"))
GROUPS = {"description", "format_version", "resolvers", "joins", "writes", "records",
          "corrupt_records", "scenarios"}  # fmt: skip
MOD = 1 << 256


def test_every_group_is_checked() -> None:
    assert set(V) == GROUPS
    assert V["format_version"] == 2
    assert set(V["resolvers"]) == {"none", "max_int"}


# --- the vectors' state form ------------------------------------------------------------


def _stamp(d: dict[str, Any]) -> int:
    wall, logical = d["hlc_parts"]
    assert d["hlc"] == wall << 16 | logical
    return int(d["hlc"])


def _version(key: bytes, d: dict[str, Any]) -> RawEntry:
    assert d["deleted"] is False or d["value_hex"] == ""
    return RawEntry(key, bytes.fromhex(d["value_hex"]), _stamp(d), d["peer"], d["deleted"])


def raw_state(d: dict[str, Any]) -> RawEntry:
    key = bytes.fromhex(d["key_hex"])
    head = _version(key, d)
    ctx = tuple((c["peer"], _stamp(c)) for c in d["context"])
    others = tuple(_version(key, o) for o in d["others"])
    return RawEntry(key, head.value, head.hlc, head.peer, head.deleted, 0, ctx, others)


def _values(r: RawEntry) -> list[str]:
    return [s.value.hex() for s in (r, *r.others) if not s.deleted]


# --- a model written from spec/data-model.md section 16 --------------------------------


@dataclass(frozen=True)
class Ver:
    peer: str
    hlc: int
    deleted: bool
    value: bytes


@dataclass(frozen=True)
class State:
    """``siblings`` in sibling order and the explicit context, sorted by peer."""

    key: bytes
    siblings: tuple[Ver, ...]
    context: tuple[tuple[str, int], ...]


def model_state(d: dict[str, Any]) -> State:
    r = raw_state(d)
    sibs = tuple(Ver(s.peer, s.hlc, s.deleted, s.value) for s in (r, *r.others))
    return State(r.key, sibs, r.context)


def _json(key: bytes, sibs: list[Any], context: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """The vectors' form of a state; ``sibs`` are :class:`Ver` or :class:`RawEntry`."""

    def v(x: Any) -> dict[str, Any]:
        h = x.hlc
        return {"value_hex": x.value.hex(), "hlc": h, "hlc_parts": [h >> 16, h & 0xFFFF],
                "peer": x.peer, "deleted": x.deleted}  # fmt: skip

    ctx = [{"peer": p, "hlc": h, "hlc_parts": [h >> 16, h & 0xFFFF]} for p, h in context]
    return {"key_hex": key.hex(), **v(sibs[0]), "others": [v(x) for x in sibs[1:]], "context": ctx}


def model_json(s: State) -> dict[str, Any]:
    return _json(s.key, list(s.siblings), s.context)


Resolver = Callable[[Ver, Ver], bool] | None


def _max_int(a: Ver, b: Ver) -> bool:
    """core-merge.json ``max_int``: the larger CBOR integer wins, any value beats a tombstone."""

    def key(x: Ver) -> tuple[bool, int]:
        return (not x.deleted, 0 if x.deleted else int(cbor2.loads(x.value)))

    return key(a) > key(b)


MODEL_RESOLVERS: dict[str, Resolver] = {"none": None, "max_int": _max_int}


def _sibling_cmp(resolver: Resolver) -> Callable[[Ver, Ver], int]:
    """Sibling order: live before tombstones, each group by the merge order, winner first."""

    def cmp(x: Ver, y: Ver) -> int:
        if x.deleted != y.deleted:
            return 1 if x.deleted else -1
        if x.hlc != y.hlc:
            return -1 if x.hlc > y.hlc else 1
        kx, ky = (x.peer.encode(), x.deleted, x.value), (y.peer.encode(), y.deleted, y.value)
        assert kx != ky, "two siblings with one dot"
        if resolver is None:
            return -1 if kx > ky else 1
        first, second = (x, y) if kx < ky else (y, x)
        return -1 if resolver(first, second) == (first is x) else 1

    return cmp


def full_context(s: State) -> dict[str, int]:
    ctx = dict(s.context)
    for v in s.siblings:
        ctx[v.peer] = max(ctx.get(v.peer, -1), v.hlc)
    return ctx


def canonical(key: bytes, sibs: list[Ver], ctx: dict[str, int], resolver: Resolver) -> State:
    ordered = tuple(sorted(sibs, key=functools.cmp_to_key(_sibling_cmp(resolver))))
    implied: dict[str, int] = {}
    for v in ordered:
        implied[v.peer] = max(implied.get(v.peer, -1), v.hlc)
    explicit = [(p, h) for p, h in ctx.items() if h > implied.get(p, -1)]
    return State(key, ordered, tuple(sorted(explicit, key=lambda c: c[0].encode())))


def model_join(a: State, b: State, resolver: Resolver) -> State:
    ca, cb = full_context(a), full_context(b)
    da = {(v.peer, v.hlc): v for v in a.siblings}
    db = {(v.peer, v.hlc): v for v in b.siblings}
    kept: list[Ver] = []
    for dot in da.keys() | db.keys():
        x, y = da.get(dot), db.get(dot)
        if x is not None and y is not None:
            kept.append(max(x, y, key=lambda v: (v.deleted, v.value)))
        elif x is not None and x.hlc > cb.get(x.peer, -1):
            kept.append(x)
        elif y is not None and y.hlc > ca.get(y.peer, -1):
            kept.append(y)
    ctx = {p: max(ca.get(p, -1), cb.get(p, -1)) for p in ca.keys() | cb.keys()}
    return canonical(a.key, kept, ctx, resolver)


def model_write(old: State, new: Ver, covers: dict[str, int] | None) -> State:
    """A local put/delete (``covers`` None: everything held) or merge (``covers``)."""
    ctx = full_context(old)
    if covers is None:
        kept: list[Ver] = []
    else:
        kept = [v for v in old.siblings if v.hlc > covers.get(v.peer, -1)]
        for p, h in covers.items():
            ctx[p] = max(ctx.get(p, -1), h)
    ctx[new.peer] = max(ctx.get(new.peer, -1), new.hlc)
    return canonical(old.key, [*kept, new], ctx, None)


# --- crdt_kv's join -----------------------------------------------------------------------


def _to_entry(r: RawEntry) -> Entry:
    value = None if r.deleted else cbor2.loads(r.value)
    return Entry(r.key.decode(), value, r.hlc, r.peer, r.deleted, r.seq, r.value)


def _entry_max_int(a: Entry, b: Entry) -> bool:
    def key(e: Entry) -> tuple[bool, int]:
        return (not e.deleted, 0 if e.deleted else int(e.value))

    return key(a) > key(b)


RESOLVERS = {"none": None, "max_int": _entry_max_int}


def _order(name: str) -> Callable[[list[RawEntry]], list[RawEntry]]:
    return sibling_order(RESOLVERS[name], _to_entry)


@pytest.mark.parametrize("case", V["joins"], ids=lambda c: c["name"])
def test_join(case: dict[str, Any]) -> None:
    a, b, expect = raw_state(case["a"]), raw_state(case["b"]), raw_state(case["expect"])
    order = _order(case["resolver"])
    assert join(a, b, order) == join(b, a, order) == expect
    assert join(expect, a, order) == join(expect, b, order) == expect
    assert join(a, a, order) == a and join(None, a, order) == a
    assert _values(expect) == case["expect_live_hex"]
    res = MODEL_RESOLVERS[case["resolver"]]
    ma, mb = model_state(case["a"]), model_state(case["b"])
    assert model_json(model_join(ma, mb, res)) == case["expect"], "spec text disagrees"
    assert model_join(mb, ma, res) == model_join(ma, mb, res)


def test_join_is_associative_on_the_vector_states() -> None:
    states = [model_state(c[k]) for c in V["joins"] if c["resolver"] == "none" for k in "ab"]
    raws = {id(s): raw_state(model_json(s)) for s in states}
    order = _order("none")
    rng = random.Random(0)
    triples = list(itertools.product(states, repeat=3))
    for x, y, z in rng.sample(triples, 300):
        left = model_join(model_join(x, y, None), z, None)
        assert left == model_join(x, model_join(y, z, None), None)
        rx, ry, rz = raws[id(x)], raws[id(y)], raws[id(z)]
        assert join(join(rx, ry, order), rz, order) == join(rx, join(ry, rz, order), order)
        assert raw_state(model_json(left)) == join(join(rx, ry, order), rz, order)


# --- store harness ------------------------------------------------------------------------


class _Harness:
    """One siblings-mode store on one backend, reopened from the same storage."""

    def __init__(self, name: str, path: Path, opts: dict[str, Any], clock: ManualClock) -> None:
        self.name, self.path, self.opts, self.clock = name, path, opts, clock
        self.memory = MemoryBackend() if name == "memory" else None
        self.store = self._open()

    def _open(self) -> Store:
        backend: Backend = self.memory or open_backend(self.name, str(self.path))
        return crdt_kv.open(backend=backend, clock=self.clock, rng=random.Random(0), **self.opts)

    def reopen(self) -> None:
        if self.memory is None:
            self.store.close()
        self.store = self._open()

    def dump(self) -> list[tuple[bytes, bytes]]:
        """Storage as the vectors give it: without ``mbackend``, which names the backend."""
        return [(k, v) for k, v in self.store.backend.iterate() if k != META_BACKEND]


@pytest.fixture
def harness(backend_name: str, tmp_path: Path) -> Iterator[Callable[..., _Harness]]:
    made: list[_Harness] = []

    def make(opts: dict[str, Any], clock: ManualClock) -> _Harness:
        h = _Harness(backend_name, tmp_path / f"s{len(made)}", opts, clock)
        made.append(h)
        return h

    yield make
    for h in made:
        h.store.close()


def _live_hex(s: Store, key: str) -> list[str]:
    """``get_all`` as the vectors list it: the raw values, in order."""
    return [bytes(e.raw or b"").hex() for e in s.get_all(key)]


def _only_state(s: Store) -> RawEntry:
    [r] = list(s.raw_changes(0))
    return RawEntry(r.key, r.value, r.hlc, r.peer, r.deleted, 0, r.context, r.others)


@pytest.mark.parametrize("case", V["joins"], ids=lambda c: c["name"])
def test_join_in_store(case: dict[str, Any], harness: Callable[..., _Harness]) -> None:
    a, b, expect = raw_state(case["a"]), raw_state(case["b"]), raw_state(case["expect"])
    clock = ManualClock(max(e.hlc for e in (a, b)) >> 16)
    opts = {"peer_id": "local", "conflicts": "siblings", "resolver": RESOLVERS[case["resolver"]]}
    digests = []
    for first, second in ((a, b), (b, a)):
        s = harness(opts, clock).store
        s.apply_raw([first])
        s.apply_raw([second])
        assert _only_state(s) == expect
        assert _live_hex(s, "cart") == case["expect_live_hex"]
        want = bytes.fromhex(case["expect_live_hex"][0]) if case["expect_live_hex"] else None
        assert s.get("cart") == (None if want is None else cbor2.loads(want))
        assert len(s) == (1 if want is not None else 0)
        digests.append(s.digest())
    assert (
        digests[0] == digests[1] == _spec_hash(b"cart", pack_siblings(expect)).to_bytes(32, "big")
    )


def test_apply_takes_a_state_in_any_sibling_order_and_canonicalises_it() -> None:
    """Section 16.11 rule 1: sibling order and implied context entries are not checked."""
    [case] = [c for c in V["joins"] if c["name"] == "tombstones-after-live-each-by-merge-order"]
    expect = raw_state(case["expect"])
    sibs = [expect, *expect.others][::-1]
    implied = tuple(sorted((s.peer, s.hlc) for s in sibs))
    messy = RawEntry(expect.key, sibs[0].value, sibs[0].hlc, sibs[0].peer, sibs[0].deleted, 0,
                     implied, tuple(RawEntry(expect.key, s.value, s.hlc, s.peer, s.deleted)
                                    for s in sibs[1:]))  # fmt: skip
    s = crdt_kv.open(backend="memory", peer_id="s", conflicts="siblings",
                     clock=ManualClock(expect.hlc >> 16))  # fmt: skip
    assert s.apply_raw([messy]) == 1
    assert _only_state(s) == expect
    s.close()


@pytest.mark.parametrize("case", V["writes"], ids=lambda c: c["name"])
def test_local_write(case: dict[str, Any], harness: Callable[..., _Harness]) -> None:
    before = raw_state(case["before"])
    clock = ManualClock(before.hlc >> 16)
    s = harness({"peer_id": case["peer"], "conflicts": "siblings"}, clock).store
    s.apply_raw([before])
    clock.set(case["clock"])
    value = None if case["value_hex"] is None else cbor2.loads(bytes.fromhex(case["value_hex"]))
    versions = [Version(h, p) for h, p in case["versions"]]
    if case["op"] == "put":
        got = s.put("cart", value)
    elif case["op"] == "delete":
        got = s.delete("cart")
    else:
        got = s.merge("cart", versions, value)
    assert [got.hlc, got.peer] == case["expect_version"] == [case["clock"] << 16, case["peer"]]
    assert _only_state(s) == raw_state(case["expect"])
    assert _live_hex(s, "cart") == case["expect_live_hex"]
    deleted = case["op"] == "delete"
    new = Ver(case["peer"], case["clock"] << 16, deleted, b"" if deleted else cbor2.dumps(value))
    covers = None
    if case["op"] == "merge":
        covers = {}
        for h, p in case["versions"]:
            covers[p] = max(covers.get(p, -1), h)
    modelled = model_write(model_state(case["before"]), new, covers)
    assert model_json(modelled) == case["expect"], "spec text disagrees"


# --- record format 2, parsed from the table of section 16 --------------------------------


def parse_record(blob: bytes) -> tuple[dict[str, Any], int]:
    """The format-2 record layout, field by field; ValueError for anything malformed."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(blob) - 8:
            raise ValueError("truncated")
        pos += n
        return blob[pos - n : pos]

    def u(n: int) -> int:
        return int.from_bytes(take(n), "big")

    if u(1) != 2:
        raise ValueError("format")
    flags = u(1)
    peers = [take(u(1)).decode("utf-8") for _ in range(u(2))]
    sibs = []
    for _ in range(u(2)):
        peer, vflags, hlc = peers[u(2)], u(1), u(8)
        value = take(u(4))
        sibs.append({"value_hex": value.hex(), "hlc": hlc, "hlc_parts": [hlc >> 16, hlc & 0xFFFF],
                     "peer": peer, "deleted": bool(vflags & 1)})  # fmt: skip
    ctx = []
    for _ in range(u(2)):
        peer, hlc = peers[u(2)], u(8)
        ctx.append({"peer": peer, "hlc": hlc, "hlc_parts": [hlc >> 16, hlc & 0xFFFF]})
    if pos != len(blob) - 8 or not sibs:
        raise ValueError("trailing bytes or no sibling")
    if bool(flags & 1) != all(s["deleted"] for s in sibs):
        raise ValueError("record flags contradict the siblings")
    if peers != sorted(peers, key=str.encode) or len(set(peers)) != len(peers):
        raise ValueError("peer table not sorted")
    state = {**sibs[0], "others": sibs[1:], "context": ctx}
    return state, int.from_bytes(blob[-8:], "big")


def test_the_record_table_of_data_model_md_is_the_one_parsed_here() -> None:
    text = (VECTORS.parent / "data-model.md").read_text("utf-8")
    start = text.index("### 16.9 Record format 2")
    table = text[start : text.index("### 16.10", start)]
    fields = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert fields == ["field", "format", "flags", "npeers", "peer table", "nsib", "siblings",
                      "nctx", "context", "seq"]  # fmt: skip


@pytest.mark.parametrize("v", V["records"], ids=lambda v: v["note"][:30])
def test_record(v: dict[str, Any]) -> None:
    state = raw_state(v["state"])
    body = pack_siblings(state)
    assert body.hex() == v["body_hex"]
    assert v["hex"] == v["body_hex"] + v["seq"].to_bytes(8, "big").hex()
    parsed, seq = parse_record(bytes.fromhex(v["hex"]))
    assert seq == v["seq"]
    assert {"key_hex": v["state"]["key_hex"], **parsed} == v["state"]
    r = unpack_record(state.key, bytes.fromhex(v["hex"]))
    assert r == RawEntry(state.key, state.value, state.hlc, state.peer, state.deleted, seq,
                         state.context, state.others)  # fmt: skip
    assert join(None, state, _order("none")) == state, "records hold canonical states"


@pytest.mark.parametrize("v", V["corrupt_records"], ids=lambda v: v["why"])
def test_corrupt_record(v: dict[str, Any]) -> None:
    blob = bytes.fromhex(v["hex"])
    with pytest.raises(CorruptionError):
        unpack_record(b"cart", blob)
    with pytest.raises((ValueError, IndexError)):
        parse_record(blob)


def _spec_hash(key: bytes, body: bytes) -> int:
    h = hashlib.blake2b(len(key).to_bytes(4, "big") + key + body, digest_size=32)
    return int.from_bytes(h.digest(), "big")


def _spec_history_key(key: bytes, hlc: int, peer: str) -> bytes:
    """Section 17: ``h``, the key with 0x00 as 0x00 0xFF, 0x00 0x01, u64 stamp, peer id."""
    return (
        b"h"
        + key.replace(b"\x00", b"\x00\xff")
        + b"\x00\x01"
        + hlc.to_bytes(8, "big")
        + peer.encode()
    )


def test_history_keys_sort_by_key_then_stamp() -> None:
    keys = [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\xff", b"a", b"a\x00", b"a\x00b", b"ab"]
    rows = []
    for k in keys:
        for hlc, peer in ((5, "b"), (7, "a"), (1 << 63, "a")):
            hk = history_key(k, hlc, peer)
            assert hk == _spec_history_key(k, hlc, peer)
            rows.append(((k, hlc, peer.encode()), hk))
    assert [r[1] for r in sorted(rows)] == sorted(r[1] for r in rows)


# --- the store scenario -------------------------------------------------------------------


def _apply_step(h: _Harness, step: dict[str, Any], where: str) -> None:
    s, op = h.store, step["op"]
    if op == "put":
        v = s.put(step["key"], step["value"])
    elif op == "delete":
        v = s.delete(step["key"])
    elif op == "merge":
        v = s.merge(step["key"], [Version(x, p) for x, p in step["versions"]], step["value"])
    elif op == "batch":
        with s.batch() as b:
            for o in step["ops"]:
                b.put(o["key"], o["value"]) if o["op"] == "put" else b.delete(o["key"])
        assert [[x.hlc, x.peer] for x in b.versions] == step["expect_versions"], where
        return
    elif op == "apply":
        c = step["cursor"]
        cursor = None if c is None else (c["peer"], bytes.fromhex(c["incarnation_hex"]), c["seq"])
        changed = s.apply_raw([raw_state(e) for e in step["entries"]], cursor=cursor)
        assert changed == step["expect_changed"], where
        return
    else:
        assert op == "reopen", where
        h.reopen()
        return
    assert [v.hlc, v.peer] == step["expect_version"], where


def _check_storage(dump: list[tuple[bytes, bytes]], expect: dict[str, Any]) -> None:
    """Sections 16 and 17 on raw storage, with the parser above and no crdt_kv parser."""
    assert {k[:1] for k, _ in dump} <= {b"c", b"d", b"f", b"h", b"l", b"m", b"x"}
    check_index_and_buckets(dict(dump))
    meta = {k[1:]: v for k, v in dump if k[:1] == b"m"}
    assert meta[b"format"] == (2).to_bytes(8, "big") and meta[b"conflicts"] == b"siblings"
    digest = live = 0
    for k, v in dump:
        if k[:1] == b"d":
            parse_record(v)
            digest += _spec_hash(k[1:], v[:-8])
            live += not v[1] & 1
    assert (digest % MOD).to_bytes(32, "big").hex() == expect["digest_hex"]
    assert live == expect["len"]
    revisions = []
    for k, v in dump:
        if k[:1] == b"h":
            key, hlc, peer = _parse_history_key(k)
            assert _spec_history_key(key, hlc, peer) == k
            revisions.append([key.decode(), {"value_hex": v[1:].hex(), "hlc": hlc,
                              "hlc_parts": [hlc >> 16, hlc & 0xFFFF], "peer": peer,
                              "deleted": bool(v[0] & 1)}])  # fmt: skip
    assert revisions == expect["revisions"]


def _parse_history_key(k: bytes) -> tuple[bytes, int, str]:
    """Undo the escaping: in the key part every 0x00 is followed by 0xFF, or by 0x01 at its end."""
    key, i = bytearray(), 1
    while k[i] != 0 or k[i + 1] != 1:
        key.append(k[i])
        i += 2 if k[i] == 0 and k[i + 1] == 0xFF else 1
    return bytes(key), int.from_bytes(k[i + 2 : i + 10], "big"), k[i + 10 :].decode()


@pytest.mark.parametrize("sc", V["scenarios"], ids=lambda s: s["name"])
def test_store_scenario(sc: dict[str, Any], harness: Callable[..., _Harness]) -> None:
    clock = ManualClock(sc["initial_clock"])
    h = harness(sc["options"], clock)
    for i, step in enumerate(sc["steps"]):
        where = f"{sc['name']} step {i} ({step['op']})"
        clock.set(step.get("clock", clock()))
        _apply_step(h, step, where)
        s = h.store
        got = (s.last_seq, len(s), s.digest().hex(), s.hlc.last)
        want = (step["expect_last_seq"], step["expect_len"], step["expect_digest_hex"],
                step["expect_hlc_last"])  # fmt: skip
        assert got == want, where
        for key, values in step.get("expect_get_all_hex", {}).items():
            assert _live_hex(s, key) == values, where
        log = step["expect_log"]
        record = s.backend.get(b"d" + log["key"].encode())
        assert record is not None and int.from_bytes(record[-8:], "big") == log["seq"], where
        assert s.backend.get(b"l" + log["seq"].to_bytes(8, "big")) == bytes.fromhex(log["hex"])
    s, ex = h.store, sc["expect"]
    assert (s.last_seq, len(s), s.digest().hex(), s.hlc.last) == (
        ex["last_seq"], ex["len"], ex["digest_hex"], ex["hlc_last"],
    )  # fmt: skip
    changes = [{"seq": e.seq, **_json(e.key, [e, *e.others], e.context)} for e in s.raw_changes(0)]
    assert changes == ex["changes"]
    assert [[k, [e.raw.hex() for e in es]] for k, es in s.conflicts()] == ex["conflicts"]
    cursors = [
        {"peer": p, "incarnation_hex": i.hex(), "seq": q}
        for (p, i), q in sorted(s.cursors().items())
    ]
    assert cursors == ex["cursors"]
    for key in {k for k, _ in ex["revisions"]}:
        newest_first = [v for k, v in reversed(ex["revisions"]) if k == key]
        assert [[e.hlc, e.peer] for e in s.history(key)] == [
            [v["hlc"], v["peer"]] for v in newest_first
        ]
    dump = h.dump()
    assert [k.hex() for k, _ in dump] == [k for k, _ in ex["dump"]]
    for (k, v), (_, want) in zip(dump, ex["dump"], strict=True):
        assert v.hex() == want or (want is None and k == b"mincarnation" and len(v) == 16), k
    _check_storage(dump, ex)


def test_the_mode_is_fixed_at_creation(tmp_path: Path) -> None:
    for mode, other in (("siblings", "lww"), ("lww", "siblings")):
        path = str(tmp_path / mode)
        crdt_kv.open(path, backend="sqlite", peer_id="p", conflicts=mode).close()
        with pytest.raises(ConfigError, match="fixed at creation"):
            crdt_kv.open(path, backend="sqlite", peer_id="p", conflicts=other)
        s = crdt_kv.open(path, backend="sqlite", peer_id="p")
        assert s.conflict_mode == mode
        assert s.backend.get(b"mformat") == (2 if mode == "siblings" else 1).to_bytes(8, "big")
        s.close()


def test_a_merge_context_passes_the_skew_guard_like_any_received_stamp() -> None:
    """Section 16.5: the stamps a merge puts in the context are observed by the clock, so a
    state a replica writes never holds a stamp its peers' skew guard must refuse."""
    t0 = 1_700_000_000_000
    clock = ManualClock(t0)
    a = crdt_kv.open(backend="memory", peer_id="a", conflicts="siblings", clock=clock)
    b = crdt_kv.open(backend="memory", peer_id="b", conflicts="siblings", clock=clock)
    a.put("k", 1)
    with pytest.raises(ClockSkewError):
        a.merge("k", [Version((t0 + 10**6) << 16, "x")], 2)
    assert [e.value for e in a.get_all("k")] == [1] and a.last_seq == 1
    near = Version((t0 + 100) << 16, "x")
    assert a.merge("k", [near], 2).hlc > near.hlc
    b.apply(a.changes())
    assert b.get("k") == 2 and b.digest() == a.digest()
    a.close()
    b.close()


def test_a_state_over_the_record_counts_is_rejected_data() -> None:
    """Section 16.9: a record counts siblings in a u16. A received state (or its join with
    the stored one) over 65,535 siblings is refused like any malformed entry, so a session
    fails with code 4 instead of the store raising from deep inside the commit."""
    t0 = 1_700_000_000_000
    s = crdt_kv.open(backend="memory", peer_id="s", conflicts="siblings", clock=ManualClock(t0))

    def state(peer: str, n: int) -> RawEntry:
        others = tuple(RawEntry(b"k", b"", (t0 << 16) + i, peer, True) for i in range(n))
        return RawEntry(b"k", cbor2.dumps(1), (t0 << 16) + n, "y" + peer, False, 0, (), others)

    with pytest.raises(EncodingError, match="siblings"):
        s.apply_raw([state("x", 0xFFFF)])
    assert s.last_seq == 0 and s.stats["apply_rejected"] == 1
    assert s.apply_raw([state("x", 40_000)]) == 1
    digest = s.digest()
    with pytest.raises(EncodingError, match="siblings"):
        s.apply_raw([state("w", 30_000)])  # concurrent: the join would hold 70,002
    assert s.digest() == digest and len(s.get_all("k")) == 1
    assert s.stats["apply_rejected"] == 2
    s.close()
