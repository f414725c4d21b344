"""Replication speed over loopback TCP between two RocksDB stores, against pycrdt (Yjs).

First, issue 13's headline row (``sync_headline.py``, read its docstring): a full sync of
``--headline-n`` entries (100,000; ``--big-n`` with ``--big``) with 100-byte values from a
``crdt-kv serve`` process into a receiver process, RocksDB both ends: entries/s, wire bytes
per entry, both processes' peak RSS, with pycrdt and raw ``rocksdict`` (WriteBatch per 1,000)
timed in the same run, paired run by run (``--headline-repeat``). Targets >= 170,000
entries/s, <= 120 B/entry, peak RSS <= 200 MiB at 1,000,000 entries (only with ``--big``).
``--profile`` also profiles both headline processes (all threads, CPU clock).
``--headline-only`` runs just this; ``--no-headline`` skips it.

Then (issue 4, "Speed"):

1. full sync of ``--full`` entries (default 100,000) into an empty store: entries/s (wall
   clock, and the CPU-bound rate: entries per main-thread CPU second, which both sessions
   share in one process) and wire bytes per entry; also with the sending store in a second
   process;
2. delta sync of 100 changed keys among N entries (N = 10,000, the full-sync pair, and
   ``--big-n`` = 1,000,000 with ``--big``): milliseconds and wire bytes. The pairs take
   turns round by round (``--delta-rounds``), so the big/small time ratio is a median of
   paired per-round ratios, not of figures taken minutes apart on a shared machine;
3. write-to-visible latency on a live session: p50/p99 over ``--writes`` paced writes;
4. the same full and delta sync with ``pycrdt`` (a Y.Map in memory): ``doc.get_update()``
   applied to a fresh doc, then 100 changes sent with a state vector;
5. event-loop health during a durable catch-up (``loop_health``): a ``crdt_kv.serve`` node
   in a second process holds ``--loop-n`` entries (default 100,000, 100-character values);
   a fresh receiver opened with ``sync_writes=True`` (and, for contrast, ``False``) catches
   up under ``serve(live=False)`` here while a trio task sleeps 1 ms in a loop and records
   how late it woke ("loop wait"): p50/p99/max per sample, plus time-weighted figures.
   ``--loop-only`` runs just this; ``--no-loop`` skips it.
6. ``siblings`` mode against ``lww`` (``siblings_vs_lww``): full syncs of ``--full``
   single-writer keys from an ``lww`` source and from a ``siblings`` source into fresh
   stores of the same mode, taking turns run by run, so the rate ratio is a median of
   paired per-run ratios; wire bytes per entry of both; and, for information, a
   ``siblings`` source whose every key holds two live siblings (two writers' states
   joined). Targets: siblings sync rate >= 0.7x lww, wire bytes per entry <= 1.3x lww.
   ``--siblings-only`` runs just this; ``--no-siblings`` skips it.

Wire bytes are counted at the socket (every byte both sides wrote: Hello, Request, Batch,
Ack frames), so they are comparable across engines; pycrdt's figure is its update alone
(no state vector, no framing). ``--engine raw`` drives ``crdt_kv.protocol.Session`` objects
with the small pump below; ``--engine replicate`` uses ``crdt_kv.replicate`` (the default
when it exists). Full-sync figures are the median of ``--repeat`` runs. ``--sweep`` times
full sync over ``max_batch_entries`` x ``window``; ``--stages`` times each pipeline stage
alone; ``--profile`` prints where a full sync spends its time. Every run checks that the
stores converged (equal digests, all keys), so nothing is timed that did not happen.

Run: ``.venv/bin/python bench/bench_sync.py [--big] [--sweep] [--stages] [--profile]
[--json]``; the headline alone: ``bench/bench_sync.py --headline-only [--headline-n N]
[--headline-repeat R] [--profile]``; the loop measurement alone: ``bench/bench_sync.py
--loop-only [--loop-n N] [--loop-repeat R] [--loop-sync-writes both|true|false]``; siblings
vs lww alone: ``bench/bench_sync.py --siblings-only [--full N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sync_headline
import trio

import crdt_kv
from crdt_kv.protocol import ConnectionClosed, Session, SessionFailed, SyncComplete
from crdt_kv.store import Store

CHANGES = 100


# --- stores ------------------------------------------------------------------------------


def key_of(i: int) -> str:
    return f"key-{i:07d}"


def value_of(i: int, gen: int = 0) -> str:
    return f"value-{gen:02d}-{i:07d}"


def padded_value(i: int) -> str:
    """A 100-character value (102 bytes as CBOR): the loop-health catch-up's payload."""
    return f"{value_of(i)}-".ljust(100, "x")


def fill(
    store: Store, n: int, *, chunk: int = 10_000, value: Callable[[int], Any] = value_of
) -> None:
    """Write ``n`` keys in atomic batches of ``chunk`` (one commit each)."""
    for lo in range(0, n, chunk):
        with store.batch() as b:
            for i in range(lo, min(n, lo + chunk)):
                b.put(key_of(i), value(i))


def change(store: Store, keys: list[int], gen: int) -> None:
    """Overwrite ``keys`` one put (one commit) each, like independent application writes."""
    for i in keys:
        store.put(key_of(i), value_of(i, gen))


class Workdir:
    """A temp directory of RocksDB stores, removed on exit."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="bench_sync_")
        self._n = 0

    def store(self, peer: str, conflicts: str = "lww") -> Store:
        self._n += 1
        path = os.path.join(self.path, f"{self._n}-{peer}")
        return crdt_kv.open(path, peer_id=peer, conflicts=conflicts)

    def new_path(self, peer: str) -> str:
        self._n += 1
        return os.path.join(self.path, f"{self._n}-{peer}")

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# --- moving bytes ------------------------------------------------------------------------


class CountingStream(trio.abc.HalfCloseableStream):
    """Wraps a trio stream and counts the bytes written to it (the wire bytes we send)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def raw_session(
    store: Store, stream: trio.abc.Stream, *, live: bool = False, **session_kw: Any
) -> Session:
    """Drive one protocol Session over ``stream`` until SyncComplete (or, live, cancellation).

    A receive loop feeds the session; a sender task drains ``data_to_send`` whenever kicked,
    so both directions flow at once. A live session is woken by the store's ``on_commit``.
    """
    session = Session(store, live=live, **session_kw)
    kick_tx, kick_rx = trio.open_memory_channel[None](math.inf)

    async def sender() -> None:
        async with kick_rx:
            async for _ in kick_rx:
                out = session.data_to_send()
                if out:
                    await stream.send_all(out)

    def on_commit(_seq: int) -> None:
        session.local_changed()
        kick_tx.send_nowait(None)

    unsubscribe = store.on_commit(on_commit) if live else None
    session.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            kick_tx.send_nowait(None)
            while True:
                data = await stream.receive_some(1 << 18)
                events = session.receive_data(bytes(data))
                kick_tx.send_nowait(None)
                for ev in events:
                    if isinstance(ev, SessionFailed):
                        raise RuntimeError(f"session of {store.peer_id} failed: {ev.error}")
                if not data or any(isinstance(e, SyncComplete | ConnectionClosed) for e in events):
                    break
            kick_tx.close()  # the sender flushes what is left (our final Ack), then ends
    finally:
        if unsubscribe is not None:
            unsubscribe()
    return session


