"""SQLite backend (stdlib ``sqlite3``) in WAL mode: one file, zero extra dependencies.

``synchronous=NORMAL`` in WAL mode survives a process crash; ``sync_writes=True`` switches
to ``FULL`` for power-loss durability. Range reads page through the table in chunks so a
long scan never pins a read transaction while the store writes. The connection holds an
exclusive lock (``locking_mode=EXCLUSIVE``) from open to close: a second opener gets
:class:`ConfigError`, as with RocksDB, because two stores writing one file would corrupt
each other's sequence numbers and counters.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence

from crdt_kv.backends.base import Backend, Op, checked_ops
from crdt_kv.errors import ConfigError

__all__ = ["SQLiteBackend", "open_backend"]

_CHUNK = 512
FILENAME = "crdt_kv.sqlite3"


class SQLiteBackend(Backend):
    """An ordered bytes map in table ``kv`` of a SQLite database file."""

    name = "sqlite"

    def __init__(self, path: str, *, sync_writes: bool = False) -> None:
        super().__init__()
        self.power_safe = sync_writes
        self.path = path
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open SQLite store at {path!r}: {exc}") from exc
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
            raise ConfigError(
                f"cannot open SQLite store at {path!r} (is another process using it?): {exc}"
            ) from exc

    def _get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def make_durable(self) -> None:
        """Checkpoint the WAL into the database file with fsync (``synchronous=NORMAL``
        does not sync WAL commits, so a power failure could otherwise lose them)."""
        self._check()
        self._db.execute("PRAGMA wal_checkpoint(FULL)").fetchall()

    def _write(self, ops: Sequence[Op]) -> None:
        checked = checked_ops(ops)  # a str value would otherwise be stored as TEXT
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for k, v in checked:
                if v is None:
                    db.execute("DELETE FROM kv WHERE k = ?", (k,))
                else:
                    db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (k, v))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

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
        self._db.close()


def open_backend(path: str | None = None, *, sync_writes: bool = False) -> SQLiteBackend:
    """Open (creating if missing) a SQLite store; ``path`` is a directory or a ``.sqlite3`` file."""
    if path is None:
        raise ConfigError("the sqlite backend needs a path (a directory or a file)")
    p = os.fspath(path)
    if not p.endswith((".sqlite", ".sqlite3", ".db")):
        os.makedirs(p, exist_ok=True)
        p = os.path.join(p, FILENAME)
    return SQLiteBackend(p, sync_writes=sync_writes)
