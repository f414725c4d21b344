"""``crdt-kv serve``: run a replication node from a TOML file and/or flags.

Registered into the main ``crdt-kv`` parser by :func:`register`. Flags override the
file's ``[node]`` table, except ``--peer``, which adds to its ``peers``; the store opens
with the file's ``[storage]`` table (its ``conflicts`` mode too, unless ``--conflicts``
is given), so a node replicates in the mode its store was created with. On startup the
command prints one line, ``listening on HOST:PORT``, to stdout (scripts wait for it), after
the catch-up report when ``catch_up`` is on, then ``metrics on http://HOST:PORT/metrics``
if it serves metrics (``metrics_listen``), then ``client api on HOST:PORT`` if it serves the
client endpoint (``client_listen``). A ``[tls]`` table or the ``--tls-*`` flags
(which override its ``cert``, ``key`` and ``ca``) run the node over mutual TLS; it
stops cleanly on SIGINT or SIGTERM: every session is cancelled, sockets are closed, then
the store is closed. Unless ``--python-gc default`` is given, the command tunes the
process's garbage collector for a long-running node (:func:`tune_python_gc`).
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio

import crdt_kv
from crdt_kv.config import load_config
from crdt_kv.errors import ConfigError
from crdt_kv.net.addresses import format_address
from crdt_kv.net.node import DEFAULT_SYNC_INTERVAL_S
from crdt_kv.net.serve import serve
from crdt_kv.net.tls import TlsConfig
from crdt_kv.protocol import DEFAULT_CATCH_UP_TIMEOUT_S, MODES
from crdt_kv.store import Store
from crdt_kv.store.meta import CONFLICT_MODES

__all__ = ["GC_THRESHOLDS", "node_options", "register", "run_node", "tls_options", "tune_python_gc"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the ``crdt-kv`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="run a replication node (TCP listener, peers, live sync)",
        description="Run a replication node until SIGINT/SIGTERM.",
    )
    p.add_argument("--config", help="TOML file with [storage] and [node] tables")
    p.add_argument("--path", help="store directory (or file for sqlite)")
    p.add_argument("--backend", help="storage backend (default rocksdb)")
    p.add_argument("--peer-id", help="this replica's peer id (must match an existing store)")
    p.add_argument(
        "--conflicts",
        choices=CONFLICT_MODES,
        help="conflict mode of a new store (default: [storage] conflicts, else lww); "
        "an existing store must match; peers must use the same mode",
    )
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:0)")
    p.add_argument(
        "--peer",
        action="append",
        dest="peers",
        default=[],
        metavar="HOST:PORT",
        help="a peer to replicate with (repeatable; adds to the config's peers)",
    )
    p.add_argument("--cluster-id", help="only peers with the same cluster id are accepted")
    p.add_argument("--mode", choices=MODES, help="both (default), push or pull")
    p.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep live sessions open and push commits as they happen (default on)",
    )
    p.add_argument(
        "--sync-interval",
        type=float,
        dest="sync_interval_s",
        help=f"seconds between anti-entropy rounds (default {DEFAULT_SYNC_INTERVAL_S:g})",
    )
    p.add_argument(
        "--discovery",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="announce and find peers by UDP multicast",
    )
    p.add_argument("--multicast-group", help="discovery multicast group")
    p.add_argument("--multicast-port", type=int, help="discovery UDP port")
    p.add_argument(
        "--catch-up",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="before accepting writes, pull once from every peer (prints a report)",
    )
    p.add_argument(
        "--catch-up-timeout",
        type=float,
        dest="catch_up_timeout_s",
        help=f"seconds to wait for the catch-up at most (default {DEFAULT_CATCH_UP_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one)",
    )
    p.add_argument(
        "--client-listen",
        metavar="HOST:PORT",
        help="serve the client endpoint (put/del/get with stamps) on this loopback address "
        "(port 0 picks one)",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="this node's TLS certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="the CA that signs every node's certificate; with --tls-cert and --tls-key "
        "(or a [tls] table) the node speaks only mutual TLS",
    )
    p.add_argument(
        "--python-gc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned (default): freeze what start-up allocated and collect less often "
        "(tune_python_gc); default: leave Python's garbage collector as it is",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    p.set_defaults(func=_cmd_serve)


GC_THRESHOLDS = (20_000, 20, 100)
"""The collector's thresholds ``crdt-kv serve`` sets (Python's defaults: 700, 10, 10)."""


def tune_python_gc() -> None:
    """Tune this process's garbage collector for a long-running node: move what start-up
    allocated (modules, the store, never garbage) out of the collector's view
    (``gc.freeze``), and collect the young generations less often.

    Why: a node serving hundreds of connections allocates fast, and with Python's
    defaults a full collection, which scans every live object and stops the event loop,
    ran every second or so, each taking 25-50 ms; under bench_hostile's attack they
    were a large part of a real peer's tail latency. Process-wide, so only the command
    does this; a program that calls :func:`crdt_kv.serve` owns its collector."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


