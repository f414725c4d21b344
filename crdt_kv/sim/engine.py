"""The discrete-event core of the simulator: one heap of timed callbacks, one virtual
clock, one trace hash. Nothing here knows about stores, links or faults."""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable
from typing import Any

from crdt_kv.sim.clocks import VirtualTime

__all__ = ["Engine"]


class Engine:
    """Runs callbacks in virtual-time order; the same pushes replay the same run.

    ``events`` counts callbacks run; :meth:`record` feeds the trace whose hex digest
    (``trace_hash``) identifies a run in one line.
    """

    def __init__(self) -> None:
        self.vt = VirtualTime()
        self.events = 0
        self._heap: list[tuple[int, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._trace = hashlib.blake2b(digest_size=16)
        self._stop = False

    @property
    def now_ms(self) -> float:
        """Current virtual time in milliseconds."""
        return self.vt.now / 1000

    @property
    def trace_hash(self) -> str:
        """Hex digest of everything recorded so far."""
        return self._trace.hexdigest()

    def at(self, t_ms: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Run ``fn(arg)`` at virtual time ``t_ms`` (not before now)."""
        self.push(max(self.vt.now, int(t_ms * 1000)), fn, arg)

    def push(self, t_us: int, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` at virtual time ``t_us`` (microseconds)."""
        heapq.heappush(self._heap, (t_us, next(self._seq), fn, arg))

    def advance(self, ms: float) -> None:
        """Run every event due in the next ``ms`` virtual milliseconds."""
        self._loop(self.vt.now + int(ms * 1000))

    def _loop(self, until_us: int | None = None) -> None:
        heap, vt, pop = self._heap, self.vt, heapq.heappop
        n = 0
        try:
            while heap and not self._stop:
                if until_us is not None and heap[0][0] > until_us:
                    break
                t, _, fn, arg = pop(heap)
                vt.now = t
                fn(arg)
                n += 1
        finally:
            self.events += n
        if until_us is not None and vt.now < until_us:
            vt.now = until_us

    def record(self, text: str, data: bytes = b"") -> None:
        """Add a line (and bytes) to the trace hash."""
        self._trace.update(text.encode())
        if data:
            self._trace.update(data)
