"""Which built-in backend's files a path holds, found without opening (or creating) any.

Opening a RocksDB directory with the SQLite backend would drop a SQLite file inside it (and
the reverse a RocksDB directory beside a SQLite file), and a read-only open must never
create a store where there is none: both are decided from the files, before a backend is
opened. Stores also record their backend (the ``mbackend`` key, :mod:`crdt_kv.store.meta`),
checked once open; older stores are known by their files alone.
"""

from __future__ import annotations

import os

__all__ = ["SQLITE_FILENAME", "SQLITE_SUFFIXES", "detect", "sqlite_file"]

SQLITE_FILENAME = "crdt_kv.sqlite3"
"""The database file of a SQLite store given a directory."""
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
"""A SQLite store path ending so names the database file itself."""
_SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_file(path: str) -> str:
    """The database file of the SQLite store at ``path`` (a file, or a directory)."""
    return path if path.endswith(SQLITE_SUFFIXES) else os.path.join(path, SQLITE_FILENAME)


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError:
        return False
    return head in (_SQLITE_MAGIC, b"")  # an empty file is what sqlite3 creates first


def detect(path: str) -> str | None:
    """``"rocksdb"`` or ``"sqlite"`` when ``path`` holds that backend's files, else None
    (nothing there, an empty directory, or files no built-in backend made)."""
    if os.path.isfile(path):
        return "sqlite" if _is_sqlite(path) else None
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, "CURRENT")):
        return "rocksdb"
    if os.path.isfile(os.path.join(path, SQLITE_FILENAME)):
        return "sqlite"
    return None
