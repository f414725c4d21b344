"""The ``crdt-kv`` command: inspect a store offline, run the demo, and (from the sim and
net packages) ``simulate`` and ``serve``.

Subcommands from other packages register themselves through a module-level
``register(subparsers)`` function listed in ``_PLUGIN_MODULES``; the CLI stays one file
while each feature keeps its own command code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import crdt_kv
from crdt_kv.config import load_config
from crdt_kv.errors import ConfigError, CrdtKvError

__all__ = ["main"]

_PLUGIN_MODULES = ("crdt_kv.sim.cli", "crdt_kv.net.cli")


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", help="store directory (or file for sqlite)")
    p.add_argument("--config", help="TOML config file ([storage], [node])")
    p.add_argument("--backend", help="storage backend (default rocksdb)")


def _open(args: argparse.Namespace, *, create: bool = False) -> crdt_kv.Store:
    """Open the store; commands that only read refuse a path that does not exist rather
    than create an empty store there (a typo would otherwise print "not found")."""
    if not create:
        path = args.path
        if path is None and args.config is not None:
            path = load_config(args.config)["storage"].get("path")
        if path is not None and not os.path.exists(path):
            raise ConfigError(f"no store at {path!r}")
    return crdt_kv.open(args.path, config=args.config, backend=args.backend)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {n}")
    return n


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return repr(bytes(value))
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def _cmd_get(args: argparse.Namespace) -> int:
    with _open(args) as db:
        e = db.entry(args.key)
        if e is None or e.deleted:
            print(f"{args.key}: not found", file=sys.stderr)
            return 1
        print(_show(e.value))
        if args.verbose:
            print(f"hlc={e.hlc} peer={e.peer} seq={e.seq}", file=sys.stderr)
    return 0


def _cmd_put(args: argparse.Namespace) -> int:
    value: Any = args.value
    if args.json:
        try:
            value = json.loads(args.value)
        except ValueError as exc:
            print(f"error: value is not JSON: {exc}", file=sys.stderr)
            return 2
    with _open(args, create=True) as db:
        v = db.put(args.key, value)
        print(f"ok hlc={v.hlc} peer={v.peer}")
    return 0


def _cmd_del(args: argparse.Namespace) -> int:
    with _open(args, create=True) as db:
        v = db.delete(args.key)
        print(f"ok hlc={v.hlc} peer={v.peer}")
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    with _open(args) as db:
        for k, v in db.items(gte=args.gte, lt=args.lt, reverse=args.reverse, limit=args.limit):
            print(f"{k}\t{_show(v)}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as db:
        print(f"peer_id     {db.peer_id}")
        print(f"incarnation {db.incarnation.hex()}")
        print(f"backend     {db.backend.name}")
        print(f"live keys   {len(db)}")
        print(f"last seq    {db.last_seq}")
        print(f"digest      {db.digest().hex()}")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="crdt-kv",
        description="Inspect a crdt_kv store, run replicating nodes, and run the convergence "
        "simulation suite.",
    )
    parser.add_argument("--version", action="version", version=crdt_kv.__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("get", help="print one key's value")
    _store_args(p)
    p.add_argument("key")
    p.add_argument("-v", "--verbose", action="store_true", help="also print hlc, peer, seq")
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

    p = sub.add_parser("scan", help="list live keys in a half-open range")
    _store_args(p)
    p.add_argument("--gte")
    p.add_argument("--lt")
    p.add_argument("--limit", type=_count)
    p.add_argument("--reverse", action="store_true")
    p.set_defaults(func=_cmd_scan)

    p = sub.add_parser("info", help="print the store's peer id, counts and digest")
    _store_args(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="two RocksDB replicas converge (a quick self-check)")
    p.add_argument("--keys", type=_count, default=2000)
    p.set_defaults(func=_cmd_demo)

    for name in _PLUGIN_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crdt-kv`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CrdtKvError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. ``crdt-kv scan | head``): not an error worth a traceback.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
