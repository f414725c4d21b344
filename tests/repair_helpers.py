"""Helpers of the repair tests: a synchronous driver of two reconcilers, random states."""

from __future__ import annotations

import random

from crdt_kv.repair import Reconciler, ReconcileReport
from crdt_kv.repair.source import RangeSource
from crdt_kv.testing.ranges import DictSource
from crdt_kv.version import RawEntry

BASE = 1_700_000_000_000 << 16


def pump(m: Reconciler, source: RangeSource) -> bytes:
    """Perform every pending storage request inline; return what ``m`` has to send."""
    while (work := m.storage_request()) is not None:
        m.storage_done(work.perform(source))
    return m.data_to_send()


def run_pair(a: RangeSource, b: RangeSource, **kw: int) -> tuple[ReconcileReport, ReconcileReport]:
    """Reconcile ``a`` and ``b`` with two machines exchanging bytes in memory, no trio."""
    ma, mb = Reconciler(**kw), Reconciler(**kw)
    ma.start()
    mb.start()
    for _ in range(10_000):
        out_a, out_b = pump(ma, a), pump(mb, b)
        if not out_a and not out_b:
            break
        if out_a:
            mb.receive_data(out_a)
        if out_b:
            ma.receive_data(out_b)
    assert ma.report is not None and mb.report is not None, "the reconciliation stalled"
    return ma.report, mb.report


def lww(key: str, value: bytes, hlc: int, peer: str, deleted: bool = False) -> RawEntry:
    return RawEntry(key.encode(), b"" if deleted else value, hlc, peer, deleted)


def filled(peer: str, n: int, *, conflicts: str = "lww", seed: int = 0) -> DictSource:
    """A source holding keys ``k0..k{n-1}`` written by peer ``w`` at increasing stamps."""
    s = DictSource(peer, conflicts=conflicts)
    rng = random.Random(seed)
    for i in range(n):
        e = lww(f"k{i}", rng.randbytes(8), BASE + i, "w")
        s.states[e.key] = e
    return s
