"""Instructions per entry of a full sync's receive path (``decode_message`` of a batch
frame, then ``Store.apply_raw`` into RocksDB), by stage, counted by callgrind:
deterministic, unlike the clocks of a shared machine.

The frames have the headline's shape (``bench/sync_headline.py``): 1,000 rows each, keys
``key-0000000`` (11 B), values 100 ASCII characters (102 B as CBOR), one writer. Each run
does the setup (encode the frames, open an empty RocksDB store) and then the stages up to
``--stage``; a stage's per-entry figure is the difference of two runs' totals divided by
the entries::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/callgrind_receive.py --stage setup
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/callgrind_receive.py --stage decode

Stages, each including the ones before it: ``decode`` (every frame), ``validate``
(``EntryChecker.validate_all`` of every batch), ``merge`` (pick winners and read the
current records, as a commit would, writing nothing), ``apply`` (``apply_raw`` of every
batch with its cursor: validate, merge and commit again, so ``apply`` minus ``merge`` is
the commit plus a second validate and merge). ``--no-gc`` turns the collector off for a
stage's figure without its noise. ``CRDT_KV_PURE_PYTHON=1`` counts the pure path. The
figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import crdt_kv
from crdt_kv import accel
from crdt_kv.protocol.messages import Batch, decode_message, encode_message
from crdt_kv.store.merge import changes, winners
from crdt_kv.version import RawEntry, supersedes

STAGES = ("setup", "decode", "validate", "merge", "apply")


def frames(n: int, rows: int, wall: int) -> list[bytes]:
    """``n`` entries of the headline's shape in batch frames of ``rows`` rows."""
    value = b"\x78\x64" + b"v" * 100
    out = []
    for start in range(0, n, rows):
        entries = tuple(
            RawEntry(b"key-%07d" % i, value, ((wall + i // 4) << 16) | (i % 7), "src", False, i + 1)
            for i in range(start, min(n, start + rows))
        )
        out.append(encode_message(Batch(start, start + len(entries), start + rows >= n, entries)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="entries")
    p.add_argument("--rows", type=int, default=1_000, help="rows per frame")
    p.add_argument("--stage", choices=STAGES, default="apply")
    p.add_argument("--no-gc", action="store_true")
    args = p.parse_args()
    stage = STAGES.index(args.stage)
    payloads = frames(args.n, args.rows, int(time.time() * 1000) - 3_600_000)
    with tempfile.TemporaryDirectory() as d:
        store = crdt_kv.open(d + "/dst", peer_id="dst")
        w = store._w
        incarnation = b"\x01" * 16
        if args.no_gc:
            gc.disable()
        batches = []
        if stage >= STAGES.index("decode"):
            for f in payloads:
                msg = decode_message(f, max_batch_entries=args.rows, lww_only=True)
                assert isinstance(msg, Batch)
                batches.append(msg)
        if stage >= STAGES.index("validate"):
            for b in batches:
                w._checker.validate_all(b.entries)
        if stage >= STAGES.index("merge"):
            for b in batches:
                best = winners(list(b.entries), supersedes, None, store._to_entry)
                olds = w._backend.get_many([b"d" + k for k in best])
                changes(best, olds, supersedes, None, store._to_entry, w._checker.peer_bytes)
        applied = 0
        if stage >= STAGES.index("apply"):
            for b in batches:
                applied += store.apply_raw(b.entries, cursor=("src", incarnation, b.to_seq))
        gc.enable()
        store.close()
    print(accel.DESCRIPTION, args.stage, len(batches), applied)


if __name__ == "__main__":
    main()