Runner = Callable[..., Awaitable[Any]]


def pick_runner(engine: str) -> Runner:
    if engine == "replicate":
        replicate = crdt_kv.replicate  # type: ignore[attr-defined]

        async def run(store: Store, stream: trio.abc.Stream, **kw: Any) -> Any:
            return await replicate(store, stream, **kw)

        return run
    return raw_session


@dataclass
class SyncResult:
    seconds: float
    bytes_total: int
    bytes_a: int
    bytes_b: int
    cpu_seconds: float = 0.0  # this process's main thread: both sessions when in-process


async def tcp_sync(
    runner: Runner, a: Store, b: Store, *, mode_a: str = "both", mode_b: str = "both", **kw: Any
) -> SyncResult:
    """One non-live session between ``a`` (client) and ``b`` (server) over 127.0.0.1 TCP."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    t0, c0 = time.perf_counter(), time.thread_time()
    counted: dict[str, CountingStream] = {}

    async def serve_one() -> None:
        stream = CountingStream(await listeners[0].accept())
        counted["b"] = stream
        async with stream:
            await runner(b, stream, mode=mode_b, **kw)

    async def client() -> None:
        stream = CountingStream(await trio.open_tcp_stream("127.0.0.1", port))
        counted["a"] = stream
        async with stream:
            await runner(a, stream, mode=mode_a, **kw)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        nursery.start_soon(client)
    dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    await listeners[0].aclose()
    sa, sb = counted["a"].sent, counted["b"].sent
    return SyncResult(dt, sa + sb, sa, sb, cpu)


def sync(runner: Runner, a: Store, b: Store, **kw: Any) -> SyncResult:
    async def main() -> SyncResult:
        return await tcp_sync(runner, a, b, **kw)

    return trio.run(main)


# --- the sender in its own process ---------------------------------------------------------


def _serve_process(path: str, peer: str, port_conn: Any, engine: str, kw: dict[str, Any]) -> None:
    """Child process: open store ``path`` and serve non-live sessions until told to stop."""
    store = crdt_kv.open(path, peer_id=peer)
    runner = pick_runner(engine)

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port_conn.send(listeners[0].socket.getsockname()[1])
        while True:
            stream = await listeners[0].accept()
            if await stream.receive_some(1) == b"q":
                return
            async with stream:
                await runner(store, stream, mode="both", **kw)

    try:
        trio.run(main)
    finally:
        store.close()


def sync_from_process(runner: Runner, port: int, b: Store, **kw: Any) -> SyncResult:
    async def main() -> SyncResult:
        t0, c0 = time.perf_counter(), time.thread_time()
        stream = CountingStream(await trio.open_tcp_stream("127.0.0.1", port))
        await stream.send_all(b"s")
        stream.sent = 0
        async with stream:
            await runner(b, stream, mode="both", **kw)
        cpu = time.thread_time() - c0
        return SyncResult(time.perf_counter() - t0, stream.sent, 0, stream.sent, cpu)

    return trio.run(main)


# --- live latency --------------------------------------------------------------------------


async def live_latency(
    a: Store, b: Store, *, writes: int, interval: float, engine: str
) -> list[float]:
    """Write ``writes`` keys on ``a`` at a steady pace; time until each is visible on ``b``.

    Both stores live in this process, each served by its own trio task over loopback TCP.
    Visibility is ``b``'s ``on_change`` hook firing for the key (the apply committed).
    """
    runner = pick_runner(engine)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    put_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    all_seen = trio.Event()
    prefix = f"live-{random.getrandbits(32):08x}-"

    token = trio.lowlevel.current_trio_token()

    def on_change(entry: Any) -> None:
        # Applied batches may commit on the node's storage worker thread: stamp the time
        # here, wake the trio task through the token (thread-safe).
        k = entry.key
        if k in put_at and k not in seen_at:
            seen_at[k] = time.perf_counter()
            if len(seen_at) == writes:
                token.run_sync_soon(all_seen.set)

    unsubscribe = b.on_change(on_change)
    try:
        async with trio.open_nursery() as nursery:

            async def serve_one() -> None:
                stream = await listeners[0].accept()
                async with stream:
                    await runner(b, stream, mode="both", live=True)

            async def client() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await runner(a, stream, mode="both", live=True)

            nursery.start_soon(serve_one)
            nursery.start_soon(client)
            await trio.sleep(0.2)  # let the sessions connect and catch up
            for i in range(writes):
                k = f"{prefix}{i:06d}"
                put_at[k] = time.perf_counter()
                a.put(k, i)
                await trio.sleep(interval)
            with trio.move_on_after(10):
                await all_seen.wait()
            nursery.cancel_scope.cancel()
    finally:
        unsubscribe()
        await listeners[0].aclose()
    missing = writes - len(seen_at)
    if missing:
        raise RuntimeError(f"{missing} of {writes} live writes never became visible")
    return [seen_at[k] - put_at[k] for k in put_at]


# --- pycrdt ----------------------------------------------------------------------------------


@dataclass
class YResult:
    full_seconds: list[float] = field(default_factory=list)
    full_bytes: int = 0
    delta_seconds: list[float] = field(default_factory=list)
    delta_bytes: list[int] = field(default_factory=list)
    state_vector_bytes: int = 0


def pycrdt_bench(
    n: int, repeat: int, seed: int, *, value: Callable[[int], Any] = value_of
) -> YResult:
    """Full sync of a Y.Map of ``n`` keys (values ``value(i)``), then ``repeat`` rounds of
    100 changed keys."""
    from pycrdt import Doc, Map

    res = YResult()
    doc = Doc()
    ymap = doc.get("m", type=Map)
    with doc.transaction():
        for i in range(n):
            ymap[key_of(i)] = value(i)
    other = Doc()
    for _ in range(repeat):
        t0 = time.perf_counter()
        update = doc.get_update()
        fresh = Doc()
        fresh.apply_update(update)
        res.full_seconds.append(time.perf_counter() - t0)
        res.full_bytes = len(update)
        other = fresh
    if len(other.get("m", type=Map)) != n:
        raise RuntimeError("pycrdt full sync lost keys")
    rng = random.Random(seed)
    for gen in range(1, repeat + 1):
        keys = rng.sample(range(n), CHANGES)
        with doc.transaction():
            for i in keys:
                ymap[key_of(i)] = value_of(i, gen)
        t0 = time.perf_counter()
        sv = other.get_state()
        update = doc.get_update(sv)
        other.apply_update(update)
        res.delta_seconds.append(time.perf_counter() - t0)
        res.delta_bytes.append(len(update))
        res.state_vector_bytes = len(sv)
    om = other.get("m", type=Map)
    if om[key_of(keys[0])] != value_of(keys[0], repeat):
        raise RuntimeError("pycrdt delta sync did not deliver the change")
    return res


# --- measurements ------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def check_equal(a: Store, b: Store, what: str) -> None:
    if a.digest() != b.digest():
        raise RuntimeError(f"{what}: stores did not converge (digests differ)")


@dataclass
class DeltaResult:
    n: int
    first_seconds: float
    first_bytes: int
    seconds: list[float]
    bytes: list[int]


def paired_delta_rounds(
    runner: Runner,
    pairs: dict[int, tuple[Store, Store]],
    rounds: int,
    seed: int,
    kw: dict[str, Any],
) -> dict[int, DeltaResult]:
    """``rounds + 1`` rounds; in each, every pair gets 100 fresh changes and one session.

    Changes are written (one put each, outside the timing) on the pair's ``a`` side, then
    one non-live session runs between ``a`` and ``b``. The pairs take turns within a round
    (order rotating per round), so a load spike hits every store size alike and the
    per-round time ratios compare like with like. The first round after the full sync is
    reported apart: in it ``b`` first answers ``a``'s request for its own log (entries it
    got from ``a``, scanned once and never echoed), which is proportional to the store.
    """
    rngs = {n: random.Random(seed + n) for n in pairs}
    out = {n: DeltaResult(n, 0.0, 0, [], []) for n in pairs}
    sizes = list(pairs)
    for gen in range(1, rounds + 2):
        s = gen % len(sizes)
        for n in sizes[s:] + sizes[:s]:
            a, b = pairs[n]
            change(a, rngs[n].sample(range(n), CHANGES), gen)
            r = sync(runner, a, b, **kw)
            check_equal(a, b, f"delta sync among {n}")
            if gen == 1:
                out[n].first_seconds, out[n].first_bytes = r.seconds, r.bytes_total
            else:
                out[n].seconds.append(r.seconds)
                out[n].bytes.append(r.bytes_total)
    return out


def full_sync_runs(
    runner: Runner, wd: Workdir, a: Store, n: int, repeat: int, kw: dict[str, Any]
) -> list[SyncResult]:
    out = []
    for r in range(repeat):
        b = wd.store(f"bench-b{r}")
        try:
            res = sync(runner, a, b, **kw)
            if len(b) != n:
                raise RuntimeError(f"full sync delivered {len(b)} of {n} keys")
            check_equal(a, b, "full sync")
            out.append(res)
        finally:
            b.close()
    return out


def full_sync_two_procs(
    engine: str, wd: Workdir, n: int, repeat: int, kw: dict[str, Any]
) -> list[SyncResult]:
    """Full sync with the sending store served by a child process (true parallelism)."""
    path = wd.new_path("bench-src")
    src = crdt_kv.open(path, peer_id="bench-src")
    fill(src, n)
    digest = src.digest()
    src.close()
    runner = pick_runner(engine)
    out = []
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_serve_process, args=(path, "bench-src", child, engine, kw), daemon=True
    )
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("sender process did not start")
        port = int(parent.recv())
        for r in range(repeat):
            b = wd.store(f"bench-pb{r}")
            try:
                res = sync_from_process(runner, port, b, **kw)
                if len(b) != n or b.digest() != digest:
                    raise RuntimeError("two-process full sync did not converge")
                out.append(res)
            finally:
                b.close()
    finally:

        async def stop() -> None:
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.send_all(b"q")
            await s.aclose()

        with contextlib.suppress(OSError):
            trio.run(stop)
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return out


# --- siblings mode against lww --------------------------------------------------------------

SIBLING_SUBJECTS = ("lww", "siblings", "two siblings")
"""Full-sync sources: lww and siblings mode with one writer, siblings with two per key."""


def sibling_sources(wd: Workdir, n: int) -> dict[str, Store]:
    """The three sources of :func:`siblings_vs_lww`, ``n`` keys each."""
    lww, one = wd.store("bench-lww"), wd.store("bench-sib", "siblings")
    fill(lww, n)
    fill(one, n)
    two, other = wd.store("bench-two", "siblings"), wd.store("bench-other", "siblings")
    fill(two, n)
    fill(other, n, value=lambda i: value_of(i, 1))
    two.apply(other.changes())  # nothing between them: every key now holds both writes
    other.close()
    held = sum(1 for _ in two.conflicts())
    if held != n:
        raise RuntimeError(f"two-sibling source holds {held} of {n} conflicted keys")
    return {"lww": lww, "siblings": one, "two siblings": two}


def siblings_vs_lww(
    runner: Runner, wd: Workdir, n: int, repeat: int, kw: dict[str, Any]
) -> dict[str, Any]:
    """Paired full syncs from each source of :func:`sibling_sources` into fresh stores.

    In each run every source syncs once into a new store of its mode (order rotating per
    run), so a load spike lands on all alike; ratios are medians of per-run ratios.
    """
    sources = sibling_sources(wd, n)
    runs: dict[str, list[SyncResult]] = {name: [] for name in SIBLING_SUBJECTS}
    try:
        for r in range(repeat):
            s = r % len(SIBLING_SUBJECTS)
            for name in SIBLING_SUBJECTS[s:] + SIBLING_SUBJECTS[:s]:
                src = sources[name]
                dst = wd.store(f"bench-sd{r}", src.conflict_mode)
                try:
                    res = sync(runner, src, dst, **kw)
                    if len(dst) != n:
                        raise RuntimeError(f"{name} full sync delivered {len(dst)} of {n} keys")
                    check_equal(src, dst, f"{name} full sync")
                finally:
                    dst.close()
                runs[name].append(res)
    finally:
        for src in sources.values():
            src.close()
    out: dict[str, Any] = {"n": n, "runs": repeat}
    for name, rs in runs.items():
        out[name] = {
            "seconds": [x.seconds for x in rs],
            "entries_per_s": n / med([x.seconds for x in rs]),
            "bytes_per_entry": rs[0].bytes_total / n,
        }
    lww, sib, two = (runs[name] for name in SIBLING_SUBJECTS)
    out["rate_ratio_samples"] = [x.seconds / y.seconds for x, y in zip(lww, sib, strict=True)]
    out["rate_ratio"] = med(out["rate_ratio_samples"])
    out["bytes_ratio"] = sib[0].bytes_total / lww[0].bytes_total
    out["two_rate_ratio"] = med([x.seconds / y.seconds for x, y in zip(sib, two, strict=True)])
    out["two_bytes_ratio"] = two[0].bytes_total / sib[0].bytes_total
    return out


def siblings_verdicts(sv: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Rows of :func:`siblings_vs_lww`: two targets against lww, two-sibling keys for info."""
    lww, sib, two = (sv[name] for name in SIBLING_SUBJECTS)
    n, runs = sv["n"], sv["runs"]
    return [
        (
            f"siblings full sync {n:,} single-writer keys",
            f"{sib['entries_per_s']:,.0f} entries/s",
            f"lww {lww['entries_per_s']:,.0f}/s ({sv['rate_ratio']:.2f}x, median of "
            f"{runs} paired runs)",
            ">= 0.7x lww",
            "MET" if sv["rate_ratio"] >= 0.7 else "MISSED",
        ),
        (
            "siblings wire bytes / entry, single writer",
            f"{sib['bytes_per_entry']:.1f} B",
            f"lww {lww['bytes_per_entry']:.1f} B ({sv['bytes_ratio']:.2f}x)",
            "<= 1.3x lww",
            "MET" if sv["bytes_ratio"] <= 1.3 else "MISSED",
        ),
        (
            f"siblings full sync {n:,} keys x 2 live siblings",
            f"{two['entries_per_s']:,.0f} keys/s ({2 * two['entries_per_s']:,.0f} versions/s)",
            f"{two['bytes_per_entry']:.1f} B/key ({sv['two_bytes_ratio']:.2f}x bytes, "
            f"{sv['two_rate_ratio']:.2f}x rate of single-writer siblings)",
            "-",
            "-",
        ),
    ]


