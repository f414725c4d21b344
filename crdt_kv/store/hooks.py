"""Commit and change listeners (update hooks).

Listeners run synchronously on the thread that committed, after the commit is durable in
the backend and while the store's commit lock is held (so they see commits in sequence
order, and a listener may write to the store again). A listener that raises is logged on
the ``crdt_kv.store`` logger and counted; it neither undoes the commit nor stops later
listeners.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from crdt_kv.layout import seal_record, unpack_record
from crdt_kv.version import Entry, RawEntry

__all__ = ["Hooks"]

_Change = tuple[bytes, bytes, bytes | None]
"""A commit's ``(key, new record body, old record or None)`` (``commit.Change``, which
imports this module)."""

log = logging.getLogger("crdt_kv.store")


class Hooks:
    """The store's listeners; ``stats['hook_errors']`` counts listeners that raised."""

    __slots__ = ("_stats", "_to_entry", "before", "change", "commit")

    def __init__(self, stats: dict[str, int], to_entry: Callable[[RawEntry], Entry]) -> None:
        self._stats, self._to_entry = stats, to_entry
        self.commit: list[Callable[[int], object]] = []
        self.change: list[Callable[[Entry], object]] = []
        self.before: list[Callable[[list[Entry]], object]] = []

    def add_before(self, callback: Callable[[list[Entry]], object]) -> Callable[[], None]:
        self.before.append(callback)
        return lambda: _discard(self.before, callback)

    def before_write(self, raws: list[RawEntry]) -> None:
        """Show the local writes about to commit to the pre-update hooks; whatever a hook
        raises propagates (the caller then writes nothing)."""
        entries = [self._to_entry(r) for r in raws]
        for fn in list(self.before):
            fn(entries)

    def add_commit(self, callback: Callable[[int], object]) -> Callable[[], None]:
        self.commit.append(callback)
        return lambda: _discard(self.commit, callback)

    def add_change(self, callback: Callable[[Entry], object]) -> Callable[[], None]:
        self.change.append(callback)
        return lambda: _discard(self.change, callback)

    def notify(self, items: Sequence[_Change], first_seq: int, last_seq: int) -> None:
        """Tell listeners about one commit of ``items`` at ``first_seq..last_seq``."""
        for fn in list(self.commit):
            try:
                fn(last_seq)
            except Exception:
                self._stats["hook_errors"] += 1
                log.exception("commit listener %r failed", fn)
        if not self.change:
            return
        for i, (k, body, _) in enumerate(items):
            record, _ = seal_record(body, first_seq + i)
            entry = self._to_entry(unpack_record(k, record))
            for cb in list(self.change):
                try:
                    cb(entry)
                except Exception:
                    self._stats["hook_errors"] += 1
                    log.exception("change listener %r failed", cb)


def _discard(lst: list[Any], item: Any) -> None:
    with contextlib.suppress(ValueError):
        lst.remove(item)
