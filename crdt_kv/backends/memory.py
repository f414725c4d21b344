"""In-memory backend on ``sortedcontainers.SortedDict``: fast, ordered, not persistent.

Its contents live as long as the object. The simulator models a crash by dropping the
:class:`~crdt_kv.store.Store` and reopening a new one on the same ``MemoryBackend``, which
is exactly "every committed batch was durable".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sortedcontainers import SortedDict

from crdt_kv.backends.base import Backend, Op, checked_ops

__all__ = ["MemoryBackend", "open_backend"]

_CHUNK = 256


class MemoryBackend(Backend):
    """Ordered in-memory map. ``path`` is accepted for interface symmetry and ignored."""

    name = "memory"
    power_safe = True  # its contents outlive a Store object by construction

    def __init__(self) -> None:
        super().__init__()
        self._data: SortedDict = SortedDict()

    def _get(self, key: bytes) -> bytes | None:
        v: bytes | None = self._data.get(key)
        return v

    def _write(self, ops: Sequence[Op]) -> None:
        data = self._data
        for k, v in checked_ops(ops):  # validated first: applying bytes cannot fail midway
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v

    def _iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        # Chunks re-seek from the last key seen, so concurrent writes never break iteration.
        lo, hi = start, stop
        lo_incl = True
        hi_incl = False
        while True:
            self._check()
            keys = _take(self._data.irange(lo, hi, inclusive=(lo_incl, hi_incl), reverse=reverse))
            for k in keys:
                v = self._data.get(k)
                if v is not None:
                    yield k, v
            if len(keys) < _CHUNK:
                return
            if reverse:
                hi, hi_incl = keys[-1], False
            else:
                lo, lo_incl = keys[-1], False

    def _close(self) -> None:
        pass


def _take(it: Iterator[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for k in it:
        out.append(k)
        if len(out) == _CHUNK:
            break
    return out


def open_backend(path: str | None = None, *, sync_writes: bool = False) -> MemoryBackend:
    """Create an empty in-memory backend."""
    return MemoryBackend()
