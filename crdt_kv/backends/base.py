"""The storage-backend interface: an ordered bytes map with atomic batches.

A backend knows nothing about registers, clocks or replication. It must provide
byte-ordered keys, point reads, atomic multi-key writes (all or nothing, durable against a
process crash once ``write`` returns, and against power loss when opened with
``sync_writes=True``), and half-open range iteration in either direction. The conformance
suite in ``tests/test_backends.py`` runs unchanged against every implementation.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

from crdt_kv.errors import ClosedError, ReadOnlyError

__all__ = ["Backend", "Op", "ReadOnlyView", "checked_ops"]

Op = tuple[bytes, bytes | None]
"""One write of a batch: ``(key, value)`` puts, ``(key, None)`` deletes."""


def checked_ops(ops: Sequence[Op]) -> list[Op]:
    """Validate a batch before any of it is applied, so a bad op cannot half-apply it.

    Keys and values must be bytes-like (values may be None for a delete); anything else
    raises :class:`TypeError` naming the op. Returns the ops with plain ``bytes``.
    """
    out: list[Op] = []
    for i, op in enumerate(ops):
        try:
            k, v = op
        except (TypeError, ValueError):
            raise TypeError(f"op {i} of the batch is not a (key, value) pair: {op!r}") from None
        if not isinstance(k, bytes | bytearray | memoryview):
            raise TypeError(f"op {i} of the batch: key must be bytes, not {type(k).__name__}")
        if v is not None and not isinstance(v, bytes | bytearray | memoryview):
            raise TypeError(
                f"op {i} of the batch (key {bytes(k)!r}): value must be bytes or None, "
                f"not {type(v).__name__}"
            )
        out.append((bytes(k), None if v is None else bytes(v)))
    return out


class Backend(abc.ABC):
    """Abstract ordered bytes map. Subclasses implement the ``_``-prefixed methods."""

    name: str = "abstract"
    layout: str = ""
    """What a new store's ``mbackend`` records (``spec/data-model.md``): :attr:`name`, and
    after a ``/`` the version of the backend's physical layout once it has had more than
    one (``rocksdb/2``), so that a release that does not know that layout refuses the store
    instead of misreading it. Empty: :attr:`name`."""
    older_layouts: frozenset[str] = frozenset()
    """Earlier layouts of this backend that opening upgrades (``mbackend`` is rewritten by a
    writable open) and a read-only open reads as they are."""
    power_safe: bool = False
    """True when a batch whose ``write`` returned survives power loss (fsync per batch, or
    nothing to lose). The store rotates its incarnation after an unclean shutdown of a
    backend that is not power-safe, because the tail of its log may be gone."""
    read_only: bool = False
    """True when opened read-only: :meth:`write` and :meth:`make_durable` raise
    :class:`ReadOnlyError` and nothing on disk is created or changed."""

    def __init__(self) -> None:
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.name} backend is closed")

    def _check_write(self) -> None:
        """:meth:`_check`, and refuse a write to a read-only backend."""
        self._check()
        if self.read_only:
            raise ReadOnlyError(f"{self.name} backend {self.where} is open read-only")

    @property
    def where(self) -> str:
        """Where the data lives, for messages: ``at '<path>'`` or ``in memory``."""
        path = getattr(self, "path", None)
        return f"at {path!r}" if path else "in memory"

    def get(self, key: bytes) -> bytes | None:
        """Return the value stored under ``key`` or None."""
        self._check()
        return self._get(key)

    point_get = get
    """:meth:`get` of a record key (one starting with ``b"d"``, the store's record prefix)
    as the cheapest callable the backend has, for the store's ``get``, which looks it up on
    every read. A backend may bind a faster one on the instance while open, valid for
    record keys only: the RocksDB backend's is its records' column family's own ``get``,
    with no Python frame (dropped at close, so ``point_get`` raises :class:`ClosedError` as
    ``get`` does)."""

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Point-read several keys at once (backends may do it in one call)."""
        self._check()
        return self._get_many(keys)

    def write(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` atomically, in order (a later op on the same key wins).

        An op that is not ``(bytes, bytes | None)`` raises :class:`TypeError` and nothing
        is written.
        """
        self._check_write()
        if ops:
            self._write(ops)

    def make_durable(self) -> None:
        """Make every write so far survive a power failure (fsync), whatever ``sync_writes``.

        The store calls it for the few writes whose loss would be unsafe rather than merely
        lossy, e.g. the "open" marker that tells the next open whether the log tail can be
        trusted. Backends that are ``power_safe`` need do nothing (the default).
        """
        self._check_write()

    def iterate(
        self, start: bytes | None = None, stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` for ``start <= key < stop`` in byte order (or reversed).

        Writes made while iterating may or may not be seen, but iteration never fails
        because of them and never yields a key twice. Closing the backend makes a running
        iteration raise :class:`ClosedError` (at the latest after its current page), never
        read freed resources.
        """
        self._check()
        return self._iterate(start, stop, reverse)

    def close(self) -> None:
        """Release the backend. Idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _get(self, key: bytes) -> bytes | None: ...

    def _get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self._get(k) for k in keys]

    @abc.abstractmethod
    def _write(self, ops: Sequence[Op]) -> None: ...

    @abc.abstractmethod
    def _iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...


class ReadOnlyView(Backend):
    """Reads of another open backend, refusing every write: ``crdt_kv.open(backend=be,
    read_only=True)`` with a backend instance. Closing the view leaves ``be`` open."""

    read_only = True

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._inner = backend
        self.name = backend.name
        self.layout = backend.layout
        self.older_layouts = backend.older_layouts
        self.power_safe = backend.power_safe
        self.path = getattr(backend, "path", None)

    def _get(self, key: bytes) -> bytes | None:
        return self._inner.get(key)

    def _get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._inner.get_many(keys)

    def _write(self, ops: Sequence[Op]) -> None:  # pragma: no cover - write() refuses first
        raise ReadOnlyError(f"{self.name} backend {self.where} is open read-only")

    def _iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        for item in self._inner.iterate(start, stop, reverse=reverse):
            self._check()
            yield item

    def _close(self) -> None:
        pass
