"""A node's memory and a real peer's live latency under hostile connections (issue 12,
"Bounded memory": 256 hostile connections each sending the worst frame they can must raise
the node's RSS by at most 256 MiB while a real peer keeps syncing with live p99 <= 50 ms).

Setup, all on loopback:

- the target T is a real ``crdt-kv serve`` process (RocksDB store in a temp dir preloaded
  with ``--preload-keys`` 1 KiB values, live on, metrics served); its RSS is read from
  ``/proc/<pid>/status`` every 100 ms (VmRSS; VmHWM at the end), its ``/metrics`` scraped
  every 2 s, and its CPU time and time spent runnable but waiting for a CPU (schedstat)
  taken over the attack, to tell a starved node from a slow one;
- two real peers P and Q run here (RocksDB stores, ``crdt_kv.serve``, live, each with only
  T as peer); after they caught up with T, P writes a key every ``--interval-ms`` holding
  its send time and Q's ``on_change`` hook stamps its arrival: P -> T -> Q latency, before,
  during and after the attack; after it, up to ``--drain`` seconds for the last writes
  (one never seen counts as infinitely late);
- the hostile load runs in a separate process (this script with ``--hostile``):
  ``--connections`` connections to T for ``--seconds``, each reconnecting when dropped, the
  kinds (``--kinds``) dealt out round robin:

  ``prehello``  a 16 KiB frame (the pre-Hello limit) of 16,382 empty arrays, no Hello;
  ``pin``       a valid live Hello, then an 8 MiB frame header and as many bytes as T
                reads, then a byte every 2 s: memory pinned by a frame never finished;
  ``slowread``  a valid live Hello and a Request from sequence 0, then nothing is ever
                read or acknowledged: T's log batches pile up towards us;
  ``rows``      a complete 8 MiB batch of 7-byte rows in an indefinite array;
  ``nested``    a complete 8 MiB batch whose one row's key is an array of ~8 million
                empty arrays;
  ``siblings``  a complete 8 MiB batch of one row with ~1.7 million tiny siblings;
  ``context``   ... of one row with ~2.1 million causal-context entries;
  ``chunks``    ... of one row whose key is an indefinite byte string of ~8 million empty
                chunks;
  ``peers``     ... whose peer table holds ~2.8 million two-character peer ids.

  Every connection uses a fresh peer id (``--ids slot``: one per slot, reused). Kinds
  are names, or ``all`` (default), ``framing`` (prehello, pin, slowread, rows, nested)
  or ``items`` (the other four: frames whose every few bytes decode to an object).

  Source addresses (``--sources``): attackers are other hosts than the real peers, so by
  default (``spread``) hostile slot ``i`` binds its sockets to 127.0.0.2 + ``i``
  (127.0.0.2, 127.0.0.3, ..., 127.0.1.1 for 256 slots; Linux routes all of 127/8 to lo)
  while P and Q connect from 127.0.0.1: the honest threat model, and the hardest case for
  T's per-source penalties (:mod:`crdt_kv.net.penalty`), which must learn every attacker
  separately. ``one`` binds every slot to 127.0.0.2 (one hostile host); ``shared`` leaves
  them on 127.0.0.1 beside P and Q (T cannot tell them apart by address: what that costs
  the real peers when their connections break).

Prints a table (figure, measured, target, verdict) and exits 1 if a target is missed: RSS
increase (peak VmRSS from the attack's start to the end of the run, minus VmRSS just
before the attack) <= 256 MiB, live p99 during the attack <= 50 ms, no write lost.

Run: ``.venv/bin/python bench/bench_hostile.py [--connections 256] [--seconds 60]
[--kinds all] [--ids connection] [--sources spread] [--quick] [--json]``; ``--quick`` is a
~10 s smoke run.
Figures and what bounds them: ``docs/performance.md``, "Hostile connections".
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from procstat import cpu_seconds, proc_status, stop_process

import crdt_kv
from crdt_kv.protocol.framing import DEFAULT_MAX_FRAME_BYTES, FRAME_LIMIT, HELLO_MAX_FRAME_BYTES
from crdt_kv.protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    Ack,
    FrameDecoder,
    Hello,
    Request,
    decode_message,
    encode_frame,
)

MIB = 1 << 20
RSS_TARGET_MIB = 256
P99_TARGET_MS = 50.0
SLICE_S = 10
"""The attack's latency is also reported per slice of this many seconds: where the tail is."""
FRAMING_KINDS = ("prehello", "pin", "slowread", "rows", "nested")
ITEM_KINDS = ("siblings", "context", "chunks", "peers")
KINDS = FRAMING_KINDS + ITEM_KINDS
_TRANSPORT = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


