"""RocksDB backend through ``rocksdict`` in raw (bytes-only) mode: the default.

Every batch goes through RocksDB's write-ahead log, so a write that returned survives the
process being killed; with ``sync_writes=True`` each batch is also fsynced, surviving power
loss. The records live in a column family of their own (:mod:`.rocksdb_family`). An
iterator over one family's keys (every range the store reads) sees a consistent snapshot; a
range that spans families is read piece by piece, each piece as of when it starts.

A failed write (a full disk) raises :class:`StorageError` and leaves RocksDB refusing every
later write until the database is reopened; the backend reopens its handle before the next
write, so the store works again once space is freed. Read-only opens: :mod:`.rocksdb_view`.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, cast

from rocksdict import Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from crdt_kv.accel import fill_batch
from crdt_kv.backends.base import Backend, Op
from crdt_kv.backends.rocksdb_family import (
    FAMILY,
    RECORDS,
    families,
    move_records,
    pieces,
    stray_records,
)
from crdt_kv.backends.rocksdb_view import SecondaryView
from crdt_kv.errors import ClosedError, ConfigError, StorageError

__all__ = ["RocksDBBackend", "open_backend", "storage_error"]

log = logging.getLogger(__name__)

_ERRNOS = (
    ("No space left on device", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("Read-only file system", errno.EROFS),
    ("Permission denied", errno.EACCES),
)


def storage_error(path: str, doing: str, exc: Exception) -> StorageError:
    """A :class:`StorageError` for rocksdict's plain ``Exception``, naming the cause."""
    text = str(exc)
    code = next((n for phrase, n in _ERRNOS if phrase in text), None)
    cause = f"{os.strerror(code).lower()}: " if code is not None else ""
    return StorageError(f"cannot {doing} the rocksdb store at {path!r}: {cause}{text}", errno=code)


