"""Bytes on the wire for a first contact: two stores holding the same ``--n`` keys (copied
from a common source, so no cursor links them) and ``--d`` keys each the other lacks, one
session between them, with and without first-contact repair (``spec/protocol.md`` 13).

Without repair each side pulls the other's whole change log (about ``n`` entries each
way); with it the replicas reconcile (about ``d log n``) and then stream their logs from
their heads at the time of the Requests. Prints the bytes each way, the frames, the
reconciliation round trips and whether the stores ended equal.

Run: ``.venv/bin/python bench/bench_first_contact.py [--n 10000] [--d 10]``
"""

from __future__ import annotations

import argparse

import crdt_kv
from crdt_kv.protocol import RepairFinished, Session
from crdt_kv.store import Store
from crdt_kv.testing import ManualClock


def pump(x: Session, y: Session) -> list[object]:
    events: list[object] = []
    while True:
        moved = False
        for src, dst in ((x, y), (y, x)):
            data = src.data_to_send()
            if data:
                events.extend(dst.receive_data(data))
                moved = True
        if not moved:
            return events


def session(a: Store, b: Store, **kw: object) -> tuple[Session, Session, list[object]]:
    x, y = Session(a, **kw), Session(b, **kw)  # type: ignore[arg-type]
    x.start()
    y.start()
    events = pump(x, y)
    assert x.complete and y.complete
    return x, y, events


def pair(n: int, d: int) -> tuple[Store, Store]:
    clock = ManualClock()
    src = crdt_kv.open(backend="memory", peer_id="src", clock=clock)
    with src.batch() as bt:
        for i in range(n):
            bt.put(f"user:{i:08d}", {"name": "Ada", "n": i})
    a = crdt_kv.open(backend="memory", peer_id="a", clock=clock)
    b = crdt_kv.open(backend="memory", peer_id="b", clock=clock)
    for s in (a, b):
        x, y = Session(src, mode="push"), Session(s, mode="pull")
        x.start()
        y.start()
        pump(x, y)
    for i in range(d):
        a.put(f"only-a:{i}", i)
        b.put(f"only-b:{i}", i)
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=10)
    args = ap.parse_args()
    print(f"first contact: {args.n:,} shared keys, {args.d} keys on each side only")
    for repair in (False, True):
        a, b = pair(args.n, args.d)
        x, y, events = session(a, b, repair=repair)
        trips = [e.round_trips for e in events if isinstance(e, RepairFinished)]
        equal = a.digest() == b.digest()
        total = x.stats.bytes_sent + y.stats.bytes_sent
        print(
            f"  repair={'on ' if repair else 'off'}  bytes a->b {x.stats.bytes_sent:>9,}  "
            f"b->a {y.stats.bytes_sent:>9,}  total {total:>9,}  frames "
            f"{x.stats.frames_sent + y.stats.frames_sent:>4}  reconcile round trips "
            f"{max(trips) if trips else '-'}  equal {equal}"
        )


if __name__ == "__main__":
    main()