# --- hostile frames ------------------------------------------------------------------------


def head(major: int, n: int) -> bytes:
    """A CBOR item head in preferred serialisation."""
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError(n)


ARRAY, BYTES, TEXT = 4, 2, 3
ONE_PEER = head(ARRAY, 1) + head(TEXT, 1) + b"p"
KEY_K = head(BYTES, 1) + b"k"
STAMP_PEER_NULL = b"\x00\x00\x00\xf6"  # dwall 0, logical 0, peer index 0, value null


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


Body = tuple[int, bytes]
"""A hostile batch: how many sequences it spans, and its payload after ``to_seq``."""


def batch(span: int, peers: bytes, entries: bytes) -> Body:
    """A batch ``[2, from, from + span, false, 0, peers, entries]``, sent by
    :func:`batch_header` from wherever T's cursor for us is (0 for a new peer id)."""
    return span, b"\xf4\x00" + peers + entries


def batch_header(from_seq: int, body: Body) -> bytes:
    """The length prefix and first items of ``body`` sent from ``from_seq``."""
    span, rest = body
    start = head(ARRAY, 7) + b"\x02" + head(0, from_seq) + head(0, from_seq + span)
    size = len(start) + len(rest)
    assert size <= DEFAULT_MAX_FRAME_BYTES, size
    return struct.pack(">I", size) + start


def fit(unit: int, fixed: int) -> int:
    """How many ``unit``-byte items fit an 8 MiB payload beside ``fixed`` bytes."""
    return (DEFAULT_MAX_FRAME_BYTES - fixed - 32) // unit


def two_char_ids(n: int) -> bytes:
    """``n`` CBOR texts of two characters (each decodes to a new 51-byte str)."""
    alphabet = [chr(c) for c in range(33, 127)]
    ids = [head(TEXT, 2) + (a + b).encode() for a in alphabet for b in alphabet]
    return b"".join(ids[i % len(ids)] for i in range(n))


ONE_ROW_7 = b"\x81\x87" + KEY_K + STAMP_PEER_NULL  # entries [[key, stamp, peer, null, ...
SIBLING = b"\x84" + STAMP_PEER_NULL  # [dwall, logical, peer index, null]
CONTEXT_ENTRY = b"\x83\x00\x00\x00"  # [peer index, dwall, logical]


def rows_body() -> Body:
    row = b"\x85" + KEY_K + STAMP_PEER_NULL
    return batch(1 << 40, ONE_PEER, b"\x9f" + row * fit(len(row), 20) + b"\xff")


def nested_body() -> Body:
    n = fit(1, 30)
    return batch(1, ONE_PEER, b"\x81\x85" + head(ARRAY, n) + b"\x80" * n + STAMP_PEER_NULL)


def siblings_body() -> Body:
    n = fit(len(SIBLING), 40)
    return batch(1, ONE_PEER, ONE_ROW_7 + b"\x80" + head(ARRAY, n) + SIBLING * n)


def context_body() -> Body:
    n = fit(len(CONTEXT_ENTRY), 40)
    return batch(1, ONE_PEER, ONE_ROW_7 + head(ARRAY, n) + CONTEXT_ENTRY * n + b"\x80")


def chunks_body() -> Body:
    key = b"\x5f" + b"\x40" * fit(1, 30) + b"\xff"  # an indefinite string of empty chunks
    return batch(1, ONE_PEER, b"\x81\x9f" + key + STAMP_PEER_NULL + b"\xff")


def peers_body() -> Body:
    n = fit(3, 20)
    return batch(1, head(ARRAY, n) + two_char_ids(n), b"\x80")


PREHELLO = frame(b"\x9f" + b"\x80" * (HELLO_MAX_FRAME_BYTES - 2) + b"\xff")
"""The largest frame T reads before a Hello, all tiny items."""

