"""spec/protocol.md, spec/protocol.cddl and spec/vectors/protocol-*.json against crdt_kv.

Valid vectors decode to their fields and re-encode byte for byte; invalid ones fail a
session with the listed error and abort code; the session transcript is reproduced byte
for byte; every message type a real sync emits validates against the CDDL (pycddl); the
state tables and code tables of protocol.md match the implementation.
"""

from __future__ import annotations

import json
import random
import re
import struct
from pathlib import Path
from typing import Any

import cbor2
import pycddl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crdt_kv
from crdt_kv.protocol import (
    Abort,
    AbortCode,
    Ack,
    Batch,
    FrameDecoder,
    Hello,
    Message,
    MsgType,
    Request,
    Session,
    SessionFailed,
    decode_message,
    encode_frame,
    encode_message,
)
from crdt_kv.protocol import events as events_mod
from crdt_kv.protocol import messages as messages_mod
from crdt_kv.protocol import states as states_mod
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock
from crdt_kv.version import RawEntry

SPEC = Path(__file__).resolve().parent.parent / "spec"
VECTORS = SPEC / "vectors"
MESSAGES = json.loads((VECTORS / "protocol-messages.json").read_text("utf-8"))
TRANSCRIPT = json.loads((VECTORS / "protocol-session.json").read_text("utf-8"))
SCHEMA = pycddl.Schema((SPEC / "protocol.cddl").read_text("utf-8"))
T0 = 1_700_000_000_000

# Known gaps of pycddl (cddl-rs), not of the schema: it reads a tag-2 bignum as an integer
# in a uint range, and ignores the base type under `.size` (a bstr passes `tstr .size`).
PYCDDL_GAPS = {"bignum-tag", "abort-reason-bytes"}


def fields(m: Message) -> dict[str, Any]:
    """The JSON form the vectors use (mirrors the field tables of protocol.md)."""
    if isinstance(m, Hello):
        return {
            "version": m.version,
            "cluster_id": m.cluster_id,
            "peer_id": m.peer_id,
            "incarnation_hex": m.incarnation.hex(),
            "hlc": m.hlc,
            "hlc_parts": [m.hlc >> 16, m.hlc & 0xFFFF],
            "last_seq": m.last_seq,
            "send": m.send,
            "receive": m.receive,
            "live": m.live,
            "key_encoding": m.key_encoding,
            "value_encoding": m.value_encoding,
            "max_batch_entries": m.max_batch_entries,
            "conflicts": m.conflicts,
        }
    if isinstance(m, Request):
        return {"since": m.since, "live": m.live}
    if isinstance(m, Batch):
        return {
            "from_seq": m.from_seq,
            "to_seq": m.to_seq,
            "done": m.done,
            "entries": [
                {
                    "key_hex": e.key.hex(),
                    "value_hex": None if e.deleted else e.value.hex(),
                    "hlc": e.hlc,
                    "hlc_parts": [e.hlc >> 16, e.hlc & 0xFFFF],
                    "peer": e.peer,
                    "deleted": e.deleted,
                }
                for e in m.entries
            ],
        }
    if isinstance(m, Ack):
        return {"seq": m.seq}
    return {"code": m.code, "reason": m.reason}


def from_fields(kind: str, f: dict[str, Any]) -> Message:
    """Build the message from the vector's fields alone (the other direction)."""
    if kind == "Hello":
        g = dict(f)
        g["incarnation"] = bytes.fromhex(g.pop("incarnation_hex"))
        wall, logical = g.pop("hlc_parts")
        assert g["hlc"] == wall << 16 | logical
        return Hello(**g)
    if kind == "Request":
        return Request(**f)
    if kind == "Batch":
        entries = []
        for e in f["entries"]:
            wall, logical = e["hlc_parts"]
            assert e["hlc"] == wall << 16 | logical
            value = b"" if e["value_hex"] is None else bytes.fromhex(e["value_hex"])
            assert e["deleted"] is (e["value_hex"] is None)
            key = bytes.fromhex(e["key_hex"])
            entries.append(RawEntry(key, value, e["hlc"], e["peer"], e["deleted"]))
        return Batch(f["from_seq"], f["to_seq"], f["done"], tuple(entries))
    if kind == "Ack":
        return Ack(**f)
    assert kind == "Abort"
    return Abort(**f)


