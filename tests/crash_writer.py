"""Subprocess for tests/test_crash.py: write to a store until killed, acknowledging each commit.

Usage: ``python crash_writer.py BACKEND PATH MODE START [--sync] [--clock-offset MS]``.
MODE ``puts`` writes key ``k{i:06d}`` = ``value_of(i)`` one put at a time; MODE ``batches``
commits batch ``n`` as ``BATCH`` keys ``b{n:06d}/{j:02d}`` = ``n`` plus ``last`` = ``n`` in one
atomic batch. After each commit returns it prints ``ack <i> <hlc>`` and flushes; nothing is
printed before the commit returned. The first line is ``open <peer_id> <incarnation hex>``.
``--clock-offset`` shifts the wall clock (negative: a clock that went backwards).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

BATCH = 25


def value_of(i: int) -> dict[str, Any]:
    """The value put under ``k{i:06d}``: checkable, and large enough to take a while."""
    return {"i": i, "pad": "x" * (i % 97) * 10}


def main() -> None:
    import crdt_kv

    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("path")
    p.add_argument("mode", choices=["puts", "batches"])
    p.add_argument("start", type=int)
    p.add_argument("--sync", action="store_true")
    p.add_argument("--clock-offset", type=int, default=0)
    a = p.parse_args()

    def clock() -> int:
        return time.time_ns() // 1_000_000 + int(a.clock_offset)

    db = crdt_kv.open(a.path, backend=a.backend, sync_writes=a.sync, clock=clock)
    out = sys.stdout
    out.write(f"open {db.peer_id} {db.incarnation.hex()}\n")
    out.flush()
    i = a.start
    while True:
        if a.mode == "puts":
            hlc = db.put(f"k{i:06d}", value_of(i)).hlc
        else:
            with db.batch() as b:
                for j in range(BATCH):
                    b.put(f"b{i:06d}/{j:02d}", i)
                b.put("last", i)
            hlc = max(v.hlc for v in b.versions)
        out.write(f"ack {i} {hlc}\n")
        out.flush()
        i += 1


if __name__ == "__main__":
    main()