BODIES: dict[str, Callable[[], Body]] = {
    "rows": rows_body,
    "nested": nested_body,
    "siblings": siblings_body,
    "context": context_body,
    "chunks": chunks_body,
    "peers": peers_body,
}


def hostile_bodies(kinds: set[str]) -> dict[str, Body]:
    """The batches the ``kinds`` send, built once."""
    return {k: BODIES[k]() for k in kinds if k in BODIES}


def hello(peer_id: str, *, send: bool, receive: bool) -> bytes:
    return encode_frame(
        Hello(
            version=PROTOCOL_VERSION,
            cluster_id="default",
            peer_id=peer_id,
            incarnation=os.urandom(16),
            hlc=int(time.time() * 1000) << 16,
            last_seq=0,
            send=send,
            receive=receive,
            live=True,
            key_encoding="utf-8",
            value_encoding="cbor",
            max_batch_entries=1000,
        )
    )


# --- the hostile process -------------------------------------------------------------------


class Conn:
    """One hostile connection: what T said (Hello, Request, Acks, Abort), and whether it
    closed the connection."""

    def __init__(self, stream: trio.SocketStream, stats: Counter[str]) -> None:
        self.stream = stream
        self.stats = stats
        self.hello = trio.Event()
        self.request = trio.Event()
        self.closed = trio.Event()
        self.ack = trio.Event()
        self.acked = 0

    async def read(self, stop_after_hello: bool = False) -> None:
        """Read T's frames until it closes (or, with ``stop_after_hello``, until its Hello)."""
        decoder = FrameDecoder(max_frame_bytes=FRAME_LIMIT)
        try:
            while data := await self.stream.receive_some(1 << 16):
                for payload in decoder.feed(data):
                    self._seen(payload)
                if stop_after_hello and self.hello.is_set():
                    return
        except _TRANSPORT:
            pass
        self.closed.set()

    def _seen(self, payload: bytes) -> None:
        kind = payload[1] if len(payload) > 1 else -1
        if kind == 0:
            self.hello.set()
        elif kind in (1, 3, 4):
            msg = decode_message(payload)
            if isinstance(msg, Request):  # our batches start at T's cursor for us
                self.acked = msg.since
                self.request.set()
            elif isinstance(msg, Ack):
                self.acked = msg.seq
                self.ack.set()
            elif isinstance(msg, Abort):
                self.stats[f"abort code {msg.code}"] += 1

    def tcp_open(self) -> bool:
        """T has not closed the connection (TCP state ESTABLISHED), without reading."""
        info = self.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        return info[0] == 1


Attack = Callable[[Conn, dict[str, Body], str], Awaitable[None]]
"""Runs one kind of attack on a connection (T's replies are read meanwhile); it may
return or wait forever once T closed the connection."""


async def attack_prehello(conn: Conn, bodies: dict[str, Body], peer: str) -> None:
    await conn.stream.send_all(PREHELLO)


async def attack_pin(conn: Conn, bodies: dict[str, Body], peer: str) -> None:
    await conn.stream.send_all(hello(peer, send=True, receive=False))
    await conn.request.wait()
    await conn.stream.send_all(struct.pack(">I", DEFAULT_MAX_FRAME_BYTES))
    chunk, sent = bytes(64 << 10), 0
    while sent + len(chunk) < DEFAULT_MAX_FRAME_BYTES:
        with trio.move_on_after(1.0):
            await conn.stream.send_all(chunk)
            sent += len(chunk)
            continue
        break  # T stopped reading (its budget) or the kernel buffers are full: trickle
    conn.stats["pin bytes sent"] += sent
    while sent < DEFAULT_MAX_FRAME_BYTES - 1:
        await trio.sleep(2.0)
        with trio.move_on_after(1.0):
            await conn.stream.send_all(b"\x00")
            sent += 1


async def attack_slowread(conn: Conn, bodies: dict[str, Body], peer: str) -> None:
    await conn.stream.send_all(hello(peer, send=False, receive=True))
    await conn.stream.send_all(encode_frame(Request(0, True)))
    while conn.tcp_open():
        await trio.sleep(1.0)
    conn.closed.set()