def run_siblings(
    args: argparse.Namespace,
    runner: Runner,
    out: dict[str, Any],
    wd: Workdir,
    log: Callable[[str], None],
) -> None:
    log(f"siblings vs lww: {args.full:,}-key full syncs, {args.repeat} paired runs ...")
    kw = {"max_batch_entries": args.batch, "window": args.window}
    out["siblings"] = siblings_vs_lww(runner, wd, args.full, args.repeat, kw)


# --- event-loop health during a durable catch-up ----------------------------------------------

PROBE_SLEEP = 0.001


def _serve_node_process(path: str, n: int, conn: Any, session_options: dict[str, Any]) -> None:
    """Child process: fill a RocksDB store with ``n`` entries and serve it with a Node.

    Sends ``(port, digest, len)`` through ``conn`` once listening; stops when the parent
    writes anything to ``conn`` (or closes it). Its own CPU work (log scan, encoding) runs
    on its own interpreter, so it cannot block the receiver's event loop.
    """
    store = crdt_kv.open(path, peer_id="a", backend="rocksdb")
    try:
        fill(store, n, value=padded_value)

        async def main() -> None:
            async with crdt_kv.serve(
                store, listen="127.0.0.1:0", live=False, session_options=session_options
            ) as node:
                conn.send((node.address[1], store.digest(), len(store)))
                await trio.lowlevel.wait_readable(conn.fileno())

        trio.run(main)
    finally:
        store.close()


