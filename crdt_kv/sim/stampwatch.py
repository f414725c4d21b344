"""Resurrection watch: a key's state stamp on one replica never goes back.

Every write stamps a key's state with an HLC greater than the state it replaces, and a
merge keeps the greater state, so on one replica the state stamp of a key (its entry's
stamp; in ``siblings`` mode the largest stamp of its versions and context) only grows.
Tombstone collection removes a key, and absence wins below the horizon: an older value
offered later must be refused. If it were applied, the key's stamp on that replica would
go back below a stamp it already held: that is the resurrection of a deleted value,
even when a later repair removes it again (the final oracle check could not see it then).

The watch listens to every commit of every store (``on_change``) and records each key's
highest stamp per node; a lower one later is a violation. A node whose disk lost writes
(power cut, restored snapshot) legitimately holds older states: :meth:`StampWatch.forget`
starts that node afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crdt_kv.version import Entry

__all__ = ["Regression", "StampWatch", "state_stamp"]

MAX_REPORTED = 20


def state_stamp(e: Entry) -> int:
    """The largest stamp of a key's state: the entry's, its other versions' and context's."""
    top = e.hlc
    for o in e.others:
        top = max(top, o.hlc)
    for _, h in e.context:
        top = max(top, h)
    return top


@dataclass(frozen=True, slots=True)
class Regression:
    """A key whose state stamp went back on one node."""

    node: str
    key: str
    before: int
    after: int

    def describe(self) -> str:
        return f"{self.node}: key {self.key!r} went back from stamp {self.before} to {self.after}"


class StampWatch:
    """Per node, the highest state stamp seen for each key; regressions are kept."""

    def __init__(self) -> None:
        self._top: dict[str, dict[bytes, int]] = {}
        self.regressions: list[Regression] = []
        self.count = 0

    def listener(self, node: str) -> Callable[[Entry], None]:
        """The ``on_change`` callback for ``node``'s store."""
        top = self._top.setdefault(node, {})

        def seen(e: Entry) -> None:
            k = e.key if isinstance(e.key, bytes) else str(e.key).encode("utf-8")
            s = state_stamp(e)
            old = top.get(k, -1)
            if s >= old:
                top[k] = s
                return
            self.count += 1
            if len(self.regressions) < MAX_REPORTED:
                self.regressions.append(Regression(node, k.decode("utf-8", "replace"), old, s))

        return seen

    def forget_key(self, key: bytes) -> None:
        """Every node lost ``key`` (rot everywhere): an older state of it may come back."""
        for top in self._top.values():
            top.pop(key, None)

    def forget(self, node: str) -> None:
        """``node`` lost writes (power cut, restore): its older states are legitimate."""
        self._top.pop(node, None)