def attack_batch(kind: str) -> Attack:
    """Send the kind's batch from T's cursor; again from the acknowledged sequence each
    time T applies it (it may decode without fault), until T closes the connection."""

    async def attack(conn: Conn, bodies: dict[str, Body], peer: str) -> None:
        await conn.stream.send_all(hello(peer, send=True, receive=False))
        await conn.request.wait()
        body = bodies[kind]
        while True:
            conn.ack = trio.Event()
            await conn.stream.send_all(batch_header(conn.acked, body))
            await conn.stream.send_all(body[1])
            conn.stats["batches sent"] += 1
            await conn.ack.wait()
            conn.stats["batches acked"] += 1

    return attack


ATTACKS: dict[str, Attack] = {
    "prehello": attack_prehello,
    "pin": attack_pin,
    "slowread": attack_slowread,
    **{k: attack_batch(k) for k in ("rows", "nested", *ITEM_KINDS)},
}


async def one_connection(
    address: tuple[str, int],
    kind: str,
    peer: str,
    bodies: dict[str, Body],
    st: Counter[str],
    source: str | None = None,
) -> None:
    """Connect, attack, and count how it ended: ``refused`` (closed before T's Hello came)
    or ``dropped`` (T closed it after its Hello)."""
    try:
        stream = await trio.open_tcp_stream(*address, local_address=source)
    except OSError:
        st["connect failed"] += 1
        return
    st["connections"] += 1
    conn = Conn(stream, st)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.read, kind == "slowread")

            async def attack() -> None:
                try:
                    await ATTACKS[kind](conn, bodies, peer)
                except _TRANSPORT:  # T reset the connection
                    conn.closed.set()

            nursery.start_soon(attack)
            await conn.closed.wait()
            nursery.cancel_scope.cancel()
    finally:
        if conn.closed.is_set():  # else the attack's time is up
            st["dropped" if conn.hello.is_set() else "refused"] += 1
        await trio.aclose_forcefully(stream)


def source_address(sources: str, slot: int) -> str | None:
    """The local address hostile ``slot`` binds to (see ``--sources`` in the doc)."""
    if sources == "shared":
        return None
    return str(ipaddress.IPv4Address("127.0.0.2") + (slot if sources == "spread" else 0))


async def hostile_main(
    address: tuple[str, int],
    connections: int,
    seconds: float,
    kinds: list[str],
    ids: str,
    sources: str = "spread",
) -> dict[str, dict[str, int]]:
    """Attack for ``seconds``; the counts per kind. ``ids``: ``connection`` (a new peer id
    for every connection) or ``slot`` (one per slot, reused when it reconnects);
    ``sources``: ``spread``, ``one`` or ``shared`` (the module doc)."""
    bodies = hostile_bodies(set(kinds))
    stats: dict[str, Counter[str]] = {k: Counter() for k in kinds}
    print("attacking", flush=True)

    async def slot(i: int) -> None:
        kind = kinds[i % len(kinds)]
        gen = 0
        while True:
            gen += 1
            peer = f"hostile-{i}-{gen}" if ids == "connection" else f"hostile-{i}"
            src = source_address(sources, i)
            await one_connection(address, kind, peer, bodies, stats[kind], src)
            await trio.sleep(0.05)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(slot, i)
    return {k: dict(v) for k, v in stats.items()}


def run_hostile(args: argparse.Namespace) -> int:
    """``--hostile``: attack ``--target`` and print the per-kind counts as JSON."""
    host, _, port = args.target.rpartition(":")
    stats: dict[str, Any] = trio.run(
        hostile_main,
        (host, int(port)),
        args.connections,
        args.seconds,
        args.kinds,
        args.ids,
        args.sources,
    )
    stats["cpu_seconds"] = time.process_time()
    print(json.dumps(stats), flush=True)
    return 0


# --- the target process and its measurements ---------------------------------------------


@dataclass
class Target:
    """T: a ``crdt-kv serve`` subprocess."""

    proc: subprocess.Popen[str]
    address: str
    metrics_url: str
    log_path: str


def preload(path: str, keys: int) -> None:
    """T's store: ``keys`` 1 KiB values, so a reader from sequence 0 gets megabytes."""
    store = crdt_kv.open(path, peer_id="T")
    try:
        for lo in range(0, keys, 1000):
            with store.batch() as b:
                for i in range(lo, min(keys, lo + 1000)):
                    b.put(f"pre/{i:06d}", "x" * 1000)
    finally:
        store.close()


