"""Smoke tests of bench/sync_headline.py (issue 13's headline row) and its bench_sync wiring.

The benchmark is a measurement, not a test: these only check that a tiny run really syncs
across two processes, counts bytes and memory, and that the verdicts follow the targets.
"""

from __future__ import annotations

import io
import json
import pathlib
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_sync
        import sync_headline

        yield bench_sync, sync_headline
    finally:
        sys.path.remove(str(BENCH))


def test_values_are_100_bytes_and_distinct(bench: Any) -> None:
    _, sh = bench
    assert {len(sh.value100(i).encode()) for i in (0, 1, 999_999)} == {100}
    assert sh.value100(1) != sh.value100(2)


def fake_headline(n: int, rate: float, bpe: float, peak: int) -> dict[str, Any]:
    return {
        "n": n,
        "value_bytes": 100,
        "entries_per_s": rate,
        "entries_per_s_runs": [rate],
        "pycrdt_entries_per_s": 2 * rate,
        "raw_entries_per_s": 10 * rate,
        "ratio_pycrdt": 0.5,
        "ratio_raw": 0.1,
        "bytes_per_entry": bpe,
        "receiver_hwm": peak,
        "sender_hwm": 1,
        "receiver_rss_before": 1,
        "sender_rss_idle": 1,
        "sender_cpu_s": 1.0,
        "receiver_cpu_s": 2.0,
    }


def test_verdicts_follow_the_targets(bench: Any) -> None:
    _, sh = bench
    mib = 2**20
    met = sh.headline_verdicts(fake_headline(1_000_000, 170_000, 120, 200 * mib))
    assert [r[4] for r in met] == ["MET", "MET", "-", "MET"]
    assert "500,000 entries/s if each process had a core" in met[2][2]
    missed = sh.headline_verdicts(fake_headline(1_000_000, 169_999, 120.5, 201 * mib))
    assert [r[4] for r in missed] == ["MISSED", "MISSED", "-", "MISSED"]
    small = sh.headline_verdicts(fake_headline(100_000, 1, 1, 900 * mib))
    assert small[3][4] == "-"  # the RSS target is for 1,000,000 entries only


def test_tiny_headline_run_through_bench_sync(bench: Any) -> None:
    bench_sync, _ = bench
    argv = ["--headline-only", "--headline-n", "400", "--headline-repeat", "1"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert bench_sync.main([*argv, "--profile", "--json", "--quiet"]) == 0
    res = json.loads(out.getvalue())
    h = res["headline"]
    run = h["runs"][0]
    assert run["crdt_kv"]["count"] == 400
    assert h["bytes_per_entry"] > 100  # every value crossed the socket
    assert h["receiver_hwm"] > 0 and h["sender_hwm"] > 0
    assert h["receiver_cpu_s"] > 0 and h["sender_cpu_s"] >= 0
    assert h["raw_entries_per_s"] > 0 and h["pycrdt_entries_per_s"] > 0
    assert res["verdicts"][0]["measure"].startswith("HEADLINE full sync 400")
    assert "full" not in res  # --headline-only
    buckets = h["profile"]["receiver"]["buckets"]
    assert buckets["store apply_raw (all below)"] > 0
    assert h["profile"]["sender"]["buckets"]["    log scan + record reads"] > 0