def lag_stats(lags: list[float]) -> dict[str, Any]:
    """Per-sample count, p50/p99/max (ms) and how many waits exceeded 10 and 50 ms.

    Per-sample figures count one sample per probe iteration, so a loop blocked for 40 ms
    yields one sample where a free loop yields forty: they answer "how late is a 1 ms
    sleeper, per wake-up". Two time-weighted figures say how much of the time the loop was
    blocked: ``tw_p50_ms``, the wait of the iteration in progress at the median instant
    (each sample weighted by its length, 1 ms + wait), and ``share_in_waits_over_10ms``,
    the fraction of the probe's time spent inside waits longer than 10 ms.
    """
    ms = sorted(x * 1e3 for x in lags)
    if not ms:
        nan = math.nan
        return {
            "samples": 0,
            "p50_ms": nan,
            "p99_ms": nan,
            "max_ms": nan,
            "over_10ms": 0,
            "over_50ms": 0,
            "tw_p50_ms": nan,
            "share_in_waits_over_10ms": nan,
        }
    qs = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    step = PROBE_SLEEP * 1e3
    total = sum(step + x for x in ms)
    acc, tw_p50 = 0.0, ms[-1]
    for x in ms:
        acc += step + x
        if acc >= total / 2:
            tw_p50 = x
            break
    return {
        "samples": len(ms),
        "p50_ms": qs[49],
        "p99_ms": qs[98],
        "max_ms": ms[-1],
        "over_10ms": sum(x > 10 for x in ms),
        "over_50ms": sum(x > 50 for x in ms),
        "tw_p50_ms": tw_p50,
        "share_in_waits_over_10ms": sum(step + x for x in ms if x > 10) / total,
    }


async def _probe(lags: list[float]) -> None:
    """Sleep 1 ms in a loop; record how far past its deadline each wake-up came."""
    now = trio.current_time
    while True:
        t0 = now()
        await trio.sleep(PROBE_SLEEP)
        lags.append(now() - t0 - PROBE_SLEEP)


async def idle_probe(seconds: float) -> list[float]:
    """The probe alone for ``seconds``: the loop's noise floor on this machine."""
    lags: list[float] = []
    with trio.move_on_after(seconds):
        await _probe(lags)
    return lags