def start_target(workdir: str, preload_keys: int, profile: str | None = None) -> Target:
    """Start T; with ``profile``, under cProfile writing its stats to that file at exit."""
    path = os.path.join(workdir, "T")
    preload(path, preload_keys)
    log_path = os.path.join(workdir, "T.log")
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += ["-m", "crdt_kv.cli", "serve", "--path", path, "--peer-id", "T"]
    cmd += ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--live"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    address = url = ""
    assert proc.stdout is not None
    while not (address and url):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"crdt-kv serve exited ({proc.wait()}); see {log_path}")
        if line.startswith("listening on "):
            address = line.split()[-1]
        elif line.startswith("metrics on "):
            url = line.split()[-1]
    return Target(proc, address, url, log_path)


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return math.nan
    return total / 1e9


def machine_busy() -> tuple[int, int]:
    """``(busy, total)`` jiffies of every core so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


WATCHED = (
    "crdt_kv_node_buffered_bytes",
    "crdt_kv_node_budget_waits_total",
    "crdt_kv_node_connections_accepted_total",
    "crdt_kv_node_connections_refused_total",
    'crdt_kv_node_peer_refusals_total{reason="penalised"}',
    "crdt_kv_node_penalised_sources",
)


@dataclass
class Sampler:
    """Samples T's VmRSS every 100 ms and scrapes its metrics every 2 s, on two threads
    (a scrape waits for T's event loop; the RSS samples must not)."""

    pid: int
    metrics_url: str
    rss: list[tuple[float, int]] = field(default_factory=list)
    metrics: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    cpu: list[tuple[float, float, tuple[int, int]]] = field(default_factory=list)
    scrape_failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for fn in (self._sample_rss, self._scrape):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _sample_rss(self) -> None:
        while not self._stop.wait(0.1):
            now = time.perf_counter()
            self.rss.append((now, proc_status(self.pid, "VmRSS")))
            self.cpu.append((now, cpu_seconds(self.pid), machine_busy()))

    def cpu_between(self, t0: float, t1: float) -> tuple[float, float]:
        """T's CPU seconds and the machine's busy fraction (all cores) in ``[t0, t1]``."""
        inside = [c for c in self.cpu if t0 <= c[0] <= t1]
        if len(inside) < 2:
            return math.nan, math.nan
        (_, c0, (b0, n0)), (_, c1, (b1, n1)) = inside[0], inside[-1]
        return c1 - c0, (b1 - b0) / (n1 - n0) if n1 > n0 else math.nan

    def _scrape(self) -> None:
        while not self._stop.wait(2.0):
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=2.0) as resp:
                    text = resp.read().decode()
            except OSError:
                self.scrape_failures += 1
                continue
            values: dict[str, float] = {}
            for line in text.splitlines():
                name, _, rest = line.partition(" ")
                if name in WATCHED:
                    values[name] = float(rest)
            self.metrics.append((time.perf_counter(), values))

    def rss_between(self, t0: float, t1: float) -> list[int]:
        return [v for t, v in self.rss if t0 <= t <= t1 and v]

    def metric_max(self, name: str) -> float:
        return max((m.get(name, 0.0) for _, m in self.metrics), default=math.nan)


# --- the real peers -------------------------------------------------------------------------


@dataclass
class Latency:
    """P's writes (key -> send time) and when Q saw each (``perf_counter`` seconds)."""

    put_at: dict[str, float] = field(default_factory=dict)
    seen_at: dict[str, float] = field(default_factory=dict)

    def seen(self, entry: Any) -> None:
        """Q's ``on_change`` hook (maybe on its storage thread): stamp the first arrival."""
        key = entry.key
        if key in self.put_at and key not in self.seen_at:
            self.seen_at[key] = time.perf_counter()

    def between(self, t0: float, t1: float) -> list[float]:
        """Latencies of the writes sent in ``[t0, t1)``, a write never seen as infinite."""
        return [self.seen_at.get(k, math.inf) - t for k, t in self.put_at.items() if t0 <= t < t1]


