"""Write the seed corpus of every fuzz target into fuzz/corpus/TARGET/ (see fuzz/README.md).

Seeds are real traffic: the frames two sessions exchange over the fuzz harness's template
stores in both conflict modes (first contact with repair, plain pulls, live, one-way
modes, tiny batches), the reconciliation between them, and hand-made messages of every
type. A session seed is a header (:class:`SessionCase`) plus the bytes the real peer sent
after its Hello; replayed through the target, it must drive the session without failing
(checked here). Deterministic: rerunning writes the same files (named by what they
cover). Existing files are kept; ``python fuzz/run.py --merge`` minimizes the lot.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from crdt_kv.net.discovery import Announcement
from crdt_kv.protocol.framing import FrameDecoder
from crdt_kv.protocol.messages import (
    Abort,
    Ack,
    Hello,
    Repair,
    Request,
    Verify,
    encode_frame,
    encode_message,
)
from crdt_kv.repair.machine import Reconciler
from crdt_kv.repair.messages import decode_message_bytes
from crdt_kv.testing.clocks import ManualClock
from crdt_kv.testing.fuzz_session import (
    START_MS,
    SessionCase,
    SessionHarness,
    open_template,
    peer_session,
    peer_store,
)
from crdt_kv.testing.fuzz_targets import TARGETS

CORPUS = Path(__file__).resolve().parent / "corpus"

# (name, header) of the session seeds; header bits as SessionCase.parse reads them.
SESSION_CASES = [
    ("pull-both-ways", 0x00, 0x00, 0x01),
    ("first-contact-repair", 0x08, 0x00, 0x00),
    ("live", 0x06, 0x00, 0x01),
    ("live-repair-deferred", 0x1E, 0x00, 0x00),
    ("peer-push-only", 0x00, 0x01, 0x01),
    ("peer-pull-only", 0x00, 0x02, 0x01),
    ("peer-empty", 0x08, 0x04, 0x00),
    ("tiny-batches", 0x10, 0x00, 0x15),
    ("small-frames-we-pull", 0x08, 0x80, 0x02),
]


def _write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    (d / f"seed-{name}-{digest}").write_bytes(data)


def record_session(head: bytes) -> tuple[bytes, list[bytes]]:
    """Run the harness against the real peer ``head`` describes; return what the peer sent
    after its Hello and every frame payload both sides sent."""
    case = SessionCase.parse(head)
    h = SessionHarness(case)
    store = peer_store(case)
    peer = peer_session(case, store)
    peer.start()
    payloads = FrameDecoder().feed(peer.data_to_send())  # the Hello, already delivered
    stream = bytearray()
    for _ in range(10_000):
        ours = h.take_output()
        if ours:
            payloads += FrameDecoder().feed(ours)
            peer.receive_data(ours)
        theirs = peer.data_to_send()
        if not theirs and not ours:
            break
        if theirs and h.open:
            payloads += FrameDecoder().feed(theirs)
            stream += theirs
            h.deliver(theirs)
    error = h.link.error  # before finish(), whose wait times a live session out
    h.finish()
    store.close()
    if error is not None:
        raise SystemExit(f"session seed {head.hex()} failed: {error!r}")
    return bytes(stream), payloads


def record_reconcile(siblings: bool) -> tuple[bytes, list[bytes]]:
    """What a peer's reconciler sends ours (the template stores), and every frame."""
    mode = "siblings" if siblings else "lww"
    ours = open_template(mode, "ours", ManualClock(START_MS))
    theirs = open_template(mode, "peer", ManualClock(START_MS))
    a, b = Reconciler(), Reconciler()
    a.start()
    b.start()
    stream, payloads = bytearray(), []
    for _ in range(10_000):
        moved = False
        for rec, store in ((a, theirs), (b, ours)):
            while (work := rec.storage_request()) is not None:
                rec.storage_done(work.perform(store))
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if out_a:
            stream += out_a
            payloads += FrameDecoder().feed(out_a)
            b.receive_data(out_a)
            moved = True
        if out_b:
            payloads += FrameDecoder().feed(out_b)
            a.receive_data(out_b)
            moved = True
        if not moved:
            break
    assert a.finished and b.finished, "the template reconciliation did not finish"
    ours.close()
    theirs.close()
    return bytes(stream), payloads


def _hand_made() -> list[bytes]:
    hello = Hello(
        3, "default", "a", b"\x01" * 16, 1 << 40, 7, True, True, False, "utf-8", "cbor", 1000
    )
    return [
        encode_message(m)
        for m in (
            hello,
            Request(0, False),
            Request(5, True, (b"k", 1 << 20)),
            Request(0, False, None, True),
            Ack(3),
            Abort(5, "shutting down"),
            Verify(b"\x00" * 32, True),
            Repair(b"\x00\x00\x00\x01\x80"),
        )
    ]


def _spread(payloads: list[bytes], per_type: int = 6) -> list[bytes]:
    """At most ``per_type`` payloads of each message type, from the shortest to the longest
    (the sessions repeat themselves: most frames add no coverage)."""
    kinds: dict[bytes, list[bytes]] = {}
    for p in sorted(set(payloads), key=lambda p: (len(p), p)):
        kinds.setdefault(p[1:2], []).append(p)
    out: list[bytes] = []
    for group in kinds.values():
        step = max(1, len(group) // per_type)
        out += group[::step][:per_type]
    return out


def main() -> int:
    payloads: list[bytes] = _hand_made()
    for name, *head in SESSION_CASES:
        for siblings in (False, True):
            hb = bytes([head[0] | siblings, *head[1:]])
            stream, seen = record_session(hb)
            _write("session", f"{name}{'-siblings' if siblings else ''}", hb + stream)
            payloads += seen
    repair_payloads: list[bytes] = []
    for siblings in (False, True):
        stream, seen = record_reconcile(siblings)
        tag = "siblings" if siblings else "lww"
        _write("reconcile", tag, bytes([int(siblings)]) + stream)
        _write("reconcile", f"{tag}-threshold-1", bytes([int(siblings) | 16]) + stream)
        repair_payloads += seen
    kept = _spread(payloads)
    for p in kept:
        _write("messages", "msg", b"\x00" + p)
        if p[1:2] == b"\x02":  # a Batch: also under a limit of 3 entries
            _write("messages", "msg-batch-limit", b"\x03" + p)
    stream = b"".join(len(p).to_bytes(4, "big") + p for p in kept)
    for head in (0x00, 0x06, 0x0E, 0x2E, 0x46, 0xC6, 0xC7):
        _write("frames", f"stream-{head:02x}", bytes([head]) + stream[:4000])
    _write("frames", "inbox-hello-limit", b"\x45" + encode_frame(Ack(1)) + b"\x00\x00\x40\x01")
    for p in sorted(set(repair_payloads)):
        decode_message_bytes(p)
        _write("repair_messages", "msg", p)
    for ann in (
        Announcement("default", "a", "", 7000),
        Announcement("prod", "node-1", "192.0.2.1", 65535),
        Announcement("x", "n", "2001:db8::1", 1),
    ):
        _write("announcement", "ann", ann.encode())
    for t in TARGETS:
        print(f"{t}: {len(list((CORPUS / t).iterdir()))} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
