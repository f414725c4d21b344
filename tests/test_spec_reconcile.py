"""spec/reconcile.md, spec/reconcile.cddl and spec/vectors/reconcile-messages.json against
crdt_kv.repair: valid vectors decode to their fields and re-encode byte for byte, invalid
ones are refused naming the field, every valid payload (and every frame a real repair
sends) matches the CDDL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cbor2
import pycddl
import pytest
from repair_helpers import pump
from repair_vectors import from_json, to_json

import crdt_kv
from crdt_kv import RemoteProtocolError
from crdt_kv.repair import Reconciler
from crdt_kv.repair.messages import FrameDecoder, decode_message_bytes, encode_frame
from crdt_kv.testing import ManualClock

SPEC = Path(__file__).resolve().parent.parent / "spec"
VECTORS = json.loads((SPEC / "vectors" / "reconcile-messages.json").read_text("utf-8"))
# pycddl (cddl-rs) mishandles the `.cbor` control (it checks the enclosing array), so the
# embedded batch is validated on its own against protocol.cddl.
_TEXT = (SPEC / "reconcile.cddl").read_text("utf-8").replace("bstr .cbor batch", "bstr")
SCHEMA = pycddl.Schema(_TEXT)
BATCH = pycddl.Schema((SPEC / "protocol.cddl").read_text("utf-8"))


def cddl_ok(payload: bytes) -> bool:
    try:
        SCHEMA.validate_cbor(payload)
        obj = cbor2.loads(payload)
        if obj[0] == 2:
            BATCH.validate_cbor(obj[1])
    except pycddl.ValidationError:
        return False
    return True


@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["description"])
def test_valid_vectors(vec: dict[str, Any]) -> None:
    frame = bytes.fromhex(vec["frame_hex"])
    (payload,) = FrameDecoder().feed(frame)
    msg = decode_message_bytes(payload)
    assert to_json(msg) == (vec["type"], vec["fields"])
    assert encode_frame(from_json(vec["type"], vec["fields"])) == frame
    assert cddl_ok(payload)


@pytest.mark.parametrize("vec", VECTORS["invalid"], ids=lambda v: v["description"])
def test_invalid_vectors(vec: dict[str, Any]) -> None:
    (payload,) = FrameDecoder().feed(bytes.fromhex(vec["frame_hex"]))
    with pytest.raises(RemoteProtocolError, match=re.escape(vec["error"])):
        decode_message_bytes(payload)


def test_vectors_cover_every_message_type_and_range_kind() -> None:
    types = {v["type"] for v in VECTORS["valid"]}
    kinds = {r["kind"] for v in VECTORS["valid"] for r in v["fields"].get("ranges", [])}
    assert types == {"hello", "round", "entries"} and kinds == {"children", "items"}


@pytest.mark.parametrize("conflicts", ["lww", "siblings"])
def test_frames_of_a_real_repair_match_the_cddl(conflicts: str) -> None:
    clock = ManualClock()
    a, b = (
        crdt_kv.open(backend="memory", peer_id=p, clock=clock, conflicts=conflicts) for p in "ab"
    )
    for i in range(300):
        (a if i % 3 else b).put(f"k{i}", i)
    b.put("k1", "concurrent")
    ma, mb = Reconciler(item_threshold=4), Reconciler(item_threshold=4)
    ma.start()
    mb.start()
    da, db = FrameDecoder(), FrameDecoder()
    seen = 0
    while not (ma.finished and mb.finished):
        out_a, out_b = pump(ma, a), pump(mb, b)
        for payload in da.feed(out_a) + db.feed(out_b):
            assert cddl_ok(payload), cbor2.loads(payload)
            seen += 1
        if out_a:
            mb.receive_data(out_a)
        if out_b:
            ma.receive_data(out_b)
    assert seen >= 5 and a.digest() == b.digest()
