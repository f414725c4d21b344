"""Instructions per key of the bucket bookkeeping (``Buckets.settle`` + ``checkpoint_ops``),
counted by callgrind: deterministic, unlike the clocks of a shared machine.

Each run does the setup (the notes a commit would leave: 3 rounds of ``--n`` new keys,
then the same keys overwritten) and, unless ``--setup-only``, folds each round and builds
its checkpoint ops (no backend: RocksDB is left out). The per-key figure is the difference
of two runs' totals divided by the keys::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/callgrind_buckets.py
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/callgrind_buckets.py \\
        --setup-only

``--phase both`` overwrites the keys after creating them: its total minus that of the
default ``--phase new`` is the overwrites' cost. ``CRDT_KV_PURE_PYTHON=1`` counts the
pure path. The figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import random

from crdt_kv import accel
from crdt_kv.accel import Note
from crdt_kv.store.buckets import Buckets


def notes_of(n: int, rounds: int) -> tuple[list[list[Note]], list[list[Note]]]:
    """The notes of ``rounds`` rounds of ``n`` new keys, and of overwriting them."""
    rng = random.Random(1)
    keys = [b"\x00user:%08d" % i for i in range(n * rounds)]
    hashes = [rng.getrandbits(256) for _ in keys]
    new = [[(keys[i], hashes[i], True) for i in range(r * n, (r + 1) * n)] for r in range(rounds)]
    over = [[(k, rng.getrandbits(256) - h, False) for k, h, _ in part] for part in new]
    return new, over


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16_384, help="keys per round (a checkpoint)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--phase", choices=("new", "both"), default="new")
    p.add_argument("--setup-only", action="store_true")
    args = p.parse_args()
    new, over = notes_of(args.n, args.rounds)
    b = Buckets()
    phases = [new, over] if args.phase == "both" else [new]
    ops = 0
    if not args.setup_only:
        for phase in phases:
            for part in phase:
                b.notes.extend(part)
                ops += len(b.checkpoint_ops(1))
                b.saved()
    print(accel.DESCRIPTION, ops)


if __name__ == "__main__":
    main()
