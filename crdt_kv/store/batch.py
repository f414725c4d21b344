"""The write batch: writes collected in memory and committed as one atomic commit."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from crdt_kv.codec import Encoder, short_repr
from crdt_kv.errors import ClosedError, EncodingError
from crdt_kv.version import Version

__all__ = ["Batch", "BatchOp"]

BatchOp = tuple[bytes, bytes, bool]
"""One queued write: ``(encoded key, encoded value, deleted)``."""


class Batch:
    """Writes collected and committed atomically on ``__exit__`` (or :meth:`commit`).

    If the ``with`` block raises, nothing is written. Values are encoded as they are added,
    so an unencodable value raises :class:`EncodingError` at once. Build one with
    :meth:`crdt_kv.store.Store.batch`; it encodes with the store's encodings and hands the
    queued writes to ``commit`` (the store's batch commit).
    """

    def __init__(
        self, kenc: Encoder, venc: Encoder, commit: Callable[[list[BatchOp]], list[Version]]
    ) -> None:
        self._kenc, self._venc, self._commit = kenc, venc, commit
        self._ops: list[BatchOp] = []
        self._done = False
        self.versions: list[Version] = []

    def _check(self) -> None:
        if self._done:
            raise ClosedError("batch was already committed or discarded")

    def put(self, key: Any, value: Any) -> None:
        """Queue a put."""
        if self._done:
            self._check()
        try:
            k = self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {short_repr(key)}: {exc}") from None
        try:
            v = self._venc(value)
        except EncodingError as exc:
            raise EncodingError(f"value of key {short_repr(key)}: {exc}") from None
        self._ops.append((k, v, False))

    def delete(self, key: Any) -> None:
        """Queue a tombstone."""
        self._check()
        try:
            k = self._kenc(key)
        except EncodingError as exc:
            raise EncodingError(f"key {short_repr(key)}: {exc}") from None
        self._ops.append((k, b"", True))

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> list[Version]:
        """Write every queued operation in one atomic batch; returns their versions."""
        self._check()
        self._done = True
        self.versions = self._commit(self._ops) if self._ops else []
        return self.versions

    def discard(self) -> None:
        """Drop every queued operation."""
        self._done = True
        self._ops.clear()

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()
