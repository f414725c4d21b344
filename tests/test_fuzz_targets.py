"""The fuzz targets (crdt_kv/testing/fuzz_*.py) and the CI smoke of them.

``make fuzz`` drives the targets with atheris for minutes; here every committed corpus
file and a seeded batch of mutants goes through each target (no atheris needed), so a
regression on anything the fuzzers ever found fails ``make test``. The other tests check
that the targets can fail: their oracles catch a misbehaving library.
"""

from __future__ import annotations

import importlib.util
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import crdt_kv.testing.fuzz_decoders as fd
from crdt_kv.protocol.framing import HELLO_MAX_FRAME_BYTES, FrameDecoder
from crdt_kv.protocol.messages import Ack, encode_frame
from crdt_kv.testing.fuzz_decoders import (
    BY_FRAME,
    MAX_CHUNKS,
    OracleError,
    chunks,
    fuzz_frames,
    fuzz_messages,
    reference_frames,
)
from crdt_kv.testing.fuzz_session import SessionCase, SessionHarness, fuzz_session
from crdt_kv.testing.fuzz_targets import (
    TARGETS,
    FuzzTarget,
    corpus_files,
    memory_peak,
    mutate,
    smoke,
)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
SMOKE_RUNS = {"session": 1500, "reconcile": 1500}
"""Mutants per target in the smoke (a few seconds each); the rest run 20,000."""


def seeds(name: str) -> list[bytes]:
    return [f.read_bytes() for f in corpus_files(CORPUS / name)]


# --- the CI smoke -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TARGETS))
def test_smoke_corpus_and_mutants_find_nothing(name: str) -> None:
    corpus = seeds(name)
    assert corpus, f"fuzz/corpus/{name} is empty: run fuzz/make_corpus.py"
    runs = SMOKE_RUNS.get(name, 20_000)
    assert smoke(TARGETS[name], corpus, runs=runs, seed=12) == len(corpus) + runs


def test_corpus_stays_modest() -> None:
    files = [f for name in TARGETS for f in corpus_files(CORPUS / name)]
    assert len(files) <= 600
    assert sum(f.stat().st_size for f in files) <= 1 << 20
    assert all(f.stat().st_size <= TARGETS[f.parent.name].max_len for f in files)


def test_session_seeds_drive_a_session_without_failing() -> None:
    """The seeds are real traffic: replayed, each one completes its sync (or tails live),
    so the fuzzer starts deep in the protocol rather than at the Hello."""
    named = [f for f in corpus_files(CORPUS / "session") if f.name.startswith("seed-")]
    assert len(named) >= 10
    repaired = 0
    for f in named:
        data = f.read_bytes()
        case = SessionCase.parse(data[:3])
        h = SessionHarness(case)
        for part in chunks(data[3:], case.chunk):
            h.deliver(part)
        s = h.link.session
        assert s is not None and h.link.error is None, (f.name, h.link.error)
        assert s.complete or (case.live and case.peer_live and s.caught_up), f.name
        repaired += s.stats.repairs
        h.finish()
    assert repaired >= 2  # first contact ran a reconciliation inside the session


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="needs atheris")
def test_atheris_driver_runs_a_target() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "--runs", "300", "frames"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "target=frames  execs=300" in out.stdout
    assert "result=ok" in out.stdout


# --- memory bound -----------------------------------------------------------------------


def _tiny_items(n: int) -> bytes:
    """An indefinite-length CBOR array of ``n`` zeros: the most objects per byte."""
    return b"\x9f" + b"\x00" * n + b"\xff"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("messages", b"\x00" + _tiny_items(8000)),
        ("messages", b"\x00\x87\x02\x00\x19\xff\xff\xf5\x00\x81\x61a" + b"\x9f" + b"\x80" * 8000),
        ("repair_messages", _tiny_items(8000)),
        ("frames", b"\x06" + b"\x00\x00\x0f\xa0" * 1000),
        ("session", b"\x00\x00\x01" + struct.pack(">I", 16002) + _tiny_items(16000)),
        ("session", b"\x20\x00\x01" + struct.pack(">I", 16002) + _tiny_items(16000)),
        ("reconcile", b"\x00" + struct.pack(">I", 16002) + _tiny_items(16000)),
    ],
)
def test_one_input_allocates_a_bounded_amount(name: str, data: bytes) -> None:
    """Hostile bytes decode to about 64 times their size at worst, and nothing else grows
    with the input: the peak stays under 128 bytes per input byte plus 1 MiB."""
    assert memory_peak(TARGETS[name], data) <= 128 * len(data) + (1 << 20)