async def writer(p: Any, lat: Latency, interval: float) -> None:
    """Write a key holding its send time every ``interval`` seconds."""
    i = 0
    while True:
        key = f"lat/{i:06d}"
        now = time.perf_counter()
        lat.put_at[key] = now
        p.put(key, now)
        i += 1
        await trio.sleep(interval)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.1)
        return
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def spawn_hostile(args: argparse.Namespace, address: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--hostile", "--target", address]
    cmd += ["--connections", str(args.connections), "--seconds", str(args.seconds)]
    cmd += ["--kinds", ",".join(args.kinds), "--ids", args.ids, "--sources", args.sources]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def hostile_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the hostile process failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def measure(
    args: argparse.Namespace, target: Target, workdir: str, procs: list[subprocess.Popen[str]]
) -> dict[str, Any]:
    """Run P and Q against T: catch up, write before, during and after the attack."""
    p = crdt_kv.open(os.path.join(workdir, "P"), peer_id="P")
    q = crdt_kv.open(os.path.join(workdir, "Q"), peer_id="Q")
    lat = Latency()
    unsubscribe = q.on_change(lat.seen)
    out: dict[str, Any] = {"latency": lat}
    last = f"pre/{args.preload_keys - 1:06d}"
    try:
        async with (
            crdt_kv.serve(p, peers=[target.address]),
            crdt_kv.serve(q, peers=[target.address]),
        ):
            await wait_for(lambda: p.get(last) and q.get(last), 600, "P and Q to catch up")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, p, lat, args.interval_ms / 1000)
                await trio.sleep(args.before)
                hostile = spawn_hostile(args, target.address)
                procs.append(hostile)
                assert hostile.stdout is not None
                await trio.to_thread.run_sync(hostile.stdout.readline)
                out["attack_start"] = time.perf_counter()
                out["cpu_start"] = cpu_seconds(target.proc.pid)
                out["wait_start"] = runqueue_wait_seconds(target.proc.pid)
                own = time.process_time()
                timeout = args.seconds + 120
                out["hostile"] = await trio.to_thread.run_sync(hostile_result, hostile, timeout)
                out["attack_end"] = time.perf_counter()
                out["cpu_end"] = cpu_seconds(target.proc.pid)
                out["wait_end"] = runqueue_wait_seconds(target.proc.pid)
                out["bench_cpu"] = time.process_time() - own
                await trio.sleep(args.after)
                nursery.cancel_scope.cancel()
            done = lambda: len(lat.seen_at) == len(lat.put_at)  # noqa: E731
            with contextlib.suppress(RuntimeError):
                await wait_for(done, args.drain, "the last writes")
    finally:
        out["end"] = time.perf_counter()
        unsubscribe()
        p.close()
        q.close()
    return out


# --- the report -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``inf`` when too many writes were never seen)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(v: float) -> str:
    return "never" if v == math.inf else f"{v * 1000:.1f} ms"


def mib(v: float) -> str:
    return f"{v / MIB:.1f} MiB"


