"""The fuzz targets by name, and a seeded smoke run of them that needs no fuzzer.

``fuzz/run.py`` hands each target of :data:`TARGETS` to ``atheris`` (coverage-guided, for
a set time); the test suite runs :func:`smoke` instead: every corpus file, then mutants of
them made by :func:`mutate` from a seeded ``random.Random``, so ``make test`` exercises the
very same functions on a machine without atheris, in a few seconds per target. A target
raising is a finding (see :mod:`crdt_kv.testing.fuzz_decoders`); :func:`smoke` re-raises
it with the input attached as a note (hex), so it can be replayed.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from crdt_kv.testing.fuzz_decoders import (
    OracleError,
    fuzz_announcement,
    fuzz_frames,
    fuzz_messages,
    fuzz_repair_messages,
)
from crdt_kv.testing.fuzz_session import fuzz_reconcile, fuzz_session

__all__ = [
    "TARGETS",
    "FuzzTarget",
    "OracleError",
    "corpus_files",
    "memory_peak",
    "mutants",
    "mutate",
    "smoke",
]


@dataclass(frozen=True, slots=True)
class FuzzTarget:
    """One target: its name (also its corpus directory), the function, and the longest
    input the fuzzer makes for it (longer ones only slow it down: no limit is that far)."""

    name: str
    run: Callable[[bytes], None]
    max_len: int


TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget("frames", fuzz_frames, 4096),
        FuzzTarget("messages", fuzz_messages, 8192),
        FuzzTarget("repair_messages", fuzz_repair_messages, 8192),
        FuzzTarget("announcement", fuzz_announcement, 1100),
        FuzzTarget("session", fuzz_session, 16384),
        FuzzTarget("reconcile", fuzz_reconcile, 16384),
    )
}
"""Every target, by name."""

_INTERESTING = (0x00, 0x01, 0x17, 0x18, 0x1B, 0x1F, 0x3B, 0x5F, 0x7F, 0x80, 0x9F, 0xBF, 0xC0, 0xFF)
"""Bytes worth writing into CBOR: small ints, 1- and 8-byte integer heads, indefinite
lengths, tags, break."""
_WORDS = (0, 1, 0x3FFF, 0x4000, 0x4001, 0x7FFFFFFF, 0xFFFFFFFF)


def corpus_files(directory: Path) -> list[Path]:
    """The corpus files under ``directory`` (sorted; none if it does not exist)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def mutate(data: bytes, rng: random.Random, pool: Sequence[bytes] = ()) -> bytes:
    """``data`` changed by one to four random edits, libFuzzer style: flip a bit, write an
    interesting byte or length word, insert, delete or duplicate a span, splice in a piece
    of another input of ``pool``, truncate."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        n = len(buf)
        at = rng.randrange(n + 1)
        if op == 0 and n:
            buf[at % n] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[at % n] = rng.choice(_INTERESTING)
        elif op == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and n:
            del buf[at : at + rng.randint(1, 16)]
        elif op == 4 and n:
            span = buf[at : at + rng.randint(1, 64)]
            buf[at:at] = span
        elif op == 5 and pool:
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            buf[at:] = other[start:] + buf[at:][: rng.randint(0, 64)]
        elif op == 6 and n >= 4:
            at = min(at, n - 4)
            buf[at : at + 4] = rng.choice(_WORDS).to_bytes(4, "big")
        elif n:
            del buf[at:]
    return bytes(buf)


def mutants(seeds: Sequence[bytes], rng: random.Random, count: int) -> Iterator[bytes]:
    """``count`` mutants of ``seeds`` (random bytes if there are none)."""
    for _ in range(count):
        if seeds:
            yield mutate(rng.choice(seeds), rng, seeds)
        else:
            yield rng.randbytes(rng.randrange(64))


def smoke(target: FuzzTarget, seeds: Iterable[bytes], *, runs: int, seed: int = 0) -> int:
    """Run ``target`` on every seed, then on ``runs`` mutants of them (deterministic for a
    given ``seed``); returns how many inputs ran. A finding propagates with the input in
    its notes."""
    pool = [s[: target.max_len] for s in seeds]
    rng = random.Random(f"{target.name}/{seed}")
    count = 0
    for raw in [*pool, *mutants(pool, rng, runs)]:
        data = raw[: target.max_len]
        try:
            target.run(data)
        except BaseException as exc:
            exc.add_note(f"fuzz target {target.name!r} input (hex): {data.hex()}")
            raise
        count += 1
    return count


def memory_peak(target: FuzzTarget, data: bytes) -> int:
    """The most bytes Python held at once, beyond what it held before, while ``target``
    ran on ``data`` (``tracemalloc``; slow, for checking a bound on a few inputs)."""
    target.run(data)  # warm caches (the templates) outside the measurement
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        target.run(data)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
