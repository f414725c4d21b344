"""Instructions per read of ``Store.get`` and ``Store.items`` against raw ``rocksdict``
(values CBOR-decoded on both sides), counted by callgrind: deterministic, unlike the
clocks of a shared machine (issue 13's get and range scan targets).

Each run builds the same two RocksDB databases (``--n`` keys written in batches: a raw
``Rdict`` and a store, no other subject) and, unless ``--setup-only``, does ``--op`` on
``--subject`` once over every key (gets in one seeded random order; a scan of everything).
The per-read figure is the difference of two runs' totals divided by ``--n``::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/callgrind_reads.py --op get --subject store
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/callgrind_reads.py --setup-only

``CRDT_KV_PURE_PYTHON=1`` counts the pure path.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from typing import Any

import cbor2
from rocksdict import Options, Rdict, WriteBatch

import crdt_kv
from crdt_kv import accel

BATCH = 1000


def build(root: str, n: int) -> tuple[Rdict, crdt_kv.Store, list[str]]:
    """The raw database and the store, holding the same ``n`` keys and values."""
    keys = [f"user:{i:08d}" for i in range(n)]
    values: list[Any] = [{"name": "Ada", "n": i} for i in range(n)]
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(f"{root}/raw", opts)
    store = crdt_kv.open(f"{root}/store", peer_id="a")
    for lo in range(0, n, BATCH):
        wb = WriteBatch(raw_mode=True)
        with store.batch() as b:
            for k, v in zip(keys[lo : lo + BATCH], values[lo : lo + BATCH], strict=True):
                wb.put(k.encode(), cbor2.dumps(v))
                b.put(k, v)
        db.write(wb)
    return db, store, keys


def run(op: str, subject: str, db: Rdict, store: crdt_kv.Store, keys: list[str]) -> int:
    """Do ``op`` on ``subject`` over every key; the number of values read."""
    loads, count = cbor2.loads, 0
    if op == "get":
        order = keys.copy()
        random.Random(1).shuffle(order)
        if subject == "raw":
            for k in [k.encode() for k in order]:
                loads(db[k])
        else:
            get = store.get
            for k in order:
                get(k)
        return len(order)
    if subject == "raw":
        for _k, v in db.items(from_key=b"user:"):
            loads(v)
            count += 1
    else:
        for _kv in store.items():
            count += 1
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--op", choices=("get", "scan"), default="get")
    p.add_argument("--subject", choices=("raw", "store"), default="store")
    p.add_argument("--setup-only", action="store_true")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="callgrind_reads_")
    try:
        db, store, keys = build(root, args.n)
        done = 0 if args.setup_only else run(args.op, args.subject, db, store, keys)
        store.close()
        db.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(accel.DESCRIPTION, done)


if __name__ == "__main__":
    main()
