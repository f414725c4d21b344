"""``crdt_kv.reconcile`` over trio memory streams on real stores, hostile peers, and the
strict decoding of repair messages (crdt_kv/repair/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

import crdt_kv
from crdt_kv import RemoteProtocolError, Store
from crdt_kv.repair.messages import (
    Children,
    Entries,
    FrameDecoder,
    Items,
    RepairHello,
    Round,
    decode_message_bytes,
    encode_frame,
    encode_payload,
)
from crdt_kv.repair.report import ReconcileReport
from crdt_kv.repair.tree import position
from crdt_kv.testing import ManualClock
from crdt_kv.version import RawEntry


async def both(a: Store, b: Store, **kw: Any) -> tuple[ReconcileReport, ReconcileReport]:
    left, right = trio.testing.memory_stream_pair()
    out: dict[str, ReconcileReport] = {}

    async def run(name: str, s: Store, stream: Any) -> None:
        out[name] = await crdt_kv.reconcile(s, stream, **kw)

    async with trio.open_nursery() as n:
        n.start_soon(run, "a", a, left)
        n.start_soon(run, "b", b, right)
    return out["a"], out["b"]


def fill(s: Store, n: int, prefix: str = "k") -> None:
    with s.batch() as w:
        for i in range(n):
            w.put(f"{prefix}{i}", {"i": i})


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
async def test_reconcile_converges_over_a_stream(make_store: Any, conflicts: str) -> None:
    a, b = make_store("a", conflicts=conflicts), make_store("b", conflicts=conflicts)
    fill(a, 1500)
    b.apply_raw(a.raw_entries(f"k{i}".encode() for i in range(0, 1500, 2)))
    make_store.clock.advance(4)
    b.put("k1", "b's")
    make_store.clock.advance(1)
    a.put("k1", "a's")
    b.delete("k2")
    ra, rb = await both(a, b)
    assert a.digest() == b.digest() and len(a) == len(b)
    assert ra.round_trips == rb.round_trips
    assert ra.bytes_sent == rb.bytes_received and rb.bytes_sent == ra.bytes_received
    assert rb.entries_received >= 750
    if conflicts == "siblings":
        assert sorted(e.value for e in b.get_all("k1")) == ["a's", "b's"]
    else:
        assert a.get("k1") == b.get("k1") == "a's"
    again = await both(a, b)
    assert all(r.in_sync and r.round_trips == 1 for r in again)


async def test_identical_stores_one_round_trip(make_store: Any) -> None:
    a, b = make_store("a"), make_store("b")
    fill(a, 100)
    b.apply_raw(a.raw_entries(f"k{i}".encode() for i in range(100)))
    ra, rb = await both(a, b)
    assert ra.in_sync and rb.in_sync and ra.round_trips <= 1
    assert ra.entries_sent + rb.entries_sent == 0


async def test_conflict_mode_mismatch_fails_clearly() -> None:
    clock = ManualClock()
    a = crdt_kv.open(backend="memory", peer_id="a", clock=clock)
    b = crdt_kv.open(backend="memory", peer_id="b", clock=clock, conflicts="siblings")
    left, right = trio.testing.memory_stream_pair()
    errors: list[Exception] = []

    async def run(s: Store, stream: Any) -> None:
        try:
            await crdt_kv.reconcile(s, stream)
        except RemoteProtocolError as exc:
            errors.append(exc)

    async with trio.open_nursery() as n:
        n.start_soon(run, a, left)
        n.start_soon(run, b, right)
    assert len(errors) == 2
    assert all("different conflict modes" in str(e) for e in errors)
    assert a.get("x") is None and len(b) == 0


def _peer_hello(**kw: Any) -> RepairHello:
    top = Children(0, 0, (0,) * 16, (1,) * 16)  # one item everywhere: we list ours
    fields: dict[str, Any] = {
        "version": 1,
        "peer_id": "0-forged",
        "conflicts": "lww",
        "key_encoding": "utf-8",
        "value_encoding": "cbor",
        "gc_horizon": 0,
        "digest": b"\x01" * 32,
        "count": 0,
        "max_frame_bytes": 1 << 20,
        "top": top,
    }
    fields.update(kw)
    return RepairHello(**fields)


async def _against_raw_peer(store: Store, frames: list[bytes]) -> ReconcileReport:
    """The forged peer leads (its id sorts first): it sends its hello, waits for our first
    turn (items of every top child: its counts differ from ours), then sends ``frames``."""
    left, right = trio.testing.memory_stream_pair()
    result: list[ReconcileReport] = []

    async def ours() -> None:
        result.append(await crdt_kv.reconcile(store, left))

    async with trio.open_nursery() as n:
        n.start_soon(ours)
        await right.send_all(encode_frame(_peer_hello()))
        decoder = FrameDecoder()
        seen: list[Any] = []
        while not any(isinstance(m, Round) and m.last for m in seen):
            seen += map(decode_message_bytes, decoder.feed(await right.receive_some()))
        assert isinstance(seen[0], RepairHello) and seen[0].peer_id == store.peer_id
        for f in frames:
            await right.send_all(f)
        await trio.testing.wait_all_tasks_blocked()
        await right.aclose()
    return result[0]


async def test_malformed_frame_fails_and_applies_nothing() -> None:
    a = crdt_kv.open(backend="memory", peer_id="a", clock=ManualClock())
    a.put("x", 1)
    before = a.digest()
    entry = RawEntry(b'"y"', cbor2.dumps(2), a.clock_now(), "z", False)
    bad = cbor2.dumps([1, True, [[0, 99, 0, b"", []]], [], []])
    frames = [encode_frame(Entries((entry,))), len(bad).to_bytes(4, "big") + bad]
    with pytest.RaisesGroup(
        pytest.RaisesExc(RemoteProtocolError, match=r"round\.ranges\[0\]\.level")
    ):
        await _against_raw_peer(a, frames)
    assert a.digest() == before and a.get("y") is None


async def test_an_unsolicited_old_state_is_refused(make_store: Any) -> None:
    a = make_store("a")
    a.put("x", 1)
    a.raise_gc_horizon(a.clock_now())
    old = RawEntry(b"old", cbor2.dumps(1), 1 << 16, "z", False)
    report = await _against_raw_peer(
        a, [encode_frame(Entries((old,))), encode_frame(Round(True, (), (), ()))]
    )
    assert report.refused == 1 and report.entries_received == 1 and a.get("old") is None


def test_reconcile_is_the_function_and_loads_trio_lazily() -> None:
    assert callable(crdt_kv.reconcile) and crdt_kv.ReconcileReport is ReconcileReport
    code = (
        "import sys, crdt_kv, crdt_kv.repair, crdt_kv.testing.ranges\nprint('trio' in sys.modules)"
    )
    src = str(Path(crdt_kv.__file__).parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": src},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False", out.stderr


# --- messages ------------------------------------------------------------------------


def _key_in(level: int, index: int) -> bytes:
    shift = 64 - 4 * level
    return next(k for i in range(10**6) if position(k := f"k{i}".encode()) >> shift == index)


def test_messages_round_trip() -> None:
    k = _key_in(2, 37)
    entry = RawEntry(
        b"s",
        b"v",
        5 << 16,
        "p",
        False,
        0,
        (("q", 3 << 16),),
        (RawEntry(b"s", b"", 4 << 16, "q", True),),
    )
    msgs = [
        _peer_hello(gc_horizon=77, count=3),
        Round(
            False,
            (Children(1, 5, tuple(range(16)), (1,) * 16), Items(2, 37, (k,), (9,))),
            (b"m",),
            (b"d",),
        ),
        Entries((entry, RawEntry(b"t", b"w", 6 << 16, "p", False))),
    ]
    for m in msgs:
        assert decode_message_bytes(encode_payload(m)) == m


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([9], "unknown message type"),
        ([1, 1, [], [], []], "round.last"),
        ([1, True, [[0, 16, 0, b"\0" * 128, [0] * 16]], [], []], "round.ranges[0].level"),
        ([1, True, [[0, 1, 16, b"\0" * 128, [0] * 16]], [], []], "round.ranges[0].index"),
        ([1, True, [[0, 0, 0, b"\0" * 127, [0] * 16]], [], []], "round.ranges[0].sums"),
        ([1, True, [[0, 0, 0, b"\0" * 128, [0] * 15]], [], []], "round.ranges[0].counts"),
        ([1, True, [[1, 0, 0, [b"a"], b""]], [], []], "round.ranges[0].hashes"),
        ([1, True, [[1, 1, 0, [b"k1"] * 2, b"\0" * 16]], [], []], "round.ranges[0].keys"),
        ([1, True, [], [1], []], "round.missing[0]"),
        ([2, b"\x80"], "empty message array"),
        ([2, cbor2.dumps([3, 1])], "entries.batch"),
        (
            [0, 1, "a", "lww", "utf-8", "cbor", 0, b"x", 0, 4096, [b"\0" * 128, [0] * 16]],
            "hello.digest",
        ),
    ],
)
def test_hostile_messages_name_the_field(obj: list[Any], field: str) -> None:
    with pytest.raises(RemoteProtocolError, match=field.replace("[", r"\[").replace("]", r"\]")):
        decode_message_bytes(cbor2.dumps(obj))


@pytest.mark.parametrize(
    "obj",
    [[[0] * 100_000], [1, True, [[[0] * 100_000, 0, 0, b"", []]], [], []]],
)
def test_a_huge_unknown_kind_costs_a_short_message(obj: list[Any]) -> None:
    """Found reviewing the fuzz targets: the error reprs the peer's value cut to a few
    dozen characters, not all of it first (``f"{v!r:.30}"`` builds the whole repr)."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_message_bytes(cbor2.dumps(obj))
    assert "..." in str(info.value) and len(str(info.value)) < 200


def test_tags_and_trailing_bytes_are_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="tag"):
        decode_message_bytes(cbor2.dumps(cbor2.CBORTag(2, b"\x01")))
    with pytest.raises(RemoteProtocolError, match="trailing"):
        decode_message_bytes(encode_payload(Round(True, (), (), ())) + b"\0")
