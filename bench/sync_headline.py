"""Issue 13's headline sync figure: two processes, 100-byte values, RocksDB both ends.

The sender is a real ``crdt-kv serve`` process (``--no-live``) holding ``n`` entries
(``key-0000000`` keys, 100-character ASCII values, i.e. 100 bytes each, 102 as CBOR); the
receiver is another process (this file run as ``receive``) that opens an empty RocksDB store
(default options: WAL on, no fsync per batch) and runs ``crdt_kv.replicate`` (mode ``both``,
default session options: 1,000 entries per batch, window 4) over one loopback TCP connection
to the sender until both sides caught up.

- **Rate** = ``n`` / wall seconds *from the receiver's first byte* (its Hello, sent right
  after the TCP connect) *until* ``replicate`` returns (the last batch committed with its
  cursor and acknowledged). The rate from the first byte the receiver *received* is kept too.
- **Wire bytes** are counted at the receiver's socket: every byte it sent and received.
- **Peak RSS** is ``VmHWM`` from ``/proc/<pid>/status`` of each process: the receiver reads
  its own at the end, the parent reads the sender's after the last run (it serves every
  run, so its figure is the peak over all of them).
- **CPU seconds** of each side per run (the sender's from ``/proc/<pid>/stat`` around the
  run, the receiver's ``process_time`` around the sync): on a shared 2-core machine the wall
  rate depends on the neighbours; ``n`` / the busier side's CPU is the rate the pair would
  reach with a core each.
- **Convergence**: the receiver reports ``len`` and ``digest`` of its store after the clock
  stopped; a run whose store does not equal the sender's raises.

The comparisons run in the same process tree, interleaved run by run (the order rotating),
so each ratio is a median of paired per-run ratios: pycrdt syncing the same ``n`` values in
memory (``get_update()`` into a fresh doc; bench_sync's pycrdt path, passed in) and raw
``rocksdict`` writing the same ``n`` keys and values in a ``WriteBatch`` per 1,000 (the floor
of what a receiver must do: no decode, no merge, no digest, no cursor).

With a profile path, one extra (untimed) run runs both processes under cProfile with a
per-thread CPU clock, storage worker threads included, and :func:`profile_buckets` says where
each side spent its CPU: log scan, batch encode, socket, batch decode, merge, commit.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from procstat import cpu_seconds, proc_status, stop_process

TARGET_RATE = 170_000
TARGET_BYTES_PER_ENTRY = 120.0
TARGET_RSS_BYTES = 200 * 1024 * 1024
RSS_TARGET_N = 1_000_000
RAW_BATCH = 1000
SENDER_PEER = "headline-src"
RECEIVER_PEER = "headline-rx"
HERE = os.path.abspath(__file__)


def key_of(i: int) -> str:
    return f"key-{i:07d}"


def value100(i: int) -> str:
    """A 100-byte value (100 ASCII characters), distinct per key."""
    return f"value-{i:07d}-".ljust(100, "x")


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --- the sender --------------------------------------------------------------------------------


def preload(path: str, n: int, *, chunk: int = 10_000) -> tuple[bytes, int]:
    """Write the sender's ``n`` entries (atomic batches of ``chunk``); its digest and size."""
    import crdt_kv

    store = crdt_kv.open(path, peer_id=SENDER_PEER, backend="rocksdb")
    try:
        for lo in range(0, n, chunk):
            with store.batch() as b:
                for i in range(lo, min(n, lo + chunk)):
                    b.put(key_of(i), value100(i))
        return store.digest(), len(store)
    finally:
        store.close()


