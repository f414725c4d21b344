"""The RocksDB backend keeps the store's records in a column family of their own.

A store's keyspace holds, besides one record per key (prefix ``d``, :data:`RECORDS`), its
change log, position index, bucket fingerprints and metadata: about three backend keys per
record. A point read of a record in one shared keyspace searches a memtable and SST files
that hold all of them; in a family of its own it searches only records, as a plain
key-value store would. That took a ``get`` from 0.68x to 0.78x of raw ``rocksdict``'s
(``bench/bench_local.py``, issue 13). Scans of the records and writes are not slower:
one write batch still spans both families atomically, through one write-ahead log.

Which family holds a key is decided by its first byte alone, so the backend is still one
ordered bytes map to the store: a range is read as up to three pieces in key order
(:func:`pieces`). Stores written before the family existed hold their records in the
default family; the first writable open moves them (:func:`move_records`, atomic per
chunk, so a crash in between leaves every record in exactly one family and the next open
finishes the move). A read-only open cannot move anything: it reads an old store's
records where they are, and refuses a store whose move was interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import cast

from rocksdict import Options, Rdict, ReadOptions, WriteBatch

from crdt_kv.layout import DATA, DATA_END

__all__ = [
    "FAMILY",
    "MOVE_CHUNK",
    "RECORDS",
    "RECORDS_END",
    "families",
    "move_records",
    "pieces",
    "stray_records",
]

log = logging.getLogger(__name__)

FAMILY = "data"
"""The column family of the records."""
RECORDS = DATA
"""The first byte of every key the family holds (the store's record prefix)."""
RECORDS_END = DATA_END
MOVE_CHUNK = 10_000
"""Records moved per atomic batch when an older store is opened."""


def families(path: str, opts: Options) -> list[str]:
    """The column families of the RocksDB database at ``path`` ([] if there is none)."""
    try:
        return list(Rdict.list_cf(path, opts))
    except Exception:  # rocksdict raises plain Exception: no database there yet
        return []


def stray_records(db: Rdict) -> bool:
    """Whether the default family still holds a record (an older store's, or a move that
    was interrupted)."""
    bound = ReadOptions()
    bound.set_iterate_upper_bound(RECORDS_END)
    return any(True for _ in db.keys(from_key=RECORDS, read_opt=bound))


def move_records(db: Rdict, family: Rdict) -> int:
    """Move every record from the default family to ``family``, :data:`MOVE_CHUNK` at a
    time, each chunk in one atomic batch (put there, delete here). Returns how many."""
    handle = db.get_column_family_handle(FAMILY)
    moved = 0
    start = RECORDS  # past the chunks moved: not over their deletion markers again
    while True:
        bound = ReadOptions()
        bound.set_iterate_upper_bound(RECORDS_END)
        chunk: list[tuple[bytes, bytes]] = []
        for item in cast(Iterator[tuple[bytes, bytes]], db.items(from_key=start, read_opt=bound)):
            chunk.append(item)
            if len(chunk) >= MOVE_CHUNK:
                break
        if not chunk:
            break
        start = chunk[-1][0] + b"\x00"
        wb = WriteBatch(raw_mode=True)
        for k, v in chunk:
            wb.put(k, v, handle)
            wb.delete(k)
        db.write(wb)
        moved += len(chunk)
    if moved:
        family.flush()
        db.flush()
        log.info("moved %d records into the %r column family", moved, FAMILY)
    return moved


Piece = tuple[bool, bytes | None, bytes | None]


def pieces(start: bytes | None, stop: bytes | None) -> list[Piece]:
    """``[start, stop)`` cut where the records begin and end: ``(in the family, lo, hi)``
    for each non-empty piece, in key order (None: unbounded)."""
    out: list[Piece] = []
    cuts: tuple[Piece, ...] = (
        (False, None, RECORDS),
        (True, RECORDS, RECORDS_END),
        (False, RECORDS_END, None),
    )
    for fam, lo, hi in cuts:
        a = lo if start is None or (lo is not None and start < lo) else start
        z = hi if stop is None or (hi is not None and stop > hi) else stop
        if a is None or z is None or a < z:
            out.append((fam, a, z))
    return out