async def catch_up_with_probe(
    store: Store, sender: str, n: int, session_options: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Serve ``store`` (empty) with ``sender`` as its one peer until it holds ``n`` keys.

    ``live=False``: the node's round loop starts its first round with the sender at once,
    and that one non-live session streams the whole log (no ``sync_now`` needed; the
    result records how many rounds it took). The probe runs from before the node starts
    until the store holds all ``n`` keys; the figures stop there.
    """
    lags: list[float] = []
    done = trio.Event()
    changes = 0

    def on_change(_ev: Any) -> None:
        nonlocal changes
        changes += 1
        if len(store) >= n:
            done.set()

    probe_scope = trio.CancelScope()

    async def probe() -> None:
        with probe_scope:
            await _probe(lags)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        await trio.sleep(0)  # the probe takes its first sample before the node starts
        t0 = time.perf_counter()
        async with crdt_kv.serve(
            store,
            listen="127.0.0.1:0",
            peers=[sender],
            live=False,
            session_options=session_options,
        ) as node:
            node.on("change", on_change)
            with trio.fail_after(timeout):
                await done.wait()
            seconds = time.perf_counter() - t0
            probe_scope.cancel()
            # Not timed: let the round end cleanly (its final Ack) before the node stops.
            with trio.move_on_after(10):
                while not any(s.get("rounds_completed") for s in node.stats().values()):
                    await trio.sleep(0.01)
            peer_stats = {
                k: {f: v.get(f) for f in ("rounds_completed", "batches_received", "sessions")}
                for k, v in node.stats().items()
            }
    return {
        "seconds": seconds,
        "entries_per_s": n / seconds,
        "change_events": changes,
        "peers": peer_stats,
        "lags": lags,
    }


def loop_health(
    wd: Workdir,
    n: int,
    *,
    repeat: int,
    sync_modes: tuple[bool, ...],
    session_options: dict[str, Any],
    idle_seconds: float = 1.0,
    timeout: float = 600.0,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Event-loop health of a receiver applying an ``n``-entry catch-up.

    The sender (``n`` entries, 100-character values) is a ``crdt_kv.serve`` node in a
    second process. Each run opens a fresh RocksDB receiver (``sync_writes`` per
    ``sync_modes``) in this process and serves it under ``trio.run`` with the sender as
    its peer, while a probe task sleeps 1 ms in a loop and records how long past its
    deadline it woke ("loop wait"). Every run checks convergence (all ``n`` keys, digest
    equal to the sender's). Modes take turns run by run, so load drift hits both alike.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    path = wd.new_path("loop-a")
    proc = ctx.Process(
        target=_serve_node_process, args=(path, n, child, session_options), daemon=True
    )
    proc.start()
    out: dict[str, Any] = {
        "n": n,
        "value_chars": len(padded_value(0)),
        "probe_sleep_ms": PROBE_SLEEP * 1e3,
        "session_options": session_options,
        "topology": "sender: crdt_kv.serve node in a 2nd process; receiver: serve(live=False)",
    }
    try:
        if not parent.poll(max(60.0, n / 5_000)):
            raise RuntimeError("loop-health sender process did not start")
        port, digest, count = parent.recv()
        if count != n:
            raise RuntimeError(f"loop-health sender holds {count} of {n} keys")
        sender = f"127.0.0.1:{port}"
        idle = trio.run(idle_probe, idle_seconds)
        out["idle"] = {"seconds": idle_seconds, **lag_stats(idle)}
        runs: dict[bool, list[dict[str, Any]]] = {m: [] for m in sync_modes}
        for r in range(repeat):
            for sync_writes in sync_modes if r % 2 == 0 else sync_modes[::-1]:
                log(f"  run {r + 1}/{repeat}, sync_writes={sync_writes} ...")
                b = crdt_kv.open(
                    wd.new_path("loop-b"), peer_id="b", backend="rocksdb", sync_writes=sync_writes
                )
                try:
                    res = trio.run(catch_up_with_probe, b, sender, n, session_options, timeout)
                    if len(b) != n or b.digest() != digest:
                        raise RuntimeError(
                            f"loop-health catch-up did not converge ({len(b)} of {n} keys)"
                        )
                finally:
                    b.close()
                lags = res.pop("lags")
                res.update(lag_stats(lags))
                res["load_1m"] = os.getloadavg()[0]
                runs[sync_writes].append(res)
                log(
                    f"    {res['entries_per_s']:,.0f} entries/s, loop wait p50 "
                    f"{res['p50_ms']:.2f} p99 {res['p99_ms']:.2f} max {res['max_ms']:.1f} ms, "
                    f"time-weighted p50 {res['tw_p50_ms']:.1f} ms, "
                    f"{res['share_in_waits_over_10ms']:.0%} of the time in waits > 10 ms"
                )
        for sync_writes, rs in runs.items():
            out["sync" if sync_writes else "nosync"] = {
                "sync_writes": sync_writes,
                "runs": rs,
                "p50_ms": med([r["p50_ms"] for r in rs]),
                "p99_ms": med([r["p99_ms"] for r in rs]),
                "max_ms": max(r["max_ms"] for r in rs),
                "tw_p50_ms": med([r["tw_p50_ms"] for r in rs]),
                "share_in_waits_over_10ms": med([r["share_in_waits_over_10ms"] for r in rs]),
                "entries_per_s": med([r["entries_per_s"] for r in rs]),
            }
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    return out


# --- profile ---------------------------------------------------------------------------------

PROFILE_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("store.raw_changes (log scan + record reads)", ("changelog.py:", "scan")),
    ("encode Batch (CBOR)", ("messages.py:", "encode_frame")),
    ("decode Batch (CBOR + checks)", ("messages.py:", "decode_message")),
    ("apply_raw: validate (decode each value)", ("merge.py:", "validate_all")),
    ("apply_raw: merge + commit (digest, RocksDB write)", ("store/__init__.py:", "apply_raw")),
    ("Committer.commit (of which)", ("commit.py:", "commit")),
    ("stage_record (blake2b digest, of which)", ("layout.py:", "stage_record")),
    ("RocksDB write (of which)", ("rocksdb.py:", "write")),
]


def profile_full_sync(runner: Runner, wd: Workdir, a: Store, kw: dict[str, Any]) -> dict[str, Any]:
    """cProfile one full sync; return cumulative seconds per bucket and the top functions."""
    b = wd.store("bench-prof")
    prof = cProfile.Profile()
    try:
        prof.enable()
        res = sync(runner, a, b, **kw)
        prof.disable()
    finally:
        b.close()
    st = pstats.Stats(prof)
    stats: dict[tuple[str, int, str], Any] = st.stats  # type: ignore[attr-defined]
    total = res.seconds
    buckets: dict[str, float] = {}
    for label, (file_part, func) in PROFILE_BUCKETS:
        cum = 0.0
        for (fname, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
            if name == func and fname.endswith(file_part.rstrip(":")):
                cum = max(cum, ct)
        buckets[label] = cum
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    return {"wall_seconds_profiled": total, "buckets": buckets, "top_tottime": buf.getvalue()}


def stage_times(wd: Workdir, a: Store, batch: int) -> dict[str, float]:
    """Seconds per pipeline stage of a full sync of ``a``, each timed alone, no network.

    The stages a session runs per batch: read the sender's log, encode the frame, split and
    decode it, validate the entries, merge and commit them with the cursor. Timed without a
    profiler (whose per-call overhead inflates Python-heavy code), main-thread CPU.
    """
    from crdt_kv.codec import value_codec
    from crdt_kv.protocol import Batch, FrameDecoder, decode_message, encode_frame

    b = wd.store("bench-stages")
    out: dict[str, float] = {}
    clock = time.thread_time
    try:
        t = clock()
        chunks: list[list[Any]] = []
        pos, head = 0, a.last_seq
        while pos < head:
            entries = list(a.raw_changes(pos, limit=batch))
            end = entries[-1].seq if len(entries) == batch else head
            chunks.append([pos, end, entries])
            pos = end
        out["sender: store.raw_changes"] = clock() - t
        t = clock()
        frames = [encode_frame(Batch(lo, hi, hi >= head, tuple(es))) for lo, hi, es in chunks]
        out["sender: encode Batch frames (CBOR)"] = clock() - t
        t = clock()
        dec = FrameDecoder()
        msgs = [decode_message(p, max_batch_entries=batch) for f in frames for p in dec.feed(f)]
        out["receiver: split + decode + check frames"] = clock() - t
        vdec = value_codec(b.value_encoding)[1]
        t = clock()
        for m in msgs:
            for e in m.entries:  # type: ignore[union-attr]
                vdec(e.value)
        out["receiver: decode each value (apply_raw's check, of which)"] = clock() - t
        t = clock()
        for m in msgs:
            b.apply_raw(m.entries, cursor=(a.peer_id, a.incarnation, m.to_seq))  # type: ignore[union-attr]
        out["receiver: store.apply_raw (validate + merge + commit)"] = clock() - t
        if b.digest() != a.digest():
            raise RuntimeError("stage replay did not converge")
    finally:
        b.close()
    return out


# --- main ------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = args.engine
    runner = pick_runner(engine)
    kw = {"max_batch_entries": args.batch, "window": args.window}
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_1m_start": os.getloadavg()[0],
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "engine": engine,
        "session": kw,
        "repeat": args.repeat,
    }
    wd = Workdir()
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.quiet else (lambda s: None)
    try:
        if not (args.no_headline or args.loop_only or args.siblings_only):
            run_headline(args, out, log)
            if args.headline_only:
                return out
        if args.loop_only:
            run_loop_health(args, out, wd, log)
            return out
        if args.siblings_only:
            run_siblings(args, runner, out, wd, log)
            return out
        n = args.full
        log(f"building {n} entries ...")
        a = wd.store("bench-a")
        t0 = time.perf_counter()
        fill(a, n)
        out["build_entries_per_s"] = n / (time.perf_counter() - t0)

        log("full sync (one process) ...")
        full = full_sync_runs(runner, wd, a, n, args.repeat, kw)
        out["full"] = {
            "n": n,
            "seconds": [r.seconds for r in full],
            "bytes": full[0].bytes_total,
            "entries_per_s": n / med([r.seconds for r in full]),
            "cpu_seconds": [r.cpu_seconds for r in full],
            "cpu_entries_per_s": n / med([r.cpu_seconds for r in full]),
            "bytes_per_entry": full[0].bytes_total / n,
        }
        if not args.no_procs:
            log("full sync (sender in a second process) ...")
            full2 = full_sync_two_procs(engine, wd, n, args.repeat, kw)
            out["full_two_procs"] = {
                "n": n,
                "seconds": [r.seconds for r in full2],
                "entries_per_s": n / med([r.seconds for r in full2]),
            }

        log("pycrdt ...")
        y = pycrdt_bench(n, args.repeat, args.seed)
        out["pycrdt"] = {
            "n": n,
            "full_seconds": y.full_seconds,
            "full_entries_per_s": n / med(y.full_seconds),
            "full_bytes_per_entry": y.full_bytes / n,
            "delta_seconds": y.delta_seconds,
            "delta_bytes": y.delta_bytes,
            "state_vector_bytes": y.state_vector_bytes,
        }

        sizes = [10_000, n] + ([args.big_n] if args.big else [])
        pairs: dict[int, tuple[Store, Store]] = {}
        for size in dict.fromkeys(sizes):
            log(f"delta sync: building the {size:,}-entry pair ...")
            if size == n:
                pa, pb = a, wd.store("bench-dn")
                sync(runner, pa, pb, **kw)
            else:
                pa, pb = wd.store(f"bench-d{size}a"), wd.store(f"bench-d{size}b")
                t0 = time.perf_counter()
                fill(pa, size)
                build_s = time.perf_counter() - t0
                r = sync(runner, pa, pb, **kw)
                if size == args.big_n and args.big:
                    out["full_big"] = {
                        "n": size,
                        "build_seconds": build_s,
                        "seconds": r.seconds,
                        "cpu_seconds": r.cpu_seconds,
                        "entries_per_s": size / r.seconds,
                        "bytes_per_entry": r.bytes_total / size,
                    }
                    log(f"  ({size:,} full sync: {size / r.seconds:,.0f} entries/s)")
            check_equal(pa, pb, f"initial sync among {size}")
            pairs[size] = (pa, pb)
        log(f"delta sync: {args.delta_rounds} paired rounds ...")
        dres = paired_delta_rounds(runner, pairs, args.delta_rounds, args.seed, kw)
        deltas: dict[str, Any] = {}
        for size, d in dres.items():
            deltas[str(size)] = {
                "n": size,
                "first_round_ms": d.first_seconds * 1e3,
                "first_round_bytes": d.first_bytes,
                "ms": [x * 1e3 for x in d.seconds],
                "bytes": d.bytes,
                "median_ms": med(d.seconds) * 1e3,
                "median_bytes": med([float(x) for x in d.bytes]),
            }
        big_n = max(pairs)
        if big_n != 10_000:
            ratios = [x / y for x, y in zip(dres[big_n].seconds, dres[10_000].seconds, strict=True)]
            out["delta_time_ratio"] = {
                "big": big_n,
                "small": 10_000,
                "ratio_samples": ratios,
                "median": med(ratios),
            }
        for pa, pb in pairs.values():
            pb.close()
            if pa is not a:
                pa.close()
        out["delta"] = deltas

        log("live latency ...")
        la, lb = wd.store("bench-la"), wd.store("bench-lb")
        p50s, p99s, maxs = [], [], []
        lat_all: list[float] = []
        for _ in range(args.live_repeat):
            lat = trio.run(
                lambda: live_latency(
                    la, lb, writes=args.writes, interval=args.interval, engine=engine
                )
            )
            qs = statistics.quantiles(lat, n=100)
            p50s.append(qs[49] * 1e3)
            p99s.append(qs[98] * 1e3)
            maxs.append(max(lat) * 1e3)
            lat_all += lat
        out["live"] = {
            "writes": args.writes,
            "interval_ms": args.interval * 1e3,
            "runs": args.live_repeat,
            "p50_ms": med(p50s),
            "p99_ms": med(p99s),
            "max_ms": max(maxs),
            "p50_ms_runs": p50s,
            "p99_ms_runs": p99s,
            "topology": "one process, two trio tasks, loopback TCP",
        }
        la.close()
        lb.close()

        if args.sweep:
            sweep = []
            for be in (250, 1000, 4000):
                for w in (2, 4, 8):
                    log(f"sweep max_batch_entries={be} window={w} ...")
                    skw = {"max_batch_entries": be, "window": w}
                    rs = full_sync_runs(runner, wd, a, n, args.sweep_repeat, skw)
                    sweep.append(
                        {
                            "max_batch_entries": be,
                            "window": w,
                            "entries_per_s": n / med([r.seconds for r in rs]),
                            "seconds": [r.seconds for r in rs],
                        }
                    )
            out["sweep"] = sweep

        if args.stages:
            log("timing the pipeline stages of a full sync ...")
            out["stages"] = stage_times(wd, a, args.batch)
        if args.profile:
            log("profiling one full sync ...")
            out["profile"] = profile_full_sync(runner, wd, a, kw)
        a.close()
        if not args.no_siblings:
            run_siblings(args, runner, out, wd, log)
        if not args.no_loop:
            run_loop_health(args, out, wd, log)
    finally:
        wd.close()
    return out


def run_headline(args: argparse.Namespace, out: dict[str, Any], log: Callable[[str], None]) -> None:
    """Issue 13's headline row (``sync_headline``): two processes, 100-byte values."""
    n = args.headline_n or (args.big_n if args.big else 100_000)

    def pycrdt_full(size: int, value: Callable[[int], Any]) -> float:
        return med(pycrdt_bench(size, 1, args.seed, value=value).full_seconds)

    log(f"headline: {n:,}-entry two-process full sync, {args.headline_repeat} paired run(s) ...")
    out["headline"] = sync_headline.run_headline(
        n, args.headline_repeat, pycrdt_full=pycrdt_full, profile=args.profile, log=log
    )


def run_loop_health(
    args: argparse.Namespace, out: dict[str, Any], wd: Workdir, log: Callable[[str], None]
) -> None:
    modes = {"both": (True, False), "true": (True,), "false": (False,)}[args.loop_sync_writes]
    log(
        f"loop health: {args.loop_n:,}-entry catch-up from a 2nd process, "
        f"{args.loop_repeat} run(s) per sync_writes mode ..."
    )
    out["loop_health"] = loop_health(
        wd,
        args.loop_n,
        repeat=args.loop_repeat,
        sync_modes=modes,
        session_options={"max_batch_entries": args.batch, "window": args.window},
        log=log,
    )


def verdicts(res: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Rows: (measure, crdt_kv, comparison, target, verdict)."""
    rows: list[tuple[str, str, str, str, str]] = []
    if "headline" in res:
        rows += sync_headline.headline_verdicts(res["headline"])
    if "full" in res:
        rows += sync_verdicts(res)
    if "siblings" in res:
        rows += siblings_verdicts(res["siblings"])
    if "loop_health" in res:
        rows += loop_verdicts(res["loop_health"])
    return rows


def loop_verdicts(lh: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The loop-health rows: targets for ``sync_writes=True``, the other mode for contrast."""
    rows: list[tuple[str, str, str, str, str]] = []
    idle = lh["idle"]
    for key in ("sync", "nosync"):
        if key not in lh:
            continue
        m = lh[key]
        runs = len(m["runs"])
        what = (
            f"loop wait, {lh['n']:,}-entry catch-up, sync_writes={m['sync_writes']} "
            f"({runs} run{'s' if runs > 1 else ''})"
        )
        per_run = ", ".join(f"{r['p50_ms']:.1f}" for r in m["runs"])
        figures = f"p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.1f} ms, max {m['max_ms']:.1f} ms"
        rate = f"{m['entries_per_s']:,.0f} entries/s; p50 per run {per_run} ms"
        if key == "sync":
            rows.append(
                (
                    what,
                    figures,
                    rate,
                    "loop wait p50 <= 10 ms",
                    "MET" if m["p50_ms"] <= 10 else "MISSED",
                )
            )
            rows.append(
                (
                    "  (same runs)",
                    f"max {m['max_ms']:.1f} ms (p99 {m['p99_ms']:.1f} ms)",
                    f"{sum(r['over_50ms'] for r in m['runs'])} of "
                    f"{sum(r['samples'] for r in m['runs']):,} waits over 50 ms; time-weighted "
                    f"p50 {m['tw_p50_ms']:.1f} ms, {m['share_in_waits_over_10ms']:.0%} of the "
                    "time in waits > 10 ms",
                    "loop wait max <= 50 ms",
                    "MET" if m["max_ms"] <= 50 else "MISSED",
                )
            )
        else:
            tw = (
                f"; time-weighted p50 {m['tw_p50_ms']:.1f} ms, "
                f"{m['share_in_waits_over_10ms']:.0%} of the time in waits > 10 ms"
            )
            rows.append((what, figures, rate + tw, "-", "-"))
    rows.append(
        (
            f"loop wait, idle ({idle['seconds']:.0f} s, no sync)",
            f"p50 {idle['p50_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms, "
            f"max {idle['max_ms']:.1f} ms",
            f"{idle['samples']:,} samples (the probe's noise floor)",
            "-",
            "-",
        )
    )
    return rows


def sync_verdicts(res: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str]] = []
    full, y = res["full"], res["pycrdt"]
    ok = full["entries_per_s"] >= 50_000
    rows.append(
        (
            f"full sync {full['n']:,} entries, 1 process",
            f"{full['entries_per_s']:,.0f} entries/s (CPU-bound rate "
            f"{full['cpu_entries_per_s']:,.0f}/s)",
            f"pycrdt {y['full_entries_per_s']:,.0f}/s "
            f"({full['entries_per_s'] / y['full_entries_per_s']:.2f}x)",
            ">= 50,000/s",
            "MET" if ok else "MISSED",
        )
    )
    if "full_two_procs" in res:
        f2 = res["full_two_procs"]
        rows.append(
            (
                "full sync, sender in 2nd process",
                f"{f2['entries_per_s']:,.0f} entries/s",
                f"{f2['entries_per_s'] / full['entries_per_s']:.2f}x of 1 process",
                ">= 50,000/s",
                "MET" if f2["entries_per_s"] >= 50_000 else "MISSED",
            )
        )
    if "full_big" in res:
        fb = res["full_big"]
        rows.append(
            (
                f"full sync {fb['n']:,} entries (1 run)",
                f"{fb['entries_per_s']:,.0f} entries/s",
                f"{fb['seconds']:.1f} s, {fb['bytes_per_entry']:.1f} B/entry",
                ">= 50,000/s",
                "MET" if fb["entries_per_s"] >= 50_000 else "MISSED",
            )
        )
    rows.append(
        (
            "full sync wire bytes / entry",
            f"{full['bytes_per_entry']:.1f} B",
            f"pycrdt {y['full_bytes_per_entry']:.1f} B "
            f"({full['bytes_per_entry'] / y['full_bytes_per_entry']:.2f}x)",
            "-",
            "-",
        )
    )
    # pycrdt's update grows every round (Yjs resends its whole delete set), so compare
    # with its smallest one, the first 100 changes after the full sync.
    y_bytes = min(y["delta_bytes"])
    y_ms = med(y["delta_seconds"]) * 1e3
    for key, d in res["delta"].items():
        n = int(key)
        ratio = d["median_bytes"] / y_bytes
        rows.append(
            (
                f"delta: {CHANGES} changed among {n:,}",
                f"{d['median_ms']:.1f} ms, {d['median_bytes']:,.0f} B",
                f"pycrdt {y_ms:.1f} ms, {y_bytes:,} B ({ratio:.2f}x bytes)",
                "bytes <= 1.2x pycrdt",
                "MET" if ratio <= 1.2 else "MISSED",
            )
        )
    dr = res.get("delta_time_ratio")
    if dr:
        big, small = res["delta"][str(dr["big"])], res["delta"][str(dr["small"])]
        rows.append(
            (
                f"delta time {dr['big']:,} vs {dr['small']:,}",
                f"{dr['median']:.2f}x (median of {len(dr['ratio_samples'])} paired rounds)",
                f"{big['median_ms']:.1f} / {small['median_ms']:.1f} ms",
                "<= 1.5x",
                "MET" if dr["median"] <= 1.5 else "MISSED",
            )
        )
    live = res["live"]
    rows.append(
        (
            f"live write-to-visible ({live['writes']} writes x {live['runs']})",
            f"p50 {live['p50_ms']:.2f} ms, p99 {live['p99_ms']:.2f} ms",
            f"max {live['max_ms']:.1f} ms",
            "p99 < 50 ms",
            "MET" if live["p99_ms"] < 50 else "MISSED",
        )
    )
    return rows


def print_report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, Console().width))
    t = Table(title=f"crdt_kv sync over loopback TCP, RocksDB ({res['engine']} engine)")
    for col in ("measure", "crdt_kv", "comparison", "target", "verdict"):
        t.add_column(col)
    for row in verdicts(res):
        style = {"MET": "green", "MISSED": "red"}.get(row[4], "")
        t.add_row(*row[:4], f"[{style}]{row[4]}[/]" if style else row[4])
    console.print(t)
    if "profile" in res.get("headline", {}):
        h = res["headline"]
        ht = Table(
            title=f"cProfile of one headline full sync ({h['n']:,} entries, "
            f"{h['profile']['wall_seconds']:.2f} s wall under the profiler): CPU seconds "
            "per process, all threads"
        )
        for col in ("where", "CPU s", "share of the side"):
            ht.add_column(col)
        for prow in sync_headline.profile_rows(h):
            ht.add_row(*prow)
        console.print(ht)
    if "delta" in res:
        d_first = {
            k: (round(v["first_round_ms"], 1), v["first_round_bytes"])
            for k, v in res["delta"].items()
        }
        console.print(f"first delta round after the full sync (ms, bytes): {d_first}")
        console.print(
            f"pycrdt delta bytes per round: {res['pycrdt']['delta_bytes']} "
            f"(+ {res['pycrdt']['state_vector_bytes']} B state vector)"
        )
    if "loop_health" in res:
        lh = res["loop_health"]
        lt = Table(
            title=f"loop wait per run: {lh['n']:,}-entry catch-up, probe sleeping "
            f"{lh['probe_sleep_ms']:g} ms (ms past its deadline)"
        )
        cols = ("sync_writes", "entries/s", "samples", "p50", "p99", "max", ">10 ms", ">50 ms")
        for col in (*cols, "tw p50", "time in >10 ms"):
            lt.add_column(col, justify="right")
        for key in ("sync", "nosync"):
            for r in lh.get(key, {}).get("runs", []):
                lt.add_row(
                    str(lh[key]["sync_writes"]),
                    f"{r['entries_per_s']:,.0f}",
                    f"{r['samples']:,}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['max_ms']:.1f}",
                    str(r["over_10ms"]),
                    str(r["over_50ms"]),
                    f"{r['tw_p50_ms']:.1f}",
                    f"{r['share_in_waits_over_10ms']:.0%}",
                )
        console.print(lt)
    if "sweep" in res:
        st = Table(title="full sync: max_batch_entries x window (entries/s, median)")
        st.add_column("max_batch_entries")
        for w in (2, 4, 8):
            st.add_column(f"window {w}")
        for be in (250, 1000, 4000):
            cells = [
                f"{s['entries_per_s']:,.0f}" for s in res["sweep"] if s["max_batch_entries"] == be
            ]
            st.add_row(str(be), *cells)
        console.print(st)
    if "stages" in res:
        stt = Table(title="full sync stages, each timed alone (main-thread CPU seconds)")
        stt.add_column("stage")
        stt.add_column("s", justify="right")
        for label, secs in res["stages"].items():
            stt.add_row(label, f"{secs:.3f}")
        console.print(stt)
    if "profile" in res:
        p = res["profile"]
        pt = Table(title=f"cProfile of one full sync ({p['wall_seconds_profiled']:.2f} s profiled)")
        pt.add_column("where")
        pt.add_column("cumulative s")
        pt.add_column("share")
        for label, secs in p["buckets"].items():
            pt.add_row(label, f"{secs:.2f}", f"{secs / p['wall_seconds_profiled']:.0%}")
        console.print(pt)
        console.print(p["top_tottime"])
    console.print(
        f"{res['date']} | {res['machine']} | load {res['loadavg_1m_start']:.1f} -> "
        f"{res['loadavg_1m_end']:.1f} | {res['command']}"
    )


