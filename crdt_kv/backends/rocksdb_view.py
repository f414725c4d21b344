"""A read-only view of a RocksDB store that creates and changes no file in it, and works
while a running node holds the store.

A node holds the store's RocksDB ``LOCK``, so the view opens RocksDB as a *secondary*
instance, which reads the primary's files without the lock (its own log goes to a private
directory). ``rocksdict`` also rewrites a ``rocksdict-config.json`` in the directory it
opens, on every open and in every mode; that would change a file of the store (and fail on
read-only files). So the view opens a private temporary directory of symbolic links to the
store's files, and is a snapshot of the store as it was when opened. The directory is
removed at close.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from rocksdict import AccessType, Options, Rdict

from crdt_kv.backends.rocksdb_family import FAMILY, families
from crdt_kv.errors import ConfigError

__all__ = ["SecondaryView"]

_ATTEMPTS = 5
"""Opens tried: the primary may replace a file between listing and opening."""
_PRIVATE = ("LOCK", "LOG", "rocksdict-config.json")
"""Files of the store the view must not link: its lock, info log and rocksdict's config
(the secondary instance writes its own)."""


class SecondaryView:
    """An open secondary RocksDB instance over links to the files of ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.families = False
        """Whether the store keeps its records in their column family (a store written
        before it existed holds them in the default one)."""
        self.tmp = tempfile.mkdtemp(prefix="crdt_kv-readonly-")
        last: Exception | None = None
        try:
            for attempt in range(_ATTEMPTS):
                try:
                    self.db = self._open(attempt)
                    return
                except Exception as exc:  # rocksdict raises plain Exception
                    last = exc
            raise ConfigError(f"cannot open the RocksDB store at {path!r} read-only: {last}")
        except BaseException:
            self.remove()
            raise

    def _open(self, attempt: int) -> Rdict:
        view = os.path.join(self.tmp, f"view{attempt}")
        os.mkdir(view)
        src = os.path.abspath(self.path)
        try:
            names = os.listdir(src)
        except OSError as exc:
            raise ConfigError(f"cannot read the RocksDB store at {self.path!r}: {exc}") from exc
        for name in names:
            if name in _PRIVATE or name.startswith("LOG.old"):
                continue
            os.symlink(os.path.join(src, name), os.path.join(view, name))
        opts = Options(raw_mode=True)
        opts.set_max_open_files(-1)  # every table file open now: the primary may delete it
        secondary = os.path.join(self.tmp, f"secondary{attempt}")
        access = AccessType.secondary(secondary)
        self.families = FAMILY in families(view, opts)
        if self.families:
            return Rdict(view, opts, column_families={FAMILY: opts}, access_type=access)
        return Rdict(view, opts, access_type=access)

    def remove(self) -> None:
        """Delete the private directory (the store's files are untouched)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
