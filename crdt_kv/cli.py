"""The ``crdt-kv`` command: inspect a store offline (including the siblings of
``siblings``-mode stores and its replication members), forget a departed peer, run the
demo, and (from the sim and net packages) ``simulate``, ``serve`` and ``status``.

Subcommands from other packages register themselves through a module-level
``register(subparsers)`` function listed in ``_PLUGINS``; the CLI stays one file
while each feature keeps its own command code. Only the plugin of the command being run is
imported (trio, the simulator and the metrics client cost half a second to import); the
others appear in ``--help`` by the one-line help kept next to their module name.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import crdt_kv
from crdt_kv.accel import DESCRIPTION as SPEEDUPS
from crdt_kv.backends import DEFAULT_BACKEND
from crdt_kv.backends.files import detect
from crdt_kv.config import load_config
from crdt_kv.errors import ConfigError, CrdtKvError, StoreNotFoundError
from crdt_kv.store.meta import CONFLICT_MODES
from crdt_kv.version import Entry

__all__ = ["main"]

_PLUGINS: dict[str, tuple[str, str]] = {
    "simulate": ("crdt_kv.sim.cli", "run the deterministic convergence simulation suite"),
    "serve": ("crdt_kv.net.cli", "run a replication node (TCP listener, peers, live sync)"),
    "status": (
        "crdt_kv.net.status",
        "show a running node's peers from its metrics endpoint (a health check)",
    ),
}
"""Plugin command -> (the module whose ``register`` adds it and only it, its ``--help``
line, which the module must register too: tests/test_cli.py checks they agree)."""


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", help="store directory (or file for sqlite)")
    p.add_argument("--config", help="TOML config file ([storage], [node])")
    p.add_argument("--backend", help="storage backend (default rocksdb)")
    p.add_argument(
        "--conflicts",
        choices=CONFLICT_MODES,
        help="conflict mode of a new store (default: the config's [storage] conflicts, "
        "else lww); an existing store must have been created with it",
    )


_READ_ONLY_HELP = (
    "The store is opened read-only: nothing is created or changed, a path holding no store "
    "is an error, and it works while a node (crdt-kv serve) holds a RocksDB store, showing "
    "the store as it was when the command started, and on read-only files."
)
_JSON_HELP = (
    "Values print as JSON. What JSON cannot hold prints as a tagged object, so the output "
    'always parses: NaN and infinite floats as {"$float": "NaN"|"Infinity"|"-Infinity"}, '
    "integers beyond Python's 4,300-digit conversion limit as "
    '{"$int": "<hexadecimal, 0x-prefixed>"}; bytes and other types as their Python repr '
    "(a JSON string; bytes at the top level print bare, as a Python literal)."
)


def _open(args: argparse.Namespace, *, write: bool = False, create: bool = False) -> crdt_kv.Store:
    """Open the store named by ``--path``/``--config``.

    Commands that only read open it read-only: they create and change nothing, work while
    a node holds the store, and refuse a path holding no store. ``write`` without
    ``create`` (``forget-peer``) also refuses a path holding no store rather than create an
    empty one there (a typo would otherwise succeed silently). ``create`` (``put``,
    ``del``) refuses the memory backend: the write would vanish when the command exits.
    """
    cfg = load_config(args.config)
    path = args.path if args.path is not None else cfg["storage"].get("path")
    backend = args.backend or cfg["storage"].get("backend", DEFAULT_BACKEND)
    if create and backend == "memory":
        raise ConfigError(
            f"{args.command} with the memory backend would write to a store that vanishes "
            "when the command exits; use a stored backend (rocksdb or sqlite) and --path"
        )
    if write and not create and path is not None and detect(os.fspath(path)) is None:
        raise StoreNotFoundError(f"no store at {path!r}")
    return crdt_kv.open(
        args.path,
        config=args.config,
        backend=args.backend,
        conflicts=args.conflicts,
        read_only=not write,
    )


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {n}")
    return n


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except ValueError:  # e.g. an int past the digit limit inside an object's repr
        return f"<{type(value).__name__} object>"


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool) or k is None:
        return json.dumps(k)
    jk = _jsonable(k)
    return jk if isinstance(jk, str) else json.dumps(jk)


def _jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold replaced as :data:`_JSON_HELP` says."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        try:
            str(value)
        except ValueError:
            return {"$int": hex(value)}
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        name = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return {"$float": name}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    return _safe_repr(value)


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False)


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return repr(bytes(value))
    return _dumps(value)


def _stamp(e: Entry) -> str:
    return f"hlc={e.hlc} peer={e.peer}"


def _json_line(key: Any, live: list[Entry]) -> str:
    """One key and its siblings as a JSON object (what JSON cannot hold: :data:`_JSON_HELP`)."""
    doc = {
        "key": key,
        "siblings": [{"value": e.value, "hlc": e.hlc, "peer": e.peer} for e in live],
    }
    return _dumps(doc)


def _cmd_get(args: argparse.Namespace) -> int:
    with _open(args) as db:
        live = db.get_all(args.key)
        if not live:
            print(f"{args.key}: not found", file=sys.stderr)
            return 1
        if len(live) == 1:
            e = live[0]
            print(_show(e.value))
            if args.verbose:
                print(f"{_stamp(e)} seq={e.seq}", file=sys.stderr)
            return 0
        for e in live:
            print(f"{_show(e.value)}\t{_stamp(e)}")
        if args.verbose:
            print(f"siblings={len(live)} seq={live[0].seq}", file=sys.stderr)
    return 0


def _cmd_put(args: argparse.Namespace) -> int:
    value: Any = args.value
    if args.json:
        try:
            value = json.loads(args.value)
        except ValueError as exc:
            print(f"error: value is not JSON: {exc}", file=sys.stderr)
            return 2
    with _open(args, write=True, create=True) as db:
        v = db.put(args.key, value)
        print(f"ok hlc={v.hlc} peer={v.peer}")
    return 0


def _cmd_del(args: argparse.Namespace) -> int:
    with _open(args, write=True, create=True) as db:
        v = db.delete(args.key)
        print(f"ok hlc={v.hlc} peer={v.peer}")
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    with _open(args) as db:
        for k, v in db.items(gte=args.gte, lt=args.lt, reverse=args.reverse, limit=args.limit):
            print(f"{k}\t{_show(v)}")
    return 0


def _cmd_conflicts(args: argparse.Namespace) -> int:
    with _open(args) as db:
        if db.conflict_mode != "siblings":
            print("store is in lww mode: it never holds siblings", file=sys.stderr)
            return 0
        for key, live in db.conflicts(gte=args.gte, lt=args.lt, limit=args.limit):
            if args.json:
                print(_json_line(key, live))
                continue
            for e in live:
                print(f"{key}\t{_show(e.value)}\t{_stamp(e)}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as db:
        print(f"peer_id     {db.peer_id}")
        print(f"incarnation {db.incarnation.hex()}")
        print(f"backend     {db.backend.name}")
        print(f"conflicts   {db.conflict_mode}")
        print(f"live keys   {len(db)}")
        print(f"last seq    {db.last_seq}")
        print(f"digest      {db.digest().hex()}")
    return 0


def _cmd_members(args: argparse.Namespace) -> int:
    """The membership table: what this replica received of each peer (the horizon's input)."""
    with _open(args) as db:
        for m in db.members():
            if args.json:
                print(json.dumps(dataclasses.asdict(m), sort_keys=True))
            else:
                state = "active" if m.active else "inactive"
                known = "partner" if m.partner else "gossip"
                print(
                    f"{m.peer}\treceived_through={m.received_through}\tseen_ms={m.seen_ms}"
                    f"\treported_d={m.reported_d}\t{state}\t{known}"
                )
    return 0


def _cmd_forget_peer(args: argparse.Namespace) -> int:
    with _open(args, write=True) as db:
        if args.peer not in {m.peer for m in db.members()}:
            print(f"note: peer {args.peer!r} was not a known member", file=sys.stderr)
        db.forget_peer(args.peer)
        print(f"ok forgot {args.peer}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Two RocksDB replicas write concurrently, exchange changes, and must converge."""
    with tempfile.TemporaryDirectory(prefix="crdt_kv-demo-") as tmp:
        a = crdt_kv.open(f"{tmp}/a", peer_id="a")
        b = crdt_kv.open(f"{tmp}/b", peer_id="b")
        with a, b:
            for i in range(args.keys):
                a.put(f"k{i:05d}", {"by": "a", "i": i})
                b.put(f"k{i:05d}", {"by": "b", "i": i})
                if i % 7 == 0:
                    a.delete(f"k{i:05d}")
            b.apply(a.changes())
            a.apply(b.changes())
            same = a.digest() == b.digest()
            rows_equal = list(a.items()) == list(b.items())
            print(f"replica a: {len(a)} live keys, digest {a.digest().hex()[:16]}")
            print(f"replica b: {len(b)} live keys, digest {b.digest().hex()[:16]}")
            verdict = same and rows_equal
            print("verdict: CONVERGED" if verdict else "verdict: DIVERGED")
            return 0 if verdict else 1


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser, with every available subcommand registered.

    With ``argv``, only the plugin module of the command it names is imported; every other
    plugin command is a placeholder with its help line (enough for ``crdt-kv --help``).
    """
    parser = argparse.ArgumentParser(
        prog="crdt-kv",
        description="Inspect a crdt_kv store, run replicating nodes, and run the convergence "
        "simulation suite.",
    )
    parser.add_argument(
        "--version", action="version", version=f"{crdt_kv.__version__} ({SPEEDUPS})"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "get",
        help="print one key's value (every sibling, if it holds several)",
        description="Print the live value of KEY as JSON (bytes as a Python literal); exit 1 "
        "if it is absent or deleted. A key of a siblings-mode store holding concurrent "
        "versions prints one line per live sibling, in sibling order (the first is what "
        "Store.get returns): VALUE<TAB>hlc=STAMP peer=PEER. A single value prints alone, "
        f"as in lww mode. {_READ_ONLY_HELP} {_JSON_HELP}",
    )
    _store_args(p)
    p.add_argument("key")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print hlc, peer, seq (several siblings: their count and seq) to stderr",
    )
    p.set_defaults(func=_cmd_get)

    p = sub.add_parser("put", help="write one key")
    _store_args(p)
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--json", action="store_true", help="parse the value as JSON")
    p.set_defaults(func=_cmd_put)

    p = sub.add_parser("del", help="delete one key (writes a tombstone)")
    _store_args(p)
    p.add_argument("key")
    p.set_defaults(func=_cmd_del)

    p = sub.add_parser(
        "scan",
        help="list live keys in a half-open range",
        description="Print KEY<TAB>VALUE for every live key in [--gte, --lt), in key order "
        f"(--reverse: descending). {_READ_ONLY_HELP} {_JSON_HELP}",
    )
    _store_args(p)
    p.add_argument("--gte")
    p.add_argument("--lt")
    p.add_argument("--limit", type=_count)
    p.add_argument("--reverse", action="store_true")
    p.set_defaults(func=_cmd_scan)

    p = sub.add_parser(
        "conflicts",
        help="list keys holding two or more live siblings (siblings mode)",
        description="List the keys of a siblings-mode store that hold two or more live "
        "siblings, in key order over the half-open range [--gte, --lt): one line per "
        "sibling, KEY<TAB>VALUE<TAB>hlc=STAMP peer=PEER, in sibling order; with --json one "
        'object per key and line, {"key": K, "siblings": [{"value": V, "hlc": H, "peer": '
        "P}, ...]} (what JSON cannot hold, such as bytes, as its Python repr). --limit "
        "counts keys. An lww-mode store never holds siblings: nothing is listed. "
        f"{_READ_ONLY_HELP} {_JSON_HELP}",
    )
    _store_args(p)
    p.add_argument("--gte")
    p.add_argument("--lt")
    p.add_argument("--limit", type=_count, help="list at most this many keys")
    p.add_argument("--json", action="store_true", help="one JSON object per key")
    p.set_defaults(func=_cmd_conflicts)

    p = sub.add_parser(
        "info",
        help="print the store's peer id, conflict mode, counts and digest",
        description=f"Print the store's identity, counts and digest. {_READ_ONLY_HELP}",
    )
    _store_args(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "members",
        help="list the replication members this store knows and what it received of each",
    )
    _store_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per member")
    p.set_defaults(func=_cmd_members)

    p = sub.add_parser(
        "forget-peer",
        help="stop a departed peer holding the tombstone-collection horizon back",
    )
    _store_args(p)
    p.add_argument("peer", help="the peer id to forget (a member again if seen later)")
    p.set_defaults(func=_cmd_forget_peer)

    p = sub.add_parser("demo", help="two RocksDB replicas converge (a quick self-check)")
    p.add_argument("--keys", type=_count, default=2000)
    p.set_defaults(func=_cmd_demo)

    _add_plugins(sub, None if argv is None else _command(argv))
    return parser


def _command(argv: Sequence[str]) -> str:
    """The subcommand ``argv`` names ("" if none): its first word that is not an option
    (the top level has no option taking a value)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _add_plugins(sub: Any, command: str | None) -> None:
    """Register the plugins' commands: every module when ``command`` is None, else only
    the one of ``command`` and placeholders for the rest."""
    for name, (module, help_line) in _PLUGINS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_line)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            continue
        mod.register(sub)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crdt-kv`` console script; returns the exit code.

    No failure prints a traceback: the library's errors, the operating system's and bad
    values each print one ``error: ...`` line on stderr and exit 2; anything else (a bug)
    exits 70 with its type and message, and ``CRDT_KV_TRACEBACK=1`` shows the traceback.
    """
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    started = time.monotonic()
    try:
        code: int = args.func(args)
        if getattr(args, "summary", False):  # simulate --summary: sweeps report their time
            print(f"wall time {time.monotonic() - started:,.1f} s", flush=True)
    except CrdtKvError as exc:
        print(f"error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _broken_pipe()
    except OSError as exc:
        where = f": {exc.filename!r}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("CRDT_KV_TRACEBACK"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))} "
            "(a bug: please report it; CRDT_KV_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return 70
    return code


def _broken_pipe() -> int:
    """The reader went away (e.g. ``crdt-kv scan | head``): not an error worth a traceback.
    Point stdout at devnull so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


if __name__ == "__main__":
    sys.exit(main())