_FLAG_KEYS = (
    "listen",
    "cluster_id",
    "mode",
    "live",
    "sync_interval_s",
    "discovery",
    "multicast_group",
    "multicast_port",
    "catch_up",
    "catch_up_timeout_s",
    "metrics_listen",
    "client_listen",
)


def node_options(node_cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`serve` from the ``[node]`` table overridden by flags."""
    opts: dict[str, Any] = {}
    for key in _FLAG_KEYS:
        flag = getattr(args, key, None)
        value = flag if flag is not None else node_cfg.get(key)
        if value is not None:
            opts[key] = value
    for key in (
        "gc_grace_s",
        "gc_interval_s",
        "live_idle_timeout_s",
        "max_buffered_bytes",
        "metrics_max_peers",
        "source_penalty_max_s",
        "client_allow_remote",
    ):
        if key in node_cfg:
            opts[key] = node_cfg[key]
    peers = list(node_cfg.get("peers", [])) + list(getattr(args, "peers", []) or [])
    for p in peers:
        if not isinstance(p, str):
            raise ConfigError(f"config node.peers must hold 'host:port' strings, got {p!r}")
    opts["peers"] = peers
    return opts


def tls_options(tls_cfg: dict[str, Any], args: argparse.Namespace) -> TlsConfig | None:
    """The node's TLS from the ``[tls]`` table overridden by ``--tls-*`` flags; None when
    neither asks for TLS. A partial set of files is a :class:`ConfigError`."""
    table = dict(tls_cfg)
    for key in ("cert", "key", "ca"):
        flag = getattr(args, f"tls_{key}", None)
        if flag is not None:
            table[key] = flag
    if not table:
        return None
    missing = [f"--tls-{key}" for key in ("cert", "key", "ca") if key not in table]
    if missing:
        raise ConfigError(
            f"TLS needs a certificate, its key and a CA; missing {', '.join(missing)}"
        )
    return TlsConfig.from_table(table)


async def run_node(
    store: Store,
    options: dict[str, Any],
    *,
    announce: Callable[[str], object] = print,
) -> str:
    """Serve ``store`` until SIGINT/SIGTERM; returns the name of the signal that stopped it."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serve(store, **options) as node:
            if node.catch_up_report is not None:
                announce(str(node.catch_up_report))
            announce(f"listening on {format_address(*node.address)}")
            if node.metrics_address is not None:
                announce(f"metrics on http://{format_address(*node.metrics_address)}/metrics")
            if node.client_address is not None:
                announce(f"client api on {format_address(*node.client_address)}")
            async for signum in signals:
                return signal.Signals(signum).name
    return "end"  # pragma: no cover - the signal iterator never ends by itself


def _cmd_serve(args: argparse.Namespace) -> int:
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    options = node_options(cfg["node"], args)
    tls = tls_options(cfg["tls"], args)
    if tls is not None:
        options["tls"] = tls
    store = crdt_kv.open(
        args.path,
        config=args.config,
        backend=args.backend,
        peer_id=args.peer_id,
        conflicts=args.conflicts,
    )
    try:
        if args.python_gc == "tuned":
            tune_python_gc()

        def announce(line: str) -> None:
            print(line, flush=True)

        try:
            name = trio.run(functools.partial(run_node, store, options, announce=announce))
        except OSError as exc:
            print(f"error: cannot serve: {exc}", file=sys.stderr)
            return 2
        print(f"stopped by {name}", file=sys.stderr)
    finally:
        store.close()
    return 0
