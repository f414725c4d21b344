"""Wire messages: exact round trips, strict decoding, and frame splitting."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import cbor2
import pytest
from byte_edits import EDITS, edited
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_kv.errors import LocalProtocolError, RemoteProtocolError
from crdt_kv.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Abort,
    AbortCode,
    Ack,
    Batch,
    FrameDecoder,
    Hello,
    Message,
    MsgType,
    Repair,
    Request,
    Verify,
    decode_message,
    encode_frame,
    encode_message,
)
from crdt_kv.protocol.batch_decoding import SMALL_FRAME_BYTES
from crdt_kv.protocol.messages import MAX_REPAIR_PAYLOAD, check_frame_prefix
from crdt_kv.version import RawEntry

T0 = 1_700_000_000_000
U64 = (1 << 64) - 1


def hello(**kw: Any) -> Hello:
    fields: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "cluster_id": "default",
        "peer_id": "alice",
        "incarnation": bytes(range(16)),
        "hlc": (T0 << 16) | 7,
        "last_seq": 42,
        "send": True,
        "receive": True,
        "live": False,
        "key_encoding": "utf-8",
        "value_encoding": "cbor",
        "max_batch_entries": 1000,
    }
    fields.update(kw)
    return Hello(**fields)


ENTRIES = (
    RawEntry(b"k1", cbor2.dumps("v1"), (T0 << 16) | 1, "alice", False),
    RawEntry(b"k2", b"", ((T0 + 5) << 16) | 0, "bob", True),
    RawEntry(b"k3", cbor2.dumps({"a": [1, 2]}), ((T0 + 3) << 16) | 65535, "alice", False),
    RawEntry(b"", cbor2.dumps(None), 0, "\u00e9\u00e8", False),
)

MESSAGES: list[Message] = [
    hello(),
    hello(send=False, receive=True, live=True, cluster_id="", last_seq=0, hlc=0),
    hello(send=True, receive=False, peer_id="p" * 255, incarnation=b"\xff" * 64, hlc=U64),
    hello(send=False, receive=False, max_batch_entries=U64, last_seq=U64),
    Request(0, False),
    Request(U64, True),
    Request(0, True, None, True),
    Request(7, False, (b"k", 9), True),
    Verify(b"\x00" * 32, True),
    Verify(b"\xff" * 32, False),
    Verify(b"\xff" * 32, True, True),
    Repair(b"\x00\x00\x00\x01\x80"),
    Repair(b"r" * MAX_REPAIR_PAYLOAD),
    Batch(0, 0, True, ()),
    Batch(3, 9, False, ENTRIES),
    Batch(0, U64, True, ENTRIES[:1]),
    Ack(0),
    Ack(U64),
    Abort(AbortCode.PROTOCOL, "bad frame"),
    Abort(AbortCode.SHUTDOWN, ""),
    Abort(0xFFFF, "\u00e9" * 2048),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_every_message_type(msg: Message) -> None:
    payload = encode_message(msg)
    assert decode_message(payload) == msg
    frame = encode_frame(msg)
    assert frame[:4] == struct.pack(">I", len(payload))
    assert frame[4:] == payload
    assert FrameDecoder().feed(frame) == [payload]


def test_every_message_type_is_covered() -> None:
    kinds = {cbor2.loads(encode_message(m))[0] for m in MESSAGES}
    assert kinds == {t.value for t in MsgType}


def test_hello_flags_are_independent_bits() -> None:
    for send in (False, True):
        for receive in (False, True):
            for live in (False, True):
                msg = hello(send=send, receive=receive, live=live)
                flags = cbor2.loads(encode_message(msg))[7]
                assert flags == send | receive << 1 | live << 2
                assert decode_message(encode_message(msg)) == msg


def test_hello_ignores_unknown_flag_bits_and_extra_elements() -> None:
    arr = cbor2.loads(encode_message(hello(live=True)))
    arr[7] |= 0xF0
    arr.extend(["future", 1])
    assert decode_message(cbor2.dumps(arr)) == hello(live=True)


def test_hello_repair_flag_is_bit_3() -> None:
    msg = hello(repair=True)
    assert cbor2.loads(encode_message(msg))[7] & 8
    assert decode_message(encode_message(msg)) == msg


def test_batch_encoding_is_compact() -> None:
    arr = cbor2.loads(encode_message(Batch(3, 9, False, ENTRIES)))
    assert arr[:4] == [MsgType.BATCH, 3, 9, False]
    assert arr[4] == 0  # base_wall: the smallest wall among entries (the zero stamp)
    assert arr[5] == ["alice", "bob", "\u00e9\u00e8"]
    assert arr[6][1] == [b"k2", T0 + 5, 0, 1, None]
    arr2 = cbor2.loads(encode_message(Batch(0, 2, True, ENTRIES[:2])))
    assert arr2[4] == T0
    assert [r[1] for r in arr2[6]] == [0, 5]


wall = st.integers(0, (1 << 48) - 1)
raw_entries = st.builds(
    lambda k, v, w, lg, p, d: RawEntry(k, b"" if d else v, (w << 16) | lg, p, d),
    st.binary(max_size=20),
    st.binary(max_size=20),
    wall,
    st.integers(0, 0xFFFF),
    st.text(min_size=1, max_size=8).filter(lambda s: len(s.encode("utf-8", "replace")) <= 255),
    st.booleans(),
)


@given(
    entries=st.lists(raw_entries, max_size=12),
    from_seq=st.integers(0, 1 << 40),
    extra=st.integers(0, 5),
    done=st.booleans(),
)
def test_batch_round_trip_property(
    entries: list[RawEntry], from_seq: int, extra: int, done: bool
) -> None:
    try:
        [p.encode("utf-8") for p in {e.peer for e in entries}]
    except UnicodeEncodeError:
        return  # lone surrogates cannot be CBOR text; the store refuses such peer ids
    b = Batch(from_seq, from_seq + len(entries) + extra, done, tuple(entries))
    assert decode_message(encode_message(b)) == b


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode_message("hello")  # type: ignore[arg-type]


# --- strict decoding ------------------------------------------------------------------


def H(**over: Any) -> list[Any]:
    """A valid Hello array with some positions replaced ({index: value})."""
    arr = cbor2.loads(encode_message(hello()))
    for k, v in over.items():
        arr[int(k[1:])] = v
    return arr


def B(*rows: Any, frm: int = 0, to: int = 5, peers: Any = None, base: Any = T0) -> list[Any]:
    return [2, frm, to, False, base, ["a"] if peers is None else peers, list(rows)]


GOOD_ROW = [b"k", 0, 0, 0, b"\x01"]

BAD: list[tuple[str, Any, str]] = [
    # wrong types, named by field
    ("ack seq text", [3, "1"], "ack.seq"),
    ("ack seq negative", [3, -1], "ack.seq"),
    ("ack seq bool", [3, True], "ack.seq"),
    ("ack seq float", [3, 1.0], "ack.seq"),
    ("ack seq over u64 (bignum)", [3, 1 << 64], "CBOR tag 2 is not allowed"),
    ("request since", [1, None, True], "request.since"),
    ("request live int", [1, 0, 1], "request.live"),
    ("hello version", H(_1="1"), "hello.version"),
    ("hello cluster bytes", H(_2=b"default"), "hello.cluster_id"),
    ("hello cluster long", H(_2="c" * 256), "hello.cluster_id"),
    ("hello peer empty", H(_3=""), "hello.peer_id"),
    ("hello peer long", H(_3="\u00e9" * 128), "hello.peer_id"),
    ("hello incarnation text", H(_4="x"), "hello.incarnation"),
    ("hello incarnation empty", H(_4=b""), "hello.incarnation"),
    ("hello incarnation long", H(_4=b"x" * 65), "hello.incarnation"),
    ("hello hlc", H(_5=-5), "hello.hlc"),
    ("hello last_seq", H(_6=[1]), "hello.last_seq"),
    ("hello flags", H(_7=256), "hello.flags"),
    ("hello key_encoding", H(_8="k" * 33), "hello.key_encoding"),
    ("hello value_encoding", H(_9=None), "hello.value_encoding"),
    ("hello max_batch_entries", H(_10="1000"), "hello.max_batch_entries"),
    ("hello gc not array", H(_12={"a": 1}), "hello.gc"),
    ("hello gc row short", H(_12=[["a", 1, 2]]), "hello.gc[0]"),
    ("hello gc peer empty", H(_12=[["", 1, 2, 3]]), "hello.gc[0].peer_id"),
    ("hello gc peer bytes", H(_12=[["a", 1, 2, 3], [b"b", 1, 2, 3]]), "hello.gc[1].peer_id"),
    ("hello gc v negative", H(_12=[["a", -1, 2, 3]]), "hello.gc[0].v"),
    ("hello gc seen over 2^48", H(_12=[["a", 1, 1 << 48, 3]]), "hello.gc[0].seen_ms"),
    ("hello gc d text", H(_12=[["a", 1, 2, "3"]]), "hello.gc[0].d"),
    ("hello gc too many rows", H(_12=[["a", 1, 2, 3]] * 1025), "hello.gc"),
    ("abort code", [4, 1 << 16, "x"], "abort.code"),
    ("abort reason", [4, 1, b"x"], "abort.reason"),
    ("abort reason long", [4, 1, "\u00e9" * 2049], "abort.reason"),
    ("batch from_seq", [2, "0", 1, True, 0, [], []], "batch.from_seq"),
    ("batch to_seq", [2, 0, -1, True, 0, [], []], "batch.to_seq"),
    ("batch to below from", [2, 5, 4, True, 0, [], []], "below batch.from_seq"),
    ("batch done", [2, 0, 1, 1, 0, [], []], "batch.done"),
    ("batch base_wall", B(base=1 << 48), "batch.base_wall"),
    ("batch peers type", B(peers="a"), "batch.peers"),
    ("batch peer not text", B(peers=[b"a"]), "batch.peers[0]"),
    ("batch peer empty", B(peers=["a", ""]), "batch.peers[1]"),
    ("batch entries type", [2, 0, 1, True, 0, [], {}], "batch.entries"),
    ("entry arity", B([b"k", 0, 0, 0]), "batch.entries[0]"),
    ("entry not array", B(GOOD_ROW, b"k"), "batch.entries[1]"),
    ("entry key text", B(["k", 0, 0, 0, None]), "batch.entries[0]"),
    ("entry delta float", B([b"k", 0.0, 0, 0, None]), "batch.entries[0]"),
    ("entry delta negative", B([b"k", -1, 0, 0, None]), "batch.entries[0]"),
    ("entry wall overflow", B([b"k", 1, 0, 0, None], base=(1 << 48) - 1), "batch.entries[0]"),
    ("entry logical", B(GOOD_ROW, [b"k", 0, 65536, 0, None]), "batch.entries[1]"),
    ("entry peer index", B([b"k", 0, 0, 1, None]), "batch.entries[0]"),
    ("entry peer index negative", B([b"k", 0, 0, -1, None]), "batch.entries[0]"),
    ("entry value int", B([b"k", 0, 0, 0, 7]), "batch.entries[0].value"),
    ("entry value text", B([b"k", 0, 0, 0, "v"]), "batch.entries[0].value"),
    ("more entries than seqs", B(GOOD_ROW, GOOD_ROW, to=1), "2 entries for only 1"),
    # wrong arity
    ("ack short", [3], "'ack'"),
    ("ack long", [3, 1, 2], "'ack'"),
    ("request short", [1, 0], "'request'"),
    ("request long", [1, 0, True, None, True, 0], "'request'"),
    ("request repair not bool", [1, 0, True, None, 0], "'request.repair'"),
    ("verify short digest", [5, b"\x00" * 31, True], "'verify.digest'"),
    ("verify clean not bool", [5, b"\x00" * 32, 1], "'verify.clean'"),
    ("verify probe not bool", [5, b"\x00" * 32, True, 0], "'verify.probe'"),
    ("verify long", [5, b"\x00" * 32, True, True, 0], "'verify'"),
    ("repair empty", [6, b""], "'repair.payload'"),
    ("repair too big", [6, b"x" * (MAX_REPAIR_PAYLOAD + 1)], "'repair.payload'"),
    ("repair not bytes", [6, "x"], "'repair.payload'"),
    ("request proof not an array", [1, 0, True, 0], "'request.proof'"),
    ("request proof key not bytes", [1, 0, True, ["k", 1]], "'request.proof'"),
    ("request proof stamp", [1, 0, True, [b"k", -1]], "'request.proof stamp'"),
    ("abort short", [4, 1], "'abort'"),
    ("batch short", [2, 0, 1, True, 0, []], "'batch'"),
    ("batch long", [*B(), 0], "'batch'"),
    ("hello short", H()[:10], "hello has 10 elements"),
    # not a message at all
    ("empty array", [], "empty message array"),
    ("map", {"type": 3}, "'message'"),
    ("int", 3, "'message'"),
    ("unknown type 7", [7, 0], "unknown message type 7"),
    ("unknown type -1", [-1], "unknown message type -1"),
    ("type as text", ["0"], "unknown message type '0'"),
    ("type as bool", [False, 0], "unknown message type False"),
    ("type as float", [3.0, 1], "unknown message type 3.0"),
]


@pytest.mark.parametrize(("obj", "field"), [(o, f) for _, o, f in BAD], ids=[n for n, _, _ in BAD])
def test_strict_decoding_names_the_field(obj: Any, field: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(cbor2.dumps(obj))
    assert field in str(info.value)


def test_the_bad_cases_are_valid_apart_from_the_fault() -> None:
    """Guard against vacuous rejections: the unmodified templates decode."""
    assert isinstance(decode_message(cbor2.dumps(H())), Hello)
    assert isinstance(decode_message(cbor2.dumps(B(GOOD_ROW))), Batch)
    assert isinstance(decode_message(cbor2.dumps(B(GOOD_ROW, GOOD_ROW, to=2))), Batch)


def test_batch_over_max_batch_entries() -> None:
    payload = cbor2.dumps(B(GOOD_ROW, GOOD_ROW, GOOD_ROW))
    assert len(decode_message(payload, max_batch_entries=3).entries) == 3  # type: ignore[union-attr]
    with pytest.raises(RemoteProtocolError, match="3 entries, more than the agreed 2"):
        decode_message(payload, max_batch_entries=2)


@pytest.mark.parametrize(
    "obj",
    [
        [3, cbor2.CBORTag(2, b"\x01")],  # bignum where an int is expected
        cbor2.CBORTag(55799, [3, 1]),  # self-describe tag around the message
        [4, 1, cbor2.CBORTag(0, "2020-01-01T00:00:00Z")],
        B([cbor2.CBORTag(24, b"k"), 0, 0, 0, None]),
        [1, 0, cbor2.CBORTag(1000, True)],  # an unknown tag
    ],
    ids=["bignum", "self-describe", "datetime", "nested", "unknown"],
)
def test_cbor_tags_are_refused(obj: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="CBOR tag"):
        decode_message(cbor2.dumps(obj))


def test_string_reference_tags_are_refused() -> None:
    payload = cbor2.dumps([4, 1, "abcdefgh"], string_referencing=True)
    assert payload[:2] == b"\xd9\x01"  # tag 256 (stringref namespace)
    with pytest.raises(RemoteProtocolError, match="CBOR tag"):
        decode_message(payload)


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        (encode_message(Ack(1)) + b"\x00", "1 trailing bytes"),
        (encode_message(Request(3, True)) + encode_message(Ack(1)), "trailing bytes"),
        (b"", "not valid CBOR"),
        (b"\xff", "not valid CBOR"),
        (b"\x83\x01\x00", "not valid CBOR"),  # array of 3 with 2 items
        (b"\x82\x04\x61", "not valid CBOR"),  # truncated text
        (b"\x82\x04\x62\xc3\x28", "not valid CBOR"),  # invalid UTF-8
        (b"\x81" * 100_000 + b"\x00", "not valid CBOR"),  # nesting beyond the recursion limit
    ],
    ids=["one", "message", "empty", "break", "short-array", "short-text", "utf8", "deep"],
)
def test_malformed_payloads(payload: bytes, what: str) -> None:
    with pytest.raises(RemoteProtocolError, match=what):
        decode_message(payload)


def test_non_shortest_and_indefinite_encodings_are_accepted() -> None:
    """Receivers accept any well-formed CBOR without tags; senders emit the shortest."""
    assert decode_message(b"\x82\x03\x1b" + (7).to_bytes(8, "big")) == Ack(7)
    assert decode_message(b"\x9f\x01\x00\xf5\xff") == Request(0, True)
    assert encode_message(Ack(7)) == b"\x82\x03\x07"


# --- framing --------------------------------------------------------------------------


def test_frame_decoder_refuses_oversize_before_buffering() -> None:
    dec = FrameDecoder(max_frame_bytes=10)
    assert dec.feed(struct.pack(">I", 10) + b"x" * 10) == [b"x" * 10]
    with pytest.raises(RemoteProtocolError, match="11 bytes exceeds max_frame_bytes=10"):
        dec.feed(struct.pack(">I", 11))
    huge = FrameDecoder()
    assert huge.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    with pytest.raises(RemoteProtocolError, match="exceeds max_frame_bytes"):
        huge.feed(b"\xff\xff\xff\xff")


def test_frame_decoder_checks_length_of_frames_after_complete_ones() -> None:
    dec = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(RemoteProtocolError, match="101 bytes"):
        dec.feed(encode_frame(Ack(1)) + struct.pack(">I", 101))


STREAM_MSGS: list[Message] = [hello(), Request(0, False), Batch(0, 9, True, ENTRIES), Ack(9)]
STREAM = b"".join(encode_frame(m) for m in STREAM_MSGS) + encode_frame(Batch(9, 9, True, ()))
PAYLOADS = [encode_message(m) for m in STREAM_MSGS] + [encode_message(Batch(9, 9, True, ()))]


def test_split_at_every_byte_boundary() -> None:
    for i in range(len(STREAM) + 1):
        dec = FrameDecoder()
        got = dec.feed(STREAM[:i])
        assert dec.buffered == i - sum(len(p) + 4 for p in got)
        got += dec.feed(STREAM[i:])
        assert got == PAYLOADS, f"split at {i}"
        assert dec.buffered == 0


def test_split_at_every_pair_of_boundaries_in_a_frame() -> None:
    frame = encode_frame(Batch(0, 9, True, ENTRIES))
    for i in range(len(frame) + 1):
        for j in range(i, len(frame) + 1):
            dec = FrameDecoder()
            got = dec.feed(frame[:i]) + dec.feed(frame[i:j]) + dec.feed(frame[j:])
            assert got == [frame[4:]], (i, j)


def test_byte_by_byte() -> None:
    dec = FrameDecoder()
    got: list[bytes] = []
    for b in STREAM:
        got += dec.feed(bytes([b]))
    assert got == PAYLOADS
    assert [decode_message(p) for p in got[:4]] == STREAM_MSGS


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=8))
def test_random_chunking(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    dec = FrameDecoder()
    got: list[bytes] = []
    for a, b in itertools.pairwise(points):
        got += dec.feed(STREAM[a:b])
    assert got == PAYLOADS


def test_zero_length_frame_is_a_frame() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x00" + encode_frame(Ack(1))) == [b"", encode_message(Ack(1))]


# --- a large frame refused from its first bytes ----------------------------------------


def _outcome(fn: Any) -> tuple[type, str] | None:
    try:
        fn()
    except Exception as exc:
        return type(exc), str(exc)
    return None


@st.composite
def big_rows(draw: st.DrawFn) -> tuple[RawEntry, ...]:
    n = draw(st.integers(1, 40))
    size = draw(st.integers(SMALL_FRAME_BYTES // n + 1, 2 * SMALL_FRAME_BYTES // n + 64))
    sibling = RawEntry(b"k", b"s", (T0 << 16) + 1, "b", False)
    rows = []
    for i in range(n):
        entry = RawEntry(b"k%d" % i, b"v" * size, (T0 << 16) + i, "a", False)
        if draw(st.booleans()) and draw(st.booleans()):
            entry = RawEntry(entry.key, entry.value, entry.hlc, "a", False, 0, (), (sibling,))
        rows.append(entry)
    return tuple(rows)


@settings(max_examples=150, deadline=None)
@given(
    rows=big_rows(),
    edits=EDITS,
    cut=st.integers(0, 3 * SMALL_FRAME_BYTES),
    lww_only=st.booleans(),
    limit=st.one_of(st.none(), st.integers(0, 50)),
)
def test_a_prefix_refuses_only_with_the_whole_frames_own_error(
    rows: tuple[RawEntry, ...],
    edits: list[tuple[int, int, int]],
    cut: int,
    lww_only: bool,
    limit: int | None,
) -> None:
    payload = edited(encode_message(Batch(0, len(rows), True, rows)), edits)
    whole = _outcome(lambda: decode_message(payload, max_batch_entries=limit, lww_only=lww_only))
    prefix = payload[:cut]
    early = _outcome(
        lambda: check_frame_prefix(prefix, len(payload), max_batch_entries=limit, lww_only=lww_only)
    )
    assert early is None or early == whole
    if whole is None:
        assert early is None


def test_a_large_frame_that_is_not_a_batch_is_refused_from_its_first_byte() -> None:
    with pytest.raises(RemoteProtocolError, match="a frame of 8388608 bytes that is not a batch"):
        check_frame_prefix(b"\x00" * 100, 8 << 20)
    check_frame_prefix(b"\x00" * 100, SMALL_FRAME_BYTES)  # small frames: decoded whole later
    check_frame_prefix(b"", 8 << 20)  # nothing to judge yet


def _open_rows_batch(n: int, pad: int) -> bytes:
    """A valid batch of ``n`` rows in an indefinite-length array, the first key padded."""
    head = b"\x87\x02\x00" + cbor2.dumps(n) + b"\xf5" + cbor2.dumps(T0) + cbor2.dumps(["p"])
    rows = [
        cbor2.dumps([b"k%03d" % i + b"x" * (pad if i == 0 else 0), 0, i, 0, b"v" * 600])
        for i in range(n)
    ]
    return head + b"\x9f" + b"".join(rows) + b"\xff"


def test_a_prefix_cut_right_after_the_last_row_is_not_refused() -> None:
    n = next(n for n in range(50, 200) if len(_open_rows_batch(n, 0)) > SMALL_FRAME_BYTES) - 1
    pad = next(p for p in range(1000) if len(_open_rows_batch(n, p)) == SMALL_FRAME_BYTES + 1)
    payload = _open_rows_batch(n, pad)
    assert len(decode_message(payload).entries) == n  # type: ignore[union-attr]
    check_frame_prefix(payload[:SMALL_FRAME_BYTES], len(payload))  # all but the break


def test_an_item_cut_by_the_prefix_is_judged_whole_not_by_the_stricter_reader() -> None:
    # A peer id "a" in 301 chunks (300 empty): cbor2 (which decodes peer ids) accepts it,
    # while the checking reader refuses more than 64 chunks; cut inside it, the prefix
    # is fine.
    chunked = b"\x7f\x61a" + b"\x60" * 300 + b"\xff"
    row = cbor2.dumps([b"k", 0, 0, 0, b"v" * 70_000])
    payload = b"\x87\x02\x00\x01\xf5" + cbor2.dumps(T0) + b"\x81" + chunked + b"\x81" + row
    assert isinstance(decode_message(payload), Batch)  # accepted whole
    for cut in (100, 200, 300):
        check_frame_prefix(payload[:cut], len(payload))
    # A row whose logical clock is out of range, cut inside it: the whole frame's error
    # comes from the row as a whole, so the prefix says nothing.
    bad = cbor2.dumps([b"k" * 40, 0, 70_000, 0, b"v" * 70_000])
    payload = b"\x87\x02\x00\x01\xf5" + cbor2.dumps(T0) + b"\x81\x61p\x81" + bad
    with pytest.raises(RemoteProtocolError, match="out-of-range timestamp"):
        decode_message(payload)
    check_frame_prefix(payload[:60], len(payload))