# --- the targets' oracles can fail ------------------------------------------------------


def test_chunks_cut_without_loss_and_in_bounded_deliveries() -> None:
    data = bytes(range(256)) * 40
    for size in (BY_FRAME, 0, 1, 3, 4096):
        parts = chunks(data, size)
        assert b"".join(parts) == data
        assert all(parts) and len(parts) <= MAX_CHUNKS
    frames = encode_frame(Ack(1)) + encode_frame(Ack(300))
    assert chunks(frames + b"\x00\x00", BY_FRAME) == [
        encode_frame(Ack(1)),
        encode_frame(Ack(300)),
        b"\x00\x00",
    ]
    assert chunks(b"", BY_FRAME) == chunks(b"", 3) == []


def test_reference_splitter_follows_the_limits() -> None:
    stream = encode_frame(Ack(1)) + b"\x00\x00\x00\x05hello"
    assert reference_frames(stream, [100]) == ([encode_frame(Ack(1))[4:], b"hello"], False)
    assert reference_frames(stream, [100, 4]) == ([encode_frame(Ack(1))[4:]], True)
    assert reference_frames(stream[:-1], [100]) == ([encode_frame(Ack(1))[4:]], False)


def test_frames_oracle_catches_a_splitter_that_ignores_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = b"\x00\x00\x00\x08" + b"x" * 8  # 8 bytes over a limit of 5 (bits 0-2 = 2)
    fuzz_frames(b"\x02" + big)

    class Lenient(FrameDecoder):
        def __init__(self, *, max_frame_bytes: int = 0) -> None:
            super().__init__(max_frame_bytes=HELLO_MAX_FRAME_BYTES)

    monkeypatch.setattr(fd, "FrameDecoder", Lenient)
    with pytest.raises(OracleError, match="disagrees with the reference"):
        fuzz_frames(b"\x02" + big)


def test_messages_oracle_catches_a_lossy_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = encode_frame(Ack(7))[4:]
    fuzz_messages(b"\x00" + payload)
    monkeypatch.setattr(fd, "encode_message", lambda m: encode_frame(Ack(8))[4:])
    with pytest.raises(OracleError, match="round trip"):
        fuzz_messages(b"\x00" + payload)


def test_session_target_reports_an_unexpected_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that breaks on a bug (here: applying a batch raises KeyError) fails the
    target even though the link catches the error and closes the connection."""
    data = seeds("session")
    pull = next(d for d in data if d[:3] == b"\x00\x00\x01")
    fuzz_session(pull)

    def broken(*_: object, **__: object) -> int:
        raise KeyError("bug")

    monkeypatch.setattr("crdt_kv.store.Store.apply_raw", broken)
    with pytest.raises(OracleError, match="KeyError"):
        fuzz_session(pull)


def test_smoke_names_the_input_that_failed() -> None:
    def boom(data: bytes) -> None:
        if data.startswith(b"\x01"):
            raise ValueError("found")

    target = FuzzTarget("boom", boom, 100)
    with pytest.raises(ValueError, match="found") as info:
        smoke(target, [b"\x00\x01", b"\x01\x02"], runs=0)
    assert info.value.__notes__ == ["fuzz target 'boom' input (hex): 0102"]


def test_mutants_are_deterministic_and_change_the_input() -> None:
    a = [mutate(b"hello world", random.Random(3)) for _ in range(50)]
    b = [mutate(b"hello world", random.Random(3)) for _ in range(50)]
    assert a == b
    assert sum(m != b"hello world" for m in a) >= 45
