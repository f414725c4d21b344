"""The hot paths that have a compiled twin, and which implementation runs.

Each function here exists twice: in pure Python below (the reference: what the spec and
the on-disk format are defined by) and in C, in the optional extension
``crdt_kv._speedups`` (``crdt_kv/_speedups.c``), which must return exactly the same
results (``tests/test_accel.py`` compares them on random inputs). This is the only module
that imports the extension. At import it picks:

- the pure path if the environment sets ``CRDT_KV_PURE_PYTHON`` (to anything but ``0``);
- else the compiled path if the extension was built (``pip install`` compiles it when gcc
  and the Python headers are there);
- else the pure path, with a one-time :class:`SpeedupsWarning` (the build is optional, so
  an install without a compiler still succeeds).

:data:`DESCRIPTION` says which, and why (``crdt-kv --version`` prints it).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from crdt_kv.layout_fingerprints import pack_bucket

__all__ = [
    "ACTIVE",
    "COMPILED",
    "DESCRIPTION",
    "PURE",
    "Impl",
    "Note",
    "SpeedupsWarning",
    "blake2b",
    "bucket_ops",
    "fold",
    "position",
    "sort_index",
]

Note = tuple[bytes, int, int]
"""One key's change as the buckets see it: ``(key, digest delta, count delta)``; the count
delta is 1 for a new key (``True`` from the commit path), 0 for a replaced record, -1 for
a removed one."""

_MOD = 1 << 256
_POSITION = hashlib.blake2b(digest_size=8)


class SpeedupsWarning(RuntimeWarning):
    """The compiled extension is missing: everything works, more slowly."""


def _blake2b(data: bytes, digest_size: int = 64) -> bytes:
    return hashlib.blake2b(data, digest_size=digest_size).digest()


def _position(key: bytes) -> bytes:
    h = _POSITION.copy()
    h.update(key)
    return h.digest()


def _fold(  # noqa: PLR0917 - positional, like its compiled twin
    notes: Iterable[Note],
    counts: list[int],
    sums: list[int],
    added: list[bytes],
    removed: list[bytes],
    prefix: bytes,
    shift: int,
) -> list[int]:
    touched: set[int] = set()
    copy, touch, grow, drop = _POSITION.copy, touched.add, added.append, removed.append
    frombytes = int.from_bytes
    for k, delta, dc in notes:
        h = copy()
        h.update(k)
        pb = h.digest()
        b = frombytes(pb) >> shift  # big-endian: the default
        sums[b] += delta
        touch(b)
        if dc:
            counts[b] += dc
            if dc > 0:
                grow(prefix + pb + k)
            else:
                drop(prefix + pb + k)
    for b in touched:
        sums[b] %= _MOD
    return list(touched)


def _bucket_ops(
    keys: Sequence[bytes], counts: list[int], sums: list[int], touched: Iterable[int]
) -> list[tuple[bytes, bytes | None]]:
    return [
        (keys[b], pack_bucket(counts[b], sums[b]) if counts[b] else None) for b in sorted(touched)
    ]


@dataclass(frozen=True, slots=True)
class Impl:
    """One implementation of every accelerated function (see the module-level names)."""

    name: str
    blake2b: Callable[[bytes, int], bytes]
    position: Callable[[bytes], bytes]
    fold: Callable[
        [Iterable[Note], list[int], list[int], list[bytes], list[bytes], bytes, int],
        list[int],
    ]
    sort_index: Callable[[Sequence[bytes]], list[bytes]]
    bucket_ops: Callable[
        [Sequence[bytes], list[int], list[int], Iterable[int]], list[tuple[bytes, bytes | None]]
    ]


PURE = Impl("python", _blake2b, _position, _fold, sorted, _bucket_ops)
"""The reference implementation."""


def _load() -> tuple[Impl | None, str]:
    if os.environ.get("CRDT_KV_PURE_PYTHON", "") not in {"", "0"}:
        return None, "speedups off: CRDT_KV_PURE_PYTHON is set"
    try:
        # by name: mypy, given a static import, reports a false no-redef in crdt_kv/__init__
        ext = importlib.import_module("crdt_kv._speedups")
    except ImportError as exc:
        warnings.warn(
            f"crdt_kv._speedups is not built ({exc}); crdt_kv runs its pure-Python path, "
            "which is slower. Reinstall crdt_kv where gcc and the Python headers are "
            "available, or set CRDT_KV_PURE_PYTHON=1 to choose the pure path quietly.",
            SpeedupsWarning,
            stacklevel=2,
        )
        return None, "speedups off: crdt_kv._speedups is not built"
    impl = Impl("c", ext.blake2b, ext.position, ext.fold, ext.sort_index, ext.bucket_ops)
    return impl, "speedups: compiled"


COMPILED, DESCRIPTION = _load()
"""The compiled implementation, or None (not built, or the pure path was asked for)."""
ACTIVE = COMPILED or PURE
"""The implementation the functions below are."""

blake2b = ACTIVE.blake2b
"""``blake2b(data, digest_size=64)``: BLAKE2b without key, salt or personalisation
(RFC 7693), a ``digest_size``-byte digest (1-64)."""
position = ACTIVE.position
"""``position(key)``: the 8-byte big-endian position of an encoded key (BLAKE2b with an
8-byte digest; :func:`crdt_kv.fingerprint.position_bytes`)."""
fold = ACTIVE.fold
"""``fold(notes, counts, sums, added, removed, prefix, shift) -> touched``: for each note
``(key, delta, dc)``, with ``p`` the key's :func:`position` and ``b`` its bucket (the
position's top bits: ``int(p) >> shift``): add ``delta`` to ``sums[b]`` and ``dc`` to
``counts[b]``, and append ``prefix + p + key`` to ``added`` if ``dc > 0``, to ``removed``
if ``dc < 0``; then reduce each touched sum mod 2**256. Returns the touched buckets, each
once, in no particular order. ``counts`` and ``sums`` are changed in place."""
sort_index = ACTIVE.sort_index
"""``sort_index(items) -> list[bytes]``: ``sorted(items)`` for bytes items (the compiled
twin radix-sorts on the first 8 bytes: index keys start with a hashed position)."""
bucket_ops = ACTIVE.bucket_ops
"""``bucket_ops(keys, counts, sums, touched) -> ops``: for each touched bucket ``b`` in
ascending order, ``(keys[b], pack_bucket(counts[b], sums[b]))``, or ``(keys[b], None)`` if
``counts[b]`` is 0: the ``f`` entries of a checkpoint
(:func:`crdt_kv.layout_fingerprints.pack_bucket`)."""
