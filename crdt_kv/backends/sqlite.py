"""SQLite backend (stdlib ``sqlite3``) in WAL mode: one file, zero extra dependencies.

``synchronous=NORMAL`` in WAL mode survives a process crash; ``sync_writes=True`` switches
to ``FULL`` for power-loss durability. Range reads page through the table in chunks so a
long scan never pins a read transaction while the store writes. The connection holds an
exclusive lock (``locking_mode=EXCLUSIVE``) from open to close: a second opener gets
:class:`ConfigError`, as with RocksDB, because two stores writing one file would corrupt
each other's sequence numbers and counters.

Read-only (``read_only=True``): a cleanly closed store is opened ``immutable``, which
creates no ``-wal``/``-shm`` file beside it and works on read-only files. A store with a
``-wal`` file is held by a process (a running node) or was not closed cleanly: it cannot be
read without writing, so the open is refused with that reason.

Write failures (a full disk) raise :class:`StorageError`; the transaction is rolled back
and the next write works once the cause is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import sqlite3
from collections.abc import Iterator, Sequence

from crdt_kv.backends.base import Backend, Op, checked_ops
from crdt_kv.backends.files import SQLITE_FILENAME, sqlite_file
from crdt_kv.errors import ConfigError, StorageError, StoreNotFoundError

__all__ = ["SQLiteBackend", "open_backend"]

_CHUNK = 512
FILENAME = SQLITE_FILENAME
_ERRNOS = {
    "SQLITE_FULL": errno.ENOSPC,
    "SQLITE_READONLY": errno.EROFS,
    "SQLITE_PERM": errno.EACCES,
    "SQLITE_IOERR": errno.EIO,
}


def _denied(path: str) -> bool:
    """True when this process may not write the database file or its directory."""
    here = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return True
    return not os.access(here, os.W_OK | os.X_OK)


def _open_error(path: str, exc: sqlite3.Error) -> ConfigError:
    """Why a writable open failed, in words a user can act on."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        why = "another process is using it"
    elif _denied(path):  # SQLite reports it as CANTOPEN, READONLY or IOERR, by the case
        why = "permission denied (the file or its directory is not writable)"
    else:
        why = str(exc)
    return ConfigError(f"cannot open SQLite store at {path!r}: {why} ({exc})")


class SQLiteBackend(Backend):
    """An ordered bytes map in table ``kv`` of a SQLite database file."""

    name = "sqlite"

    def __init__(self, path: str, *, sync_writes: bool = False, read_only: bool = False) -> None:
        super().__init__()
        self.power_safe = sync_writes
        self.path = path
        self.read_only = read_only
        if read_only:
            self._db = _connect_read_only(path)
            return
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            raise _open_error(path, exc) from exc
        try:
            db = self._db
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if sync_writes else 'NORMAL'}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
            )
            db.execute("BEGIN EXCLUSIVE")  # take the lock now, not at the first write
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.close()
            raise _open_error(path, exc) from exc

    def _get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def make_durable(self) -> None:
        """Checkpoint the WAL into the database file with fsync (``synchronous=NORMAL``
        does not sync WAL commits, so a power failure could otherwise lose them)."""
        self._check_write()
        try:
            self._db.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from exc

    def _write(self, ops: Sequence[Op]) -> None:
        checked = checked_ops(ops)  # a str value would otherwise be stored as TEXT
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for k, v in checked:
                if v is None:
                    db.execute("DELETE FROM kv WHERE k = ?", (k,))
                else:
                    db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (k, v))
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(self.path, exc) from exc
            raise

    def _iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        lo, hi = start, stop
        lo_op, hi_op = ">=", "<"
        order = "DESC" if reverse else "ASC"
        while True:
            self._check()
            where, args = [], []
            if lo is not None:
                where.append(f"k {lo_op} ?")
                args.append(lo)
            if hi is not None:
                where.append(f"k {hi_op} ?")
                args.append(hi)
            sql = "SELECT k, v FROM kv"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += f" ORDER BY k {order} LIMIT {_CHUNK}"
            rows = self._db.execute(sql, args).fetchall()
            for k, v in rows:
                yield bytes(k), bytes(v)
            if len(rows) < _CHUNK:
                return
            if reverse:
                hi = bytes(rows[-1][0])
            else:
                lo, lo_op = bytes(rows[-1][0]), ">"

    def _close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # SQLite rolls back what is still open
            self._db.close()


def _storage_error(path: str, exc: sqlite3.Error) -> StorageError:
    name = getattr(exc, "sqlite_errorname", "") or ""
    code = next((n for prefix, n in _ERRNOS.items() if name.startswith(prefix)), None)
    cause = f"{os.strerror(code).lower()}: " if code is not None else ""
    return StorageError(f"cannot write to the SQLite store at {path!r}: {cause}{exc}", errno=code)


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A connection that reads ``path`` without creating or changing any file."""
    if not os.path.isfile(path):
        raise StoreNotFoundError(f"no SQLite store at {path!r}")
    if os.path.exists(path + "-wal"):
        raise ConfigError(
            f"the SQLite store at {path!r} is held by another process (a running node) or "
            "was not closed cleanly (its -wal file is present): SQLite cannot read it without "
            "writing; stop that process, or open the store read-write once to recover it"
        )
    uri = pathlib.Path(path).absolute().as_uri() + "?mode=ro&immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        found = db.execute("SELECT name FROM sqlite_master WHERE name = 'kv'").fetchone()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open SQLite store at {path!r} read-only: {exc}") from exc
    if found is None:
        db.close()
        raise StoreNotFoundError(f"{path!r} is a SQLite database but not a crdt_kv store")
    return db


def open_backend(
    path: str | None = None, *, sync_writes: bool = False, read_only: bool = False
) -> SQLiteBackend:
    """Open (creating if missing, unless ``read_only``) a SQLite store; ``path`` is a
    directory or a ``.sqlite3`` file."""
    if path is None:
        raise ConfigError("the sqlite backend needs a path (a directory or a file)")
    p = os.fspath(path)
    if not read_only and not p.endswith((".sqlite", ".sqlite3", ".db")):
        os.makedirs(p, exist_ok=True)
    return SQLiteBackend(sqlite_file(p), sync_writes=sync_writes, read_only=read_only)