def cddl_ok(payload: bytes) -> bool:
    try:
        SCHEMA.validate_cbor(payload)
    except pycddl.ValidationError:
        return False
    return True


def payload_of(frame_hex: str) -> bytes:
    raw = bytes.fromhex(frame_hex)
    [payload] = FrameDecoder().feed(raw)
    return payload


def test_vector_files_are_all_checked() -> None:
    assert {p.name for p in VECTORS.glob("protocol-*.json")} == {
        "protocol-messages.json",
        "protocol-session.json",
    }
    assert set(MESSAGES) == {
        "description", "protocol_version", "context_hello", "valid", "invalid", "lenient",
    }  # fmt: skip
    assert MESSAGES["protocol_version"] == messages_mod.PROTOCOL_VERSION == 2


# --- valid frames -----------------------------------------------------------------------


@pytest.mark.parametrize("vec", MESSAGES["valid"], ids=lambda v: v["name"])
def test_valid_vector_decodes_and_reencodes_byte_for_byte(vec: dict[str, Any]) -> None:
    payload = payload_of(vec["frame_hex"])
    msg = decode_message(payload)
    assert type(msg).__name__ == vec["type"]
    assert fields(msg) == vec["fields"]
    assert msg == from_fields(vec["type"], vec["fields"])
    assert encode_frame(msg).hex() == vec["frame_hex"]
    assert cddl_ok(payload)


def test_valid_vectors_cover_every_message_type() -> None:
    assert {v["type"] for v in MESSAGES["valid"]} == {
        "Hello", "Request", "Batch", "Ack", "Abort",
    }  # fmt: skip


@pytest.mark.parametrize("vec", MESSAGES["lenient"], ids=lambda v: v["name"])
def test_lenient_encodings_are_accepted(vec: dict[str, Any]) -> None:
    msg = decode_message(payload_of(vec["frame_hex"]))
    assert msg == decode_message(payload_of(vec["preferred_frame_hex"]))
    assert encode_frame(msg).hex() == vec["preferred_frame_hex"] != vec["frame_hex"]


# --- invalid frames ---------------------------------------------------------------------


def _fresh_receiver() -> tuple[Session, Store]:
    store = crdt_kv.open(backend="memory", peer_id="zed", clock=ManualClock(T0))
    sess = Session(store)
    sess.start()
    sess.data_to_send()
    return sess, store