def figures(
    args: argparse.Namespace, m: dict[str, Any], sampler: Sampler, hwm: int
) -> dict[str, Any]:
    """Every figure of the run, plain numbers (bytes, seconds)."""
    lat: Latency = m["latency"]
    t0, t1, end = m["attack_start"], m["attack_end"], m["end"]
    before = sampler.rss_between(t0 - 1.0, t0)
    peak = max(sampler.rss_between(t0, end), default=0)
    phases = {
        "before": lat.between(0.0, t0),
        "attack": lat.between(t0, t1),
        "after": lat.between(t1, math.inf),
    }
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("hostile", "target")},
        "rss_before": max(before, default=0),
        "rss_peak": peak,
        "rss_increase": peak - max(before, default=0),
        "vmhwm": hwm,
        "attack_seconds": t1 - t0,
        "target_cpu_seconds": m["cpu_end"] - m["cpu_start"],
        "target_runqueue_wait_seconds": m["wait_end"] - m["wait_start"],
        "bench_cpu_seconds": m["bench_cpu"],
        "latency": {
            phase: {
                "writes": len(v),
                "lost": sum(1 for x in v if x == math.inf),
                "p50": pct(v, 0.5),
                "p99": pct(v, 0.99),
                "max": max(v, default=math.nan),
            }
            for phase, v in phases.items()
        },
        "attack_slices": {
            f"{a:.0f}-{min(a + SLICE_S, t1 - t0):.0f} s": {
                "writes": len(v),
                "p99": pct(v, 0.99),
                "max": max(v, default=math.nan),
                "over_target": sum(1 for x in v if x * 1000 > P99_TARGET_MS),
                "target_cpu": cpu[0],
                "machine_busy": cpu[1],
            }
            for a in range(0, math.ceil(t1 - t0), SLICE_S)
            for v in [lat.between(t0 + a, min(t0 + a + SLICE_S, t1))]
            for cpu in [sampler.cpu_between(t0 + a, min(t0 + a + SLICE_S, t1))]
            if v
        },
        "buffered_bytes_max": sampler.metric_max("crdt_kv_node_buffered_bytes"),
        "budget_waits": sampler.metric_max("crdt_kv_node_budget_waits_total"),
        "accepted": sampler.metric_max("crdt_kv_node_connections_accepted_total"),
        "refused_too_many": sampler.metric_max("crdt_kv_node_connections_refused_total"),
        "refused_penalised": sampler.metric_max(
            'crdt_kv_node_peer_refusals_total{reason="penalised"}'
        ),
        "penalised_sources": sampler.metric_max("crdt_kv_node_penalised_sources"),
        "scrapes": len(sampler.metrics),
        "scrape_failures": sampler.scrape_failures,
        "hostile": m["hostile"],
        "loadavg": os.getloadavg(),
    }


def report(f: dict[str, Any]) -> bool:
    """Print the tables; True if every target was met."""
    a = f["latency"]["attack"]
    lost = sum(ph["lost"] for ph in f["latency"].values())
    checks = [
        (
            "T RSS increase (peak - before)",
            mib(f["rss_increase"]),
            f"<= {RSS_TARGET_MIB} MiB",
            f["rss_increase"] <= RSS_TARGET_MIB * MIB,
        ),
        (
            "live p99 during the attack",
            ms(a["p99"]),
            f"<= {P99_TARGET_MS:g} ms",
            a["p99"] * 1000 <= P99_TARGET_MS,
        ),
        ("writes never seen by Q", f"{lost}", "0", lost == 0),
    ]
    print(f"\n{'figure':<44} {'measured':>14}  {'target':>12}  verdict")
    for name, value, target, ok in checks:
        print(f"{name:<44} {value:>14}  {target:>12}  {'met' if ok else 'MISSED'}")
    info = [
        ("T RSS just before the attack", mib(f["rss_before"])),
        ("T RSS peak (VmRSS, 100 ms samples)", mib(f["rss_peak"])),
        ("T VmHWM at the end", mib(f["vmhwm"])),
        ("T CPU s / attack s", f"{f['target_cpu_seconds']:.1f} / {f['attack_seconds']:.1f}"),
        ("T runnable but waiting for a CPU, s", f"{f['target_runqueue_wait_seconds']:.1f}"),
        ("hostile process CPU s", f"{f['hostile'].get('cpu_seconds', math.nan):.1f}"),
        ("this process's CPU s (P, Q, sampling)", f"{f['bench_cpu_seconds']:.1f}"),
        ("crdt_kv_node_buffered_bytes, max scraped", mib(f["buffered_bytes_max"])),
        ("crdt_kv_node_budget_waits_total", f"{f['budget_waits']:.0f}"),
        (
            "T connections accepted / refused (full, dup.)",
            f"{f['accepted']:.0f} / {f['refused_too_many']:.0f}",
        ),
        (
            "T connections closed unread (penalised)",
            f"{f['refused_penalised']:.0f} ({f['penalised_sources']:.0f} sources)",
        ),
        ("metrics scrapes ok / failed (2 s timeout)", f"{f['scrapes']} / {f['scrape_failures']}"),
        ("load average (1, 5, 15 min) at the end", " ".join(f"{x:.1f}" for x in f["loadavg"])),
    ]
    for name, value in info:
        print(f"{name:<44} {value:>14}")
    heads = ("writes", "lost", "p50", "p99", "max")
    print(f"\n{'live latency P -> T -> Q':<26} " + " ".join(f"{h:>10}" for h in heads))
    for phase, ph in f["latency"].items():
        cells = (ph["writes"], ph["lost"], ms(ph["p50"]), ms(ph["p99"]), ms(ph["max"]))
        print(f"{phase:<26} " + " ".join(f"{c:>10}" for c in cells))
    heads = ("writes", "p99", "max", f"> {P99_TARGET_MS:g} ms", "T CPU s", "all busy")
    print(f"\n{'the attack, by slice':<26} " + " ".join(f"{h:>10}" for h in heads))
    for name, sl in f["attack_slices"].items():
        cells = (sl["writes"], ms(sl["p99"]), ms(sl["max"]), sl["over_target"])
        cells += (f"{sl['target_cpu']:.1f}", f"{sl['machine_busy']:.0%}")
        print(f"{name:<26} " + " ".join(f"{c:>10}" for c in cells))
    cols = ("connections", "dropped", "refused", "connect failed")
    print(f"\n{'hostile kind':<12} " + " ".join(f"{c:>14}" for c in cols) + "  other")
    for kind, st in f["hostile"].items():
        if not isinstance(st, dict):
            continue
        other = ", ".join(f"{k}: {v}" for k, v in sorted(st.items()) if k not in cols)
        print(f"{kind:<12} " + " ".join(f"{st.get(c, 0):>14}" for c in cols) + f"  {other}")
    return all(ok for *_, ok in checks)


