"""RocksDB backend through ``rocksdict`` in raw (bytes-only) mode: the default.

Every batch goes through RocksDB's write-ahead log, so a write that returned survives the
process being killed; with ``sync_writes=True`` each batch is also fsynced, surviving power
loss. Iterators read a consistent snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import cast

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from crdt_kv.backends.base import Backend, Op
from crdt_kv.errors import ClosedError, ConfigError

__all__ = ["RocksDBBackend", "open_backend"]


class RocksDBBackend(Backend):
    """An ordered bytes map in a RocksDB directory."""

    name = "rocksdb"

    def __init__(self, path: str, *, sync_writes: bool = False) -> None:
        super().__init__()
        self.power_safe = sync_writes
        os.makedirs(path, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.path = path
        try:
            self._db = Rdict(path, opts)
        except Exception as exc:  # rocksdict raises plain Exception (e.g. the LOCK is held)
            raise ConfigError(f"cannot open RocksDB store at {path!r}: {exc}") from exc
        wopt = WriteOptions()
        wopt.sync = sync_writes
        # Set once: passing the options to every write() converts them again each call.
        self._db.set_write_options(wopt)
        self._dbwrite = self._db.write
        self._dbget = self._db.get

    def get(self, key: bytes) -> bytes | None:
        """Point read in one call: the store's hot path skips the generic wrapper."""
        if self._closed:
            self._check()
        v: bytes | None = self._dbget(key)
        return v

    _get = get

    def write(self, ops: Sequence[Op]) -> None:
        """Atomic batch through the write-ahead log (fsynced with ``sync_writes``)."""
        if self._closed:
            self._check()
        wb = WriteBatch(raw_mode=True)
        put, delete = wb.put, wb.delete
        try:
            for k, v in ops:
                if v is None:
                    delete(k)
                else:
                    put(k, v)
        except (ValueError, KeyError) as exc:  # rocksdict's errors for non-bytes keys/values
            raise TypeError(f"ops must be (bytes, bytes | None) pairs: {exc!r}") from exc
        self._dbwrite(wb)

    def make_durable(self) -> None:
        """Flush and fsync the write-ahead log (every earlier write becomes durable)."""
        self._check()
        self._db.flush_wal(True)

    def _get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        return cast(list[bytes | None], self._db.get(list(keys)))

    _write = write

    def _iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        items: Iterator[tuple[bytes, bytes]]
        if not reverse:
            items = cast(Iterator[tuple[bytes, bytes]], self._db.items(from_key=start))
            for k, v in items:
                if self._closed:
                    raise ClosedError("rocksdb backend closed during iteration")
                if stop is not None and k >= stop:
                    return
                yield k, v
        else:
            items = cast(
                Iterator[tuple[bytes, bytes]], self._db.items(backwards=True, from_key=stop)
            )
            for k, v in items:
                if self._closed:
                    raise ClosedError("rocksdb backend closed during iteration")
                if stop is not None and k >= stop:
                    continue
                if start is not None and k < start:
                    return
                yield k, v

    def _close(self) -> None:
        self._db.close()


def open_backend(path: str | None = None, *, sync_writes: bool = False) -> RocksDBBackend:
    """Open (creating if missing) a RocksDB store in directory ``path``."""
    if path is None:
        raise ConfigError("the rocksdb backend needs a path (a directory)")
    return RocksDBBackend(os.fspath(path), sync_writes=sync_writes)