@pytest.mark.parametrize("vec", MESSAGES["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_fails_the_session(vec: dict[str, Any]) -> None:
    sess, store = _fresh_receiver()
    try:
        if vec["after_hello"]:
            assert sess.receive_data(bytes.fromhex(MESSAGES["context_hello"]["frame_hex"])) == [
                events_mod.Connected(
                    "alice", bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0"), "default", 42, 0
                )
            ]
            assert decode_message(FrameDecoder().feed(sess.data_to_send())[0]) == Request(0, False)
        events = sess.receive_data(bytes.fromhex(vec["frame_hex"]))
        [failure] = [e for e in events if isinstance(e, SessionFailed)]
        assert not failure.by_peer and vec["error"] in str(failure.error)
        out = [decode_message(p) for p in FrameDecoder().feed(sess.data_to_send())]
        assert isinstance(out[-1], Abort) and out[-1].code == vec["code"]
        assert len(store) == 0 and store.cursors() == {}
    finally:
        store.close()
    if vec["schema_violation"] and vec["name"] not in PYCDDL_GAPS:
        assert not cddl_ok(bytes.fromhex(vec["frame_hex"])[4:])
    elif vec["schema_violation"] is False and vec["name"] != "trailing-byte":
        assert cddl_ok(bytes.fromhex(vec["frame_hex"])[4:])  # only protocol.md's rules reject it


def test_invalid_vectors_cover_every_abort_code_a_frame_can_cause() -> None:
    assert {v["code"] for v in MESSAGES["invalid"]} == {AbortCode.PROTOCOL, AbortCode.INCOMPATIBLE}


# --- the session transcript -------------------------------------------------------------


def _transcript_run() -> tuple[list[dict[str, Any]], dict[str, Any], list[bytes]]:
    clock = ManualClock(T0)
    a = crdt_kv.open(backend="memory", peer_id="alice", clock=clock, rng=random.Random(1))
    b = crdt_kv.open(backend="memory", peer_id="bob", clock=clock, rng=random.Random(2))
    a.put("color", "blue")
    a.put("n", 1)
    a.put("shared", "from alice")
    clock.advance(3)
    b.put("shared", "from bob")
    b.put("gone", True)
    b.delete("gone")
    clock.advance(2)
    sa, sb = Session(a, max_batch_entries=2, window=2), Session(b, max_batch_entries=2, window=2)
    sa.start()
    sb.start()
    steps: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for _ in range(100):
        moved = False
        for src, dst, name in ((sa, sb, "alice"), (sb, sa, "bob")):
            data = src.data_to_send()
            if data:
                moved = True
                for p in FrameDecoder().feed(data):
                    m = decode_message(p)
                    payloads.append(p)
                    steps.append(
                        {"from": name, "type": type(m).__name__, "fields": fields(m),
                         "frame_hex": (struct.pack(">I", len(p)) + p).hex()}
                    )  # fmt: skip
                dst.receive_data(data)
        if not moved:
            break
    assert sa.complete and sb.complete
    end = {
        name: {"incarnation_hex": s.incarnation.hex(), "digest_hex": s.digest().hex(),
               "last_seq": s.last_seq}
        for name, s in (("alice", a), ("bob", b))
    }  # fmt: skip
    assert a.get("shared") == b.get("shared") == "from bob" and "gone" not in a
    a.close()
    b.close()
    return steps, {"stores": end}, payloads


def test_session_transcript_is_reproduced_byte_for_byte() -> None:
    steps, end, payloads = _transcript_run()
    assert steps == TRANSCRIPT["frames"]
    assert end == TRANSCRIPT["end"]
    stores = TRANSCRIPT["end"]["stores"]
    assert stores["alice"]["digest_hex"] == stores["bob"]["digest_hex"]
    assert all(cddl_ok(p) for p in payloads)
    for step in TRANSCRIPT["frames"]:
        assert encode_frame(from_fields(step["type"], step["fields"])).hex() == step["frame_hex"]


# --- every message type a real sync emits validates against the CDDL ----------------------


def _pump(x: Session, y: Session, out: list[bytes]) -> None:
    for _ in range(1000):
        moved = False
        for src, dst in ((x, y), (y, x)):
            data = src.data_to_send()
            if data:
                out.extend(FrameDecoder().feed(data))
                dst.receive_data(data)
                moved = True
        if not moved:
            return


def test_every_emitted_message_validates_against_cddl() -> None:
    clock = ManualClock(T0)
    a = crdt_kv.open(backend="memory", peer_id="alice", clock=clock)
    b = crdt_kv.open(backend="memory", peer_id="b\u00f6b", clock=clock)
    emitted: list[bytes] = []
    for i in range(25):
        a.put(f"k{i}", {"i": i, "blob": bytes(i)})
        b.put(f"k{i % 7}", [i] * (i % 4))
    b.delete("k3")
    # one-shot sync in both directions, several batches, window 2
    x, y = Session(a, max_batch_entries=4, window=2), Session(b, max_batch_entries=6, window=2)
    x.start()
    y.start()
    _pump(x, y, emitted)
    assert x.complete and y.complete
    # live: catch up, then push new commits, then a shutdown Abort
    lx, ly = Session(a, live=True, mode="push"), Session(b, live=True, mode="pull")
    lx.start()
    ly.start()
    _pump(lx, ly, emitted)
    clock.advance(10)
    a.put("live", True)
    lx.local_changed()
    _pump(lx, ly, emitted)
    a.put("live2", None)
    lx.local_changed()
    emitted.extend(FrameDecoder().feed(lx.data_to_send()))  # an unacked batch ...
    lx.close("going away")  # ... so close() aborts
    emitted.extend(FrameDecoder().feed(lx.data_to_send()))
    # a failure: the receiver's Abort names the fault
    fx, fy = Session(a), Session(b, cluster_id="elsewhere")
    fx.start()
    fy.start()
    _pump(fx, fy, emitted)
    kinds = {cbor2.loads(p)[0] for p in emitted}
    assert kinds == {t.value for t in MsgType}
    codes = {cbor2.loads(p)[1] for p in emitted if cbor2.loads(p)[0] == MsgType.ABORT}
    assert codes == {AbortCode.SHUTDOWN, AbortCode.INCOMPATIBLE}
    bad = [p.hex() for p in emitted if not cddl_ok(p)]
    assert not bad
    a.close()
    b.close()


def test_the_schema_is_not_vacuous() -> None:
    for obj in ([3], [3, 1, 2], [5, 1], [1, 0, 1], [2, 0, 1, True, 0, ["a"], [[b"k", 0, 0, 0, 1]]],
                [0, 1, "c", "", b"1", 0, 0, 0, "u", "c", 1], {"t": 3}, [4, 70000, ""]):  # fmt: skip
        assert not cddl_ok(cbor2.dumps(obj)), obj


peer_ids = st.text(min_size=1, max_size=6).filter(lambda s: s.isprintable())
entries = st.builds(
    lambda k, v, w, lg, p, d: RawEntry(k, b"" if d else v, (w << 16) | lg, p, d),
    st.binary(max_size=8), st.binary(max_size=8), st.integers(0, (1 << 48) - 1),
    st.integers(0, 0xFFFF), peer_ids, st.booleans(),
)  # fmt: skip
messages = st.one_of(
    st.builds(
        Hello, st.just(2), st.text(max_size=5), peer_ids, st.binary(min_size=1, max_size=64),
        st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.booleans(),
        st.booleans(), st.booleans(), st.sampled_from(["utf-8", "bytes"]),
        st.sampled_from(["cbor", "json"]), st.integers(1, (1 << 64) - 1),
        st.sampled_from(["lww", "siblings"]),
    ),
    st.builds(Request, st.integers(0, (1 << 64) - 1), st.booleans()),
    st.builds(
        lambda f, es, extra, d: Batch(f, f + len(es) + extra, d, tuple(es)),
        st.integers(0, 1 << 50), st.lists(entries, max_size=6), st.integers(0, 3), st.booleans(),
    ),
    st.builds(Ack, st.integers(0, (1 << 64) - 1)),
    st.builds(Abort, st.integers(0, 0xFFFF), st.text(max_size=20).filter(str.isprintable)),
)  # fmt: skip


@given(messages)
def test_random_messages_validate_against_cddl(msg: Message) -> None:
    payload = encode_message(msg)
    assert cddl_ok(payload), msg
    assert decode_message(payload) == msg


# --- protocol.md agrees with the implementation -------------------------------------------


def _section(title: str) -> str:
    text = (SPEC / "protocol.md").read_text("utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _tables(text: str) -> list[list[list[str]]]:
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                current.append(cells)
        elif current:
            tables.append(current[1:])  # drop the header row
            current = []
    return tables


def _event(cell: str) -> type:
    name = re.sub(r"[`]", "", cell).split()[0].lstrip("_")
    obj = getattr(states_mod, name, None) or getattr(messages_mod, name)
    assert isinstance(obj, type)
    return obj


def test_state_tables_in_protocol_md_match_states_py() -> None:
    conn, out, inn = _tables(_section("## 6. State machine"))[:3]
    for rows, table, enum in (
        (conn, states_mod.CONN_TABLE, states_mod.ConnState),
        (out, states_mod.OUT_TABLE, states_mod.OutState),
        (inn, states_mod.IN_TABLE, states_mod.InState),
    ):
        doc = {(enum(s), _event(e)): enum(n) for s, e, n in rows}
        assert doc == table


def test_message_and_abort_code_tables_match() -> None:
    [types] = _tables(_section("## 4. Messages"))[:1]
    assert {int(t): name.upper() for t, name, _ in types} == {m.value: m.name for m in MsgType}
    [codes] = _tables(_section("## 10. Errors"))
    assert {int(c): n for c, n, _ in codes} == {
        c.value: c.name.replace("_", " ").lower() for c in AbortCode
    }