# --- main -----------------------------------------------------------------------------------


def parse_kinds(text: str) -> list[str]:
    groups = {"all": KINDS, "framing": FRAMING_KINDS, "items": ITEM_KINDS}
    kinds: list[str] = []
    for name in text.split(","):
        for k in groups.get(name, (name,)):
            if k not in KINDS:
                raise argparse.ArgumentTypeError(f"unknown kind {k!r}; known: {', '.join(KINDS)}")
            if k not in kinds:
                kinds.append(k)
    return kinds


def run_bench(args: argparse.Namespace) -> int:
    workdir = tempfile.mkdtemp(prefix="bench_hostile_")
    procs: list[subprocess.Popen[str]] = []
    sampler: Sampler | None = None
    try:
        target = start_target(workdir, args.preload_keys, args.profile_target)
        procs.append(target.proc)
        sampler = Sampler(target.proc.pid, target.metrics_url)
        sampler.start()
        print(
            f"T (pid {target.proc.pid}) on {target.address}; {args.connections} hostile "
            f"connections for {args.seconds:g} s: {', '.join(args.kinds)}",
            flush=True,
        )
        m = trio.run(measure, args, target, workdir, procs)
        hwm = proc_status(target.proc.pid, "VmHWM")
        if target.proc.poll() is not None:
            raise RuntimeError(f"T exited with {target.proc.returncode}; see its log")
        sampler.stop()
        f = figures(args, m, sampler, hwm)
    finally:
        if sampler is not None:
            sampler.stop()
        for proc in reversed(procs):
            stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    ok = report(f)
    if args.json:
        print(json.dumps(f, default=str))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=60.0, help="attack duration")
    ap.add_argument("--kinds", type=parse_kinds, default=list(KINDS), help="see the doc")
    ap.add_argument(
        "--ids",
        choices=("connection", "slot"),
        default="connection",
        help="a new hostile peer id per connection (default) or one per connection slot",
    )
    ap.add_argument(
        "--sources",
        choices=("spread", "one", "shared"),
        default="spread",
        help="hostile source addresses: one per slot from 127.0.0.2 (default), all "
        "127.0.0.2, or 127.0.0.1 like the real peers",
    )
    ap.add_argument("--quick", action="store_true", help="a ~10 s attack, 3 s before and after")
    ap.add_argument("--preload-keys", type=int, default=8000, help="T's 1 KiB values")
    ap.add_argument("--interval-ms", type=float, default=20.0, help="P's write pace")
    ap.add_argument("--before", type=float, default=5.0, help="seconds of writes before")
    ap.add_argument("--after", type=float, default=5.0, help="seconds of writes after")
    ap.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last")
    ap.add_argument("--json", action="store_true", help="also print every figure as JSON")
    ap.add_argument("--profile-target", metavar="FILE", help="run T under cProfile (slower)")
    ap.add_argument("--hostile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hostile:
        return run_hostile(args)
    if args.quick:
        args.seconds, args.before, args.after = 10.0, 3.0, 3.0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
