"""Drive a :class:`~crdt_kv.protocol.CatchUpTracker` with trio for ``serve(catch_up=True)``.

The node feeds :meth:`CatchUpWaiter.add`, :meth:`CatchUpWaiter.remove` and
:meth:`CatchUpWaiter.see` while its links run; :meth:`CatchUpWaiter.wait` sleeps until the
tracker says the wait is over. Which peers count and when it is over is the tracker's
decision alone.
"""

from __future__ import annotations

import math

import trio

from crdt_kv.protocol import CatchUpReport, CatchUpTracker, LinkEvent, LinkFailed

__all__ = ["CatchUpWaiter"]


class CatchUpWaiter:
    """One catch-up of a starting node; create it inside the trio run (the timeout starts
    now). Raises :class:`~crdt_kv.errors.ConfigError` for a bad ``timeout_s``."""

    def __init__(self, *, timeout_s: float, listen_s: float = 0.0) -> None:
        self.tracker = CatchUpTracker(
            now=trio.current_time(), timeout_s=timeout_s, listen_s=listen_s
        )
        self._wake = trio.Event()

    def add(self, address: str) -> None:
        """A peer address the node now dials."""
        self.tracker.add(address, trio.current_time())
        self._wake.set()

    def remove(self, address: str) -> None:
        """The node stopped dialing ``address``."""
        self.tracker.remove(address)
        self._wake.set()

    def see(self, address: str, event: LinkEvent) -> None:
        """An event of an outbound link to ``address``."""
        reason = None
        if isinstance(event, LinkFailed) and isinstance(event.error, trio.TooSlowError):
            reason = "connect failed: timed out" if event.dialing else "timed out"
        self.tracker.link_event(address, event, trio.current_time(), reason=reason)
        self._wake.set()

    async def wait(self) -> CatchUpReport:
        """Return the report once every peer caught up or failed, or at the deadline."""
        tracker = self.tracker
        while not tracker.done:
            timer = tracker.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer):
                await self._wake.wait()
            self._wake = trio.Event()
            tracker.handle_timer(trio.current_time())
        return tracker.report(trio.current_time())