class RocksDBBackend(Backend):
    """An ordered bytes map in a RocksDB directory."""

    name = "rocksdb"
    layout = "rocksdb/2"
    """The records in their own column family (:mod:`.rocksdb_family`)."""
    older_layouts = frozenset({"rocksdb"})
    """One keyspace (a writable open moves the records into their family first)."""

    def __init__(self, path: str, *, sync_writes: bool = False, read_only: bool = False) -> None:
        super().__init__()
        self.power_safe = sync_writes
        self.path = path
        self.read_only = read_only
        self._view: SecondaryView | None = None
        self._failed = False
        self._family: Any = None
        self._handle: Any = None
        if read_only:
            self._view = SecondaryView(path)
            self._db = self._view.db
            if self._view.families and stray_records(self._db):
                self._view.db.close()
                self._view.remove()
                raise ConfigError(
                    f"the rocksdb store at {path!r} was interrupted while moving its records "
                    f"into the {FAMILY!r} column family: open it writable once to finish"
                )
        else:
            os.makedirs(path, exist_ok=True)
            self._db = self._open()
        wopt = WriteOptions()
        wopt.sync = sync_writes
        self._wopt = wopt
        self._bind()
        self._slow = read_only
        """True when a write must take the slow path: closed, read-only, or failed."""

    def _open(self) -> Rdict:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        try:
            if FAMILY in families(self.path, opts):
                db = Rdict(self.path, opts, column_families={FAMILY: opts})
            else:
                db = Rdict(self.path, opts)
                db.create_column_family(FAMILY, opts)
        except Exception as exc:  # rocksdict raises plain Exception (e.g. the LOCK is held)
            if "LOCK" in str(exc):
                raise ConfigError(
                    f"cannot open RocksDB store at {self.path!r}: another process (a running "
                    "node?) or handle has it open; write through that one, read with a "
                    f"read-only open ({exc})"
                ) from exc
            raise ConfigError(f"cannot open RocksDB store at {self.path!r}: {exc}") from exc
        if stray_records(db):  # a store from before the family: move its records once
            move_records(db, db.get_column_family(FAMILY))
        return db

    def _bind(self) -> None:
        if not self.read_only:
            # Set once: passing the options to every write() converts them again each call.
            self._db.set_write_options(self._wopt)
        self._dbwrite = self._db.write
        self._dbget = self._db.get
        if self.read_only and not (self._view is not None and self._view.families):
            self._family, self._handle = self._db, None  # an older store, read where it is
        else:
            self._family = self._db.get_column_family(FAMILY)
            self._handle = self._db.get_column_family_handle(FAMILY)
        self._fget = self._family.get
        self.point_get = self._fget  # type: ignore[method-assign]

    def get(self, key: bytes) -> bytes | None:
        """Point read in one call: the store's hot path skips the generic wrapper."""
        if self._closed:
            self._check()
        v: bytes | None = (self._fget if key[:1] == RECORDS else self._dbget)(key)
        return v

    _get = get

    def _prepare_write(self) -> None:
        """The slow path of :meth:`write`: refuse when closed or read-only; after a failed
        write, reopen the handle (RocksDB refuses writes after a write error until then)."""
        self._check_write()
        if self._failed:
            self._drop_families()
            try:
                self._db.close()
            except Exception as exc:
                log.debug("closing the failed rocksdb handle at %r: %s", self.path, exc)
            try:
                self._db = self._open()
            except ConfigError as exc:
                raise StorageError(
                    f"the rocksdb store at {self.path!r} cannot be reopened after a failed "
                    f"write: {exc.__cause__ or exc}"
                ) from exc
            self._bind()
            self._failed = self._slow = False

    def write(self, ops: Sequence[Op]) -> None:
        """Atomic batch through the write-ahead log (fsynced with ``sync_writes``).

        :class:`StorageError` (e.g. ``errno.ENOSPC``) when RocksDB cannot write: nothing
        of the batch is applied."""
        if self._slow:
            self._prepare_write()
        wb = WriteBatch(raw_mode=True)
        try:
            fill_batch(ops, wb.put, wb.delete, self._handle, RECORDS[0])
        except (ValueError, KeyError) as exc:  # rocksdict's errors for non-bytes keys/values
            raise TypeError(f"ops must be (bytes, bytes | None) pairs: {exc!r}") from exc
        try:
            self._dbwrite(wb)
        except Exception as exc:  # rocksdict raises plain Exception
            self._failed = self._slow = True
            raise storage_error(self.path, "write to", exc) from exc

    def make_durable(self) -> None:
        """Flush and fsync the write-ahead log (every earlier write becomes durable)."""
        self._check_write()
        try:
            self._db.flush_wal(True)
        except Exception as exc:  # rocksdict raises plain Exception
            self._failed = self._slow = True
            raise storage_error(self.path, "sync", exc) from exc

    def _get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        ks: list[Any] = list(keys)
        ours = [k[:1] == RECORDS for k in ks]
        if all(ours):
            return cast(list[bytes | None], self._family.get(ks))
        if not any(ours):
            return cast(list[bytes | None], self._db.get(ks))
        mine: Any = self._family.get([k for k, o in zip(ks, ours, strict=True) if o])
        rest: Any = self._db.get([k for k, o in zip(ks, ours, strict=True) if not o])
        found, other = iter(mine), iter(rest)
        return [next(found) if o else next(other) for o in ours]

    _write = write

    def _iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        parts = [(self._family if fam else self._db, a, z) for fam, a, z in pieces(start, stop)]
        if reverse:
            return itertools.chain.from_iterable(
                self._iterate_back(db, a, z) for db, a, z in reversed(parts)
            )
        return itertools.chain.from_iterable(self._iterate_forward(db, a, z) for db, a, z in parts)

    def _iterate_forward(
        self, db: Rdict, start: bytes | None, stop: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        """RocksDB stops at ``stop`` itself (an upper bound in the read options), so the
        loop compares no keys: range scans are the store's hot read path (issue 13)."""
        if stop is None:
            items = db.items(from_key=start)
        else:
            bound = ReadOptions()
            bound.set_iterate_upper_bound(stop)
            items = db.items(from_key=start, read_opt=bound)
        for item in cast(Iterator[tuple[bytes, bytes]], items):
            if self._closed:
                raise ClosedError("rocksdb backend closed during iteration")
            yield item

    def _iterate_back(
        self, db: Rdict, start: bytes | None, stop: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        items = cast(Iterator[tuple[bytes, bytes]], db.items(backwards=True, from_key=stop))
        for k, v in items:
            if self._closed:
                raise ClosedError("rocksdb backend closed during iteration")
            if stop is not None and k >= stop:
                continue
            if start is not None and k < start:
                return
            yield k, v

    def _drop_families(self) -> None:
        """Let go of the family's handles: while one is alive the database stays open (its
        lock held), whatever ``close`` was called on."""
        vars(self).pop("point_get", None)  # back to get, which raises ClosedError
        self._family = self._handle = self._fget = None

    def _close(self) -> None:
        """Never raises: a handle that failed a write refuses to close cleanly, and what
        it holds is already durable or already lost."""
        self._slow = True
        self._drop_families()
        try:
            self._db.close()
        except Exception as exc:
            log.warning("closing the rocksdb store at %r: %s", self.path, exc)
        if self._view is not None:
            self._view.remove()


def open_backend(
    path: str | None = None, *, sync_writes: bool = False, read_only: bool = False
) -> RocksDBBackend:
    """Open (creating if missing, unless ``read_only``) a RocksDB store in directory
    ``path``."""
    if path is None:
        raise ConfigError("the rocksdb backend needs a path (a directory)")
    return RocksDBBackend(os.fspath(path), sync_writes=sync_writes, read_only=read_only)