def main(argv: list[str] | None = None) -> int:
    has_replicate = hasattr(crdt_kv, "replicate")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--full", type=int, default=100_000, help="entries in the full sync")
    ap.add_argument("--big", action="store_true", help="add the --big-n entry delta case")
    ap.add_argument("--big-n", type=int, default=1_000_000, help="entries of the big store")
    ap.add_argument(
        "--delta-rounds", type=int, default=11, help="paired delta rounds (median reported)"
    )
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    ap.add_argument("--writes", type=int, default=1000, help="live writes per run")
    ap.add_argument("--interval", type=float, default=0.002, help="seconds between live writes")
    ap.add_argument("--live-repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000, help="max_batch_entries")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument(
        "--engine",
        choices=("raw", "replicate"),
        default="replicate" if has_replicate else "raw",
        help="crdt_kv.replicate, or the raw Session pump in this file",
    )
    ap.add_argument(
        "--headline-n",
        type=int,
        default=None,
        help="entries of the headline two-process sync (default 100,000; --big-n with --big)",
    )
    ap.add_argument("--headline-repeat", type=int, default=3, help="paired headline runs")
    ap.add_argument("--headline-only", action="store_true", help="run only the headline row")
    ap.add_argument("--no-headline", action="store_true", help="skip the headline row")
    ap.add_argument("--no-procs", action="store_true", help="skip the two-process full sync")
    ap.add_argument("--sweep", action="store_true", help="max_batch_entries x window sweep")
    ap.add_argument("--sweep-repeat", type=int, default=3)
    ap.add_argument(
        "--profile", action="store_true", help="cProfile one full sync (and the headline)"
    )
    ap.add_argument(
        "--stages", action="store_true", help="CPU seconds of each full-sync stage, no network"
    )
    ap.add_argument(
        "--loop-only", action="store_true", help="run only the event-loop health measurement"
    )
    ap.add_argument("--no-loop", action="store_true", help="skip the event-loop health measurement")
    ap.add_argument(
        "--loop-n", type=int, default=100_000, help="entries in the loop-health catch-up"
    )
    ap.add_argument("--loop-repeat", type=int, default=3, help="loop-health runs per mode")
    ap.add_argument(
        "--loop-sync-writes",
        choices=("both", "true", "false"),
        default="both",
        help="receiver sync_writes for the loop-health runs (targets apply to true)",
    )
    ap.add_argument(
        "--siblings-only", action="store_true", help="run only the siblings vs lww full syncs"
    )
    ap.add_argument("--no-siblings", action="store_true", help="skip the siblings vs lww syncs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.engine == "replicate" and not has_replicate:
        ap.error("crdt_kv.replicate does not exist yet; use --engine raw")
    res = run(args)
    res["loadavg_1m_end"] = os.getloadavg()[0]
    if args.json:
        res["verdicts"] = [
            dict(zip(("measure", "crdt_kv", "comparison", "target", "verdict"), r, strict=True))
            for r in verdicts(res)
        ]
        print(json.dumps(res, indent=2, default=str))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
