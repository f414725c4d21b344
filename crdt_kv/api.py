"""``crdt_kv.open``: wire a configured backend, the system clock and randomness to a Store."""

from __future__ import annotations

import os
import pathlib
import random
from collections.abc import Callable, Mapping
from typing import Any

from crdt_kv.backends import DEFAULT_BACKEND, open_backend
from crdt_kv.backends.base import Backend, ReadOnlyView
from crdt_kv.clocks import system_clock
from crdt_kv.config import load_config
from crdt_kv.errors import ConfigError
from crdt_kv.horizon import DEFAULT_MEMBER_EXPIRY_MS
from crdt_kv.store import DEFAULT_MAX_OFFSET_MS, Store
from crdt_kv.version import Resolver

__all__ = ["open"]


def open(  # noqa: A001 - the natural name, like plyvel/dbm/shelve
    path: str | os.PathLike[str] | None = None,
    *,
    config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    backend: str | Backend | None = None,
    peer_id: str | None = None,
    key_encoding: str | None = None,
    value_encoding: str | None = None,
    resolver: Resolver | None = None,
    sync_writes: bool | None = None,
    max_offset_ms: int | None = None,
    clock: Callable[[], int] | None = None,
    rng: random.Random | None = None,
    new_incarnation: bool = False,
    conflicts: str | None = None,
    keep_history: bool | None = None,
    member_expiry_s: float | None = None,
    read_only: bool = False,
) -> Store:
    """Open (creating if needed) a replicated store.

    Effective defaults: backend ``"rocksdb"``, ``key_encoding="utf-8"``,
    ``value_encoding="cbor"``, ``sync_writes=False``, ``max_offset_ms=500``, the system
    clock, a random persisted ``peer_id``. ``config`` is a mapping or a TOML file path;
    keyword arguments override it. ``backend`` may also be an open
    :class:`~crdt_kv.backends.base.Backend` instance. ``clock`` returns wall time in integer
    milliseconds and ``rng`` supplies randomness (ids), so tests and the simulator control
    both. Encodings not given default to those the store was created with. Open a store
    restored from a backup (or copied) once with ``new_incarnation=True`` so peers do not
    mistake it for the life it was copied from. ``conflicts`` (``"lww"``, the default for
    a new store, or ``"siblings"``) is fixed when the store is created; opening with the
    other mode raises :class:`ConfigError`. ``keep_history=True`` keeps every superseded
    version (:meth:`Store.history`). ``member_expiry_s`` (default 7 days): a replication
    peer silent that long stops holding the collection horizon back
    (:meth:`Store.members`). ``read_only=True`` opens an existing store without creating
    or changing any file, also while a running node holds it (RocksDB: a snapshot as of
    the open) and on read-only files; its write methods raise :class:`ReadOnlyError`, and
    a path holding no store raises :class:`StoreNotFoundError`. Raises
    :class:`ConfigError` for an unknown backend (listing the available ones), a path
    holding another backend's store, or options that contradict the stored ones.
    """
    cfg = load_config(config)
    storage, node = cfg["storage"], cfg["node"]
    # Checked before the backend opens: bools are ints to Python, and a truthy string
    # would silently switch fsync on.
    if isinstance(max_offset_ms, bool):
        raise ConfigError(f"max_offset_ms must be a non-negative int, got {max_offset_ms!r}")
    if sync_writes is not None and not isinstance(sync_writes, bool):
        raise ConfigError(f"sync_writes must be a bool, got {sync_writes!r}")

    def pick(arg: Any, table: dict[str, Any], key: str, default: Any) -> Any:
        return arg if arg is not None else table.get(key, default)

    the_path = path if path is not None else storage.get("path")
    if not isinstance(read_only, bool):
        raise ConfigError(f"read_only must be a bool, got {read_only!r}")
    if isinstance(backend, Backend):
        be = ReadOnlyView(backend) if read_only else backend
    else:
        name = pick(backend, storage, "backend", DEFAULT_BACKEND)
        be = open_backend(
            name,
            None if the_path is None else os.fspath(the_path),
            sync_writes=bool(pick(sync_writes, storage, "sync_writes", False)),
            read_only=read_only,
        )
    if clock is not None and not callable(clock):
        be.close()
        raise ConfigError("clock must be a callable returning integer milliseconds")
    return Store(
        be,
        clock=clock or system_clock,
        rng=rng or random.SystemRandom(),
        peer_id=pick(peer_id, node, "peer_id", None),
        key_encoding=pick(key_encoding, storage, "key_encoding", None),
        value_encoding=pick(value_encoding, storage, "value_encoding", None),
        resolver=resolver,
        max_offset_ms=pick(max_offset_ms, node, "max_offset_ms", DEFAULT_MAX_OFFSET_MS),
        new_incarnation=new_incarnation,
        boot_id=None if isinstance(backend, Backend) else _boot_id(),
        conflicts=pick(conflicts, storage, "conflicts", None),
        keep_history=bool(pick(keep_history, storage, "keep_history", False)),
        member_expiry_ms=int(
            1000 * pick(member_expiry_s, node, "member_expiry_s", DEFAULT_MEMBER_EXPIRY_MS / 1000)
        ),
        read_only=read_only,
    )


def _boot_id() -> bytes | None:
    """This OS boot's id (Linux), or None where unknown (every unclean reopen then rotates)."""
    try:
        raw = pathlib.Path("/proc/sys/kernel/random/boot_id").read_bytes().strip()
    except OSError:
        return None
    return raw[:64] or None