def start_sender(
    path: str, log_path: str, profile: str | None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``crdt-kv serve`` on ``path``; return the process and its ``host:port``.

    With ``profile``, the same command runs through this file's ``serve`` wrapper, which
    profiles every thread and writes the stats to ``profile`` when the node stops.
    """
    argv = ["serve", "--path", path, "--peer-id", SENDER_PEER]
    argv += ["--listen", "127.0.0.1:0", "--no-live"]
    if profile:
        cmd = [sys.executable, HERE, "serve", "--profile", profile, "--", *argv]
    else:
        cmd = [sys.executable, "-m", "crdt_kv.cli", *argv]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"crdt-kv serve exited ({proc.wait()}); see {log_path}")
        if line.startswith("listening on "):
            return proc, line.split()[-1]


def stop_sender(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (the node stops cleanly, a profile is written), SIGKILL after 30 s."""
    stop_process(proc, grace_s=30.0)
    if proc.stdout is not None:
        proc.stdout.close()


# --- the receiver ------------------------------------------------------------------------------


def receive_once(path: str, address: str, profile: str | None, timeout: float) -> dict[str, Any]:
    """Run the receiver process once; its JSON result (raises if it failed)."""
    cmd = [sys.executable, HERE, "receive", "--path", path, "--address", address]
    if profile:
        cmd += ["--profile", profile]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"receiver failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _counting_stream(inner: Any) -> Any:
    """A trio stream counting both directions and stamping the first byte each way."""
    import trio

    class Counting(trio.abc.HalfCloseableStream):
        def __init__(self) -> None:
            self.sent = self.received = 0
            self.first_sent = self.first_received = 0.0

        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            if not self.sent:
                self.first_sent = time.perf_counter()
            self.sent += len(data)
            await inner.send_all(data)

        async def wait_send_all_might_not_block(self) -> None:
            await inner.wait_send_all_might_not_block()

        async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
            data: bytes | bytearray = await inner.receive_some(max_bytes)
            if data and not self.received:
                self.first_received = time.perf_counter()
            self.received += len(data)
            return data

        async def send_eof(self) -> None:
            await inner.send_eof()

        async def aclose(self) -> None:
            await inner.aclose()

    return Counting()


def _receiver_main(args: argparse.Namespace) -> int:
    """Child process: pull the sender's store into an empty one; print one JSON line."""
    import trio

    import crdt_kv

    host, _, port = args.address.rpartition(":")
    replicate = crdt_kv.replicate  # lazy: imported here, before the clock starts
    store = crdt_kv.open(args.path, peer_id=RECEIVER_PEER, backend="rocksdb")
    rss_before = proc_status("self", "VmRSS")

    async def main() -> dict[str, Any]:
        t_connect = time.perf_counter()
        stream = _counting_stream(await trio.open_tcp_stream(host, int(port)))
        await replicate(store, stream)
        t_end = time.perf_counter()
        return {
            "connect_s": stream.first_sent - t_connect,
            "seconds": t_end - stream.first_sent,
            "seconds_from_first_received": t_end - stream.first_received,
            "bytes_sent": stream.sent,
            "bytes_received": stream.received,
        }

    try:
        cpu0 = time.process_time()
        with thread_profiles(args.profile):
            res = trio.run(main)
        res["cpu_sync_s"] = time.process_time() - cpu0
        res.update(
            count=len(store),
            digest=store.digest().hex(),
            rss_before=rss_before,
            hwm=proc_status("self", "VmHWM"),
        )
    finally:
        store.close()
    print(json.dumps(res), flush=True)
    return 0


def _sender_main(args: argparse.Namespace) -> int:
    """Child process: ``crdt-kv serve`` under the all-threads profiler."""
    import crdt_kv.net.cli
    import crdt_kv.net.node
    import crdt_kv.net.transport  # noqa: F401 - imported before the profiler starts
    from crdt_kv.cli import main

    with thread_profiles(args.profile):
        code = main(args.serve_argv)
    return code


# --- profiling every thread --------------------------------------------------------------------


@contextlib.contextmanager
def thread_profiles(path: str | None) -> Any:
    """Profile this thread and every ``trio.to_thread.run_sync`` call (the storage worker)
    with a per-thread CPU clock; write the merged stats to ``path`` on exit."""
    if not path:
        yield
        return
    import trio

    profiles: list[cProfile.Profile] = []
    real = trio.to_thread.run_sync

    async def run_sync(fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        def profiled(*args: Any) -> Any:
            p = cProfile.Profile(time.thread_time)
            profiles.append(p)
            p.enable()
            try:
                return fn(*args)
            finally:
                p.disable()

        return await real(profiled, *a, **kw)

    main = cProfile.Profile(time.thread_time)
    trio.to_thread.run_sync = run_sync  # type: ignore[assignment]
    main.enable()
    try:
        yield
    finally:
        main.disable()
        trio.to_thread.run_sync = real
        st = pstats.Stats(main)
        for p in profiles:
            st.add(p)
        st.dump_stats(path)


PROFILE_BUCKETS: dict[str, list[tuple[str, str, str]]] = {
    # (label, file suffix or "~" for builtins, function name); cumulative CPU seconds.
    "sender": [
        ("log read requests (all below)", "protocol/storage.py", "perform"),
        ("  change-log read (scan, max_bytes sums)", "store/changelog.py", "read"),
        ("    log scan + record reads", "store/changelog.py", "_chunks"),
        ("  fit the receiver's frame size (row_bound)", "protocol/storage.py", "fit_frame_sized"),
        ("batch encode (CBOR frames)", "protocol/messages.py", "encode_frame"),
        ("socket send", "~", "<method 'send' of '_socket.socket' objects>"),
        ("socket recv", "~", "<method 'recv' of '_socket.socket' objects>"),
    ],
    "receiver": [
        ("socket recv", "~", "<method 'recv' of '_socket.socket' objects>"),
        ("socket send", "~", "<method 'send' of '_socket.socket' objects>"),
        ("batch decode (frames, CBOR, checks)", "protocol/messages.py", "decode_message"),
        ("store apply_raw (all below)", "store/writes.py", "apply"),
        ("  validate (decode every value)", "store/merge.py", "validate_all"),
        ("  commit (records, digest, RocksDB write)", "store/writes.py", "commit"),
        ("    RocksDB write", "backends/rocksdb.py", "write"),
    ],
}


def profile_buckets(path: str, side: str) -> dict[str, Any]:
    """CPU seconds per bucket of a profile written by :func:`thread_profiles`, the total
    CPU it saw (all threads), and the merge share (apply minus validate and commit)."""
    st = pstats.Stats(path)
    stats: dict[tuple[str, int, str], Any] = st.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in stats.values())
    out: dict[str, float] = {}
    for label, file_part, func in PROFILE_BUCKETS[side]:
        cum = 0.0
        for (fname, _line, name), (_cc, _nc, tt, ct, _callers) in stats.items():
            if name == func and (fname == file_part or fname.endswith(file_part)):
                cum = max(cum, tt if file_part == "~" else ct)
        out[label] = cum
    if side == "receiver":
        apply_s = out["store apply_raw (all below)"]
        v = out["  validate (decode every value)"]
        c = out["  commit (records, digest, RocksDB write)"]
        out["  merge (read current records, pick winners)"] = max(0.0, apply_s - v - c)
    text = io.StringIO()
    pstats.Stats(path, stream=text).sort_stats("tottime").print_stats(12)
    return {"cpu_seconds": total, "buckets": out, "top_tottime": text.getvalue()}


# --- the raw RocksDB floor ---------------------------------------------------------------------


def raw_rocksdb_write(path: str, keys: list[bytes], values: list[bytes]) -> float:
    """Seconds to write ``keys``/``values`` into a fresh ``rocksdict`` database, one
    ``WriteBatch`` per 1,000 (WAL on, no fsync: the receiver's default durability)."""
    from rocksdict import Options, Rdict, WriteBatch

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(path, opts)
    try:
        t0 = time.perf_counter()
        for lo in range(0, len(keys), RAW_BATCH):
            wb = WriteBatch(raw_mode=True)
            for k, v in zip(keys[lo : lo + RAW_BATCH], values[lo : lo + RAW_BATCH], strict=True):
                wb.put(k, v)
            db.write(wb)
        seconds = time.perf_counter() - t0
        got = sum(1 for _ in db.keys())  # noqa: SIM118 - Rdict is not iterable
        if got != len(keys):
            raise RuntimeError(f"raw rocksdict holds {got} of {len(keys)} keys")
        return seconds
    finally:
        db.close()


# --- the run -----------------------------------------------------------------------------------


def run_headline(
    n: int,
    repeat: int,
    *,
    pycrdt_full: Callable[[int, Callable[[int], Any]], float],
    profile: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """The headline figures: ``repeat`` paired runs of crdt_kv, pycrdt and raw rocksdict.

    ``pycrdt_full(n, value)`` returns the seconds of one in-memory pycrdt full sync of
    ``n`` keys whose values are ``value(i)``.
    """
    work = tempfile.mkdtemp(prefix="bench_headline_")
    out: dict[str, Any] = {"n": n, "value_bytes": len(value100(0)), "repeat": repeat}
    try:
        src = os.path.join(work, "src")
        log(f"headline: building the sender's {n:,} entries ...")
        digest, count = preload(src, n)
        if count != n:
            raise RuntimeError(f"headline sender holds {count} of {n} keys")
        raw_keys = [key_of(i).encode() for i in range(n)]
        raw_values = [value100(i).encode() for i in range(n)]
        sender, address = start_sender(src, os.path.join(work, "sender.log"), None)
        out["sender_rss_idle"] = proc_status(sender.pid, "VmRSS")
        runs: list[dict[str, Any]] = []
        try:
            for r in range(repeat):
                runs.append(
                    one_round(
                        r,
                        work,
                        (sender.pid, address),
                        digest,
                        n,
                        (raw_keys, raw_values),
                        pycrdt_full,
                        log,
                    )
                )
            out["sender_hwm"] = proc_status(sender.pid, "VmHWM")
        finally:
            stop_sender(sender)
        out["runs"] = runs
        out.update(summarize(runs, n))
        out["load_1m_end"] = os.getloadavg()[0]
        if profile:
            out["profile"] = profile_run(work, src, n, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def one_round(
    r: int,
    work: str,
    sender: tuple[int, str],
    digest: bytes,
    n: int,
    raw: tuple[list[bytes], list[bytes]],
    pycrdt_full: Callable[[int, Callable[[int], Any]], float],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One paired round: the three subjects in an order rotating with ``r``."""
    res: dict[str, Any] = {"load_1m": os.getloadavg()[0]}
    timeout = max(120.0, n / 2_000)

    pid, address = sender

    def crdt() -> None:
        cpu0 = cpu_seconds(pid)
        rx = receive_once(os.path.join(work, f"rx{r}"), address, None, timeout)
        rx["sender_cpu_s"] = cpu_seconds(pid) - cpu0
        if rx["count"] != n or rx["digest"] != digest.hex():
            raise RuntimeError(f"headline run {r}: receiver holds {rx['count']} of {n} keys")
        res["crdt_kv"] = rx
        shutil.rmtree(os.path.join(work, f"rx{r}"), ignore_errors=True)

    def pycrdt() -> None:
        res["pycrdt_seconds"] = pycrdt_full(n, value100)

    def write_raw() -> None:
        path = os.path.join(work, f"raw{r}")
        res["raw_seconds"] = raw_rocksdb_write(path, *raw)
        shutil.rmtree(path, ignore_errors=True)

    subjects = [("crdt_kv", crdt), ("pycrdt", pycrdt), ("raw rocksdict", write_raw)]
    s = r % len(subjects)
    for name, fn in subjects[s:] + subjects[:s]:
        log(f"  run {r + 1}: {name} ...")
        fn()
    rx = res["crdt_kv"]
    log(
        f"    {n / rx['seconds']:,.0f} entries/s, "
        f"{(rx['bytes_sent'] + rx['bytes_received']) / n:.1f} B/entry; pycrdt "
        f"{n / res['pycrdt_seconds']:,.0f}/s, raw {n / res['raw_seconds']:,.0f}/s "
        f"(load {res['load_1m']:.1f}); CPU s sender {rx['sender_cpu_s']:.2f}, receiver "
        f"{rx['cpu_sync_s']:.2f}"
    )
    return res


def summarize(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Medians, paired ratios and the receiver's peak RSS over ``runs``."""
    secs = [x["crdt_kv"]["seconds"] for x in runs]
    wire = runs[0]["crdt_kv"]["bytes_sent"] + runs[0]["crdt_kv"]["bytes_received"]
    return {
        "entries_per_s": n / med(secs),
        "entries_per_s_runs": [n / s for s in secs],
        "entries_per_s_from_first_received": n
        / med([x["crdt_kv"]["seconds_from_first_received"] for x in runs]),
        "bytes_per_entry": wire / n,
        "receiver_hwm": max(x["crdt_kv"]["hwm"] for x in runs),
        "sender_cpu_s": med([x["crdt_kv"]["sender_cpu_s"] for x in runs]),
        "receiver_cpu_s": med([x["crdt_kv"]["cpu_sync_s"] for x in runs]),
        "receiver_rss_before": max(x["crdt_kv"]["rss_before"] for x in runs),
        "pycrdt_entries_per_s": n / med([x["pycrdt_seconds"] for x in runs]),
        "raw_entries_per_s": n / med([x["raw_seconds"] for x in runs]),
        "ratio_pycrdt": med([x["pycrdt_seconds"] / x["crdt_kv"]["seconds"] for x in runs]),
        "ratio_raw": med([x["raw_seconds"] / x["crdt_kv"]["seconds"] for x in runs]),
        "load_1m_runs": [x["load_1m"] for x in runs],
    }


def profile_run(work: str, src: str, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One untimed full sync with both processes profiled; buckets per side."""
    log("headline: profiling one full sync (both processes) ...")
    sp, rp = os.path.join(work, "sender.prof"), os.path.join(work, "receiver.prof")
    sender, address = start_sender(src, os.path.join(work, "sender-prof.log"), sp)
    try:
        rx = receive_once(os.path.join(work, "rx-prof"), address, rp, max(300.0, n / 500))
    finally:
        stop_sender(sender)
    if rx["count"] != n:
        raise RuntimeError(f"profiled headline run: receiver holds {rx['count']} of {n} keys")
    return {
        "wall_seconds": rx["seconds"],
        "sender": profile_buckets(sp, "sender"),
        "receiver": profile_buckets(rp, "receiver"),
    }


# --- verdicts ----------------------------------------------------------------------------------


def mib(v: float) -> str:
    return f"{v / 2**20:,.0f} MiB"


def headline_verdicts(h: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Rows (measure, crdt_kv, comparison, target, verdict) of the headline."""
    n = h["n"]
    rate = h["entries_per_s"]
    runs = ", ".join(f"{x:,.0f}" for x in h["entries_per_s_runs"])
    rows = [
        (
            f"HEADLINE full sync {n:,} x 100 B, RocksDB both ends, 2 processes",
            f"{rate:,.0f} entries/s (runs {runs})",
            f"pycrdt {h['pycrdt_entries_per_s']:,.0f}/s ({h['ratio_pycrdt']:.2f}x); raw "
            f"rocksdict WriteBatch/1,000 {h['raw_entries_per_s']:,.0f}/s ({h['ratio_raw']:.2f}x)",
            f">= {TARGET_RATE:,}/s",
            "MET" if rate >= TARGET_RATE else "MISSED",
        ),
        (
            "  wire bytes / entry (both directions)",
            f"{h['bytes_per_entry']:.1f} B",
            f"value {h['value_bytes']} B, key {len(key_of(0))} B",
            f"<= {TARGET_BYTES_PER_ENTRY:.0f} B",
            "MET" if h["bytes_per_entry"] <= TARGET_BYTES_PER_ENTRY else "MISSED",
        ),
    ]
    busiest = max(h["sender_cpu_s"], h["receiver_cpu_s"])
    rows.append(
        (
            "  CPU seconds per run: sender / receiver",
            f"{h['sender_cpu_s']:.2f} / {h['receiver_cpu_s']:.2f} s (medians)",
            f"{n / busiest:,.0f} entries/s if each process had a core to itself",
            "-",
            "-",
        )
    )
    peak = max(h["receiver_hwm"], h["sender_hwm"])
    rss_verdict = ("MET" if peak <= TARGET_RSS_BYTES else "MISSED") if n >= RSS_TARGET_N else "-"
    rows.append(
        (
            "  peak RSS (VmHWM) receiver / sender",
            f"{mib(h['receiver_hwm'])} / {mib(h['sender_hwm'])}",
            f"receiver {mib(h['receiver_rss_before'])} before syncing, sender "
            f"{mib(h['sender_rss_idle'])} idle",
            f"<= 200 MiB at {RSS_TARGET_N:,} (--big)",
            rss_verdict,
        )
    )
    return rows


def profile_rows(h: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(side: bucket, CPU seconds, share of that side's profiled CPU) for the profile run."""
    p = h["profile"]
    rows = []
    for side in ("sender", "receiver"):
        total = p[side]["cpu_seconds"]
        rows.append((f"{side}: all profiled CPU (all threads)", f"{total:.2f}", "100%"))
        for label, secs in p[side]["buckets"].items():
            rows.append((f"{side}: {label}", f"{secs:.2f}", f"{secs / total:.0%}"))
    return rows


# --- child entry points ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="child processes of the headline sync benchmark")
    sub = ap.add_subparsers(dest="role", required=True)
    rx = sub.add_parser("receive", help="pull from --address into an empty store at --path")
    rx.add_argument("--path", required=True)
    rx.add_argument("--address", required=True)
    rx.add_argument("--profile")
    sx = sub.add_parser("serve", help="crdt-kv serve ARGS under the all-threads profiler")
    sx.add_argument("--profile", required=True)
    sx.add_argument("serve_argv", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.role == "receive":
        return _receiver_main(args)
    args.serve_argv = [a for a in args.serve_argv if a != "--"]
    return _sender_main(args)


if __name__ == "__main__":
    sys.exit(main())
