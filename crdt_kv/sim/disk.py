"""The simulated disk of a memory-backed node: an explicit durable part.

:class:`SimDisk` behaves like :class:`~crdt_kv.backends.memory.MemoryBackend` (reads see
every committed batch) and outlives the store that used it, as a disk outlives a process.
With ``volatile=False`` every committed batch is durable (a store opened with
``sync_writes``; ``power_safe``). With ``volatile=True`` it models a disk without ``fsync``
per batch: writes become durable only at :meth:`SimDisk.sync` (the simulator calls it on a
timer, as an operating system writes back its page cache) and :meth:`SimDisk.power_cut`
reverts everything written since; such a disk is not ``power_safe``, so a store reopened
on it after an unclean stop gets a new incarnation.

It keeps an undo map rather than a second copy: for each key written since the last sync,
its value at that sync (None: absent). Reads stay as fast as the plain memory backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from sortedcontainers import SortedDict

from crdt_kv.backends.base import Op
from crdt_kv.backends.memory import MemoryBackend

__all__ = ["SimDisk"]


class SimDisk(MemoryBackend):
    """Ordered in-memory map with an explicit durable part (see the module docstring)."""

    name = "memory"

    def __init__(self, *, volatile: bool = False) -> None:
        super().__init__()
        self.volatile = volatile
        self.power_safe = not volatile
        self._undo: dict[bytes, bytes | None] = {}

    def _write(self, ops: Sequence[Op]) -> None:
        if self.volatile:
            undo, data = self._undo, self._data
            for k, _ in ops:
                if k not in undo:
                    undo[k] = data.get(k)
        super()._write(ops)

    def snapshot(self) -> SortedDict:
        """A copy of what the disk holds durably (unsynced writes left out)."""
        snap = self._data.copy()
        for k, old in self._undo.items():
            if old is None:
                snap.pop(k, None)
            else:
                snap[k] = old
        return snap

    def restore(self, snap: SortedDict) -> None:
        """Replace the whole disk with a :meth:`snapshot` (the disk must be closed)."""
        self._data = snap.copy()
        self._undo.clear()

    def peek(self, key: bytes) -> bytes | None:
        """Read ``key`` even while closed (the simulator inspects a stopped node's disk)."""
        return self._get(key)

    def reopen(self) -> None:
        """Make a closed disk usable again (a store is about to open it)."""
        self._closed = False

    @property
    def unsynced(self) -> int:
        """How many keys changed since the last sync."""
        return len(self._undo)

    def sync(self) -> list[bytes]:
        """Make every write so far durable; return the keys changed since the last sync
        (sorted; always empty when not volatile)."""
        keys = sorted(self._undo)
        self._undo.clear()
        return keys

    def make_durable(self) -> None:
        """The backend interface's fsync: :meth:`sync` without the report."""
        self._check()
        self.sync()

    def power_cut(self) -> int:
        """Lose every write since the last sync; return how many keys were reverted."""
        data = self._data
        n = len(self._undo)
        for k, old in self._undo.items():
            if old is None:
                data.pop(k, None)
            else:
                data[k] = old
        self._undo.clear()
        return n
