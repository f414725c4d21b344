"""Catch up before accepting writes: which peers are we still waiting for, sans-I/O.

level-replicator's rule is that a database must try to replicate before it accepts writes,
so a restarted node does not stamp new writes over state its peers changed while it was
down (fewer conflicts, fewer surprises). :class:`CatchUpTracker` is that wait's whole
policy: the driver tells it which peers to wait for (:meth:`~CatchUpTracker.add`) and what
their links report (:meth:`~CatchUpTracker.link_event`), sleeps until
:meth:`~CatchUpTracker.get_timer`, calls :meth:`~CatchUpTracker.handle_timer`, and stops
waiting once :attr:`~CatchUpTracker.done`. Nothing here reads a clock or blocks.

A peer's first outcome is final for the report: a link that catches up is "caught up", one
that fails once is "failed" (its link keeps retrying in the background, but a node started
together with its peers must not wait the whole timeout for one that is not listening yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from crdt_kv.errors import ConfigError
from crdt_kv.protocol.events import CaughtUp, Connected, LinkEvent, LinkFailed, SessionEnded

__all__ = [
    "DEFAULT_CATCH_UP_TIMEOUT_S",
    "MAX_REASON_CHARS",
    "CatchUpPeer",
    "CatchUpReport",
    "CatchUpTracker",
    "failure_reason",
]

DEFAULT_CATCH_UP_TIMEOUT_S = 30.0
"""How long a node waits for its peers before accepting writes anyway: several connect
timeouts and backoff steps, short enough that a node whose peers are all down still starts."""
MAX_REASON_CHARS = 160
"""Failure reasons are cut to this length: the report is read by people, on one line each."""


def failure_reason(error: BaseException, *, dialing: bool = False) -> str:
    """A short, one-line reason for a failed dial or session."""
    text = str(error) or type(error).__name__
    cause = error.__cause__
    if isinstance(cause, BaseExceptionGroup):  # "all connection attempts failed"
        text = "; ".join(str(e) or type(e).__name__ for e in cause.exceptions)
    text = " ".join(text.split())
    if dialing:
        text = f"connect failed: {text}"
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return text


@dataclass(frozen=True, slots=True)
class CatchUpPeer:
    """One peer of a catch-up: its address, its id once its Hello named it, and why it
    failed (None unless it did)."""

    address: str
    peer_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CatchUpReport:
    """What the catch-up before accepting writes achieved (``node.catch_up_report``).

    ``caught_up``: peers a session caught up with (everything they had when it started is
    here); ``failed``: peers whose first dial or session failed, with the reason;
    ``pending``: peers with no outcome when ``timeout_s`` ran out; ``elapsed_s``: how long
    the wait took.
    """

    caught_up: tuple[CatchUpPeer, ...]
    failed: tuple[CatchUpPeer, ...]
    pending: tuple[CatchUpPeer, ...]
    elapsed_s: float
    timeout_s: float

    @property
    def complete(self) -> bool:
        """Every peer was caught up from (also true when there were no peers)."""
        return not self.failed and not self.pending

    @property
    def peers(self) -> int:
        """How many peers were waited for."""
        return len(self.caught_up) + len(self.failed) + len(self.pending)

    def __str__(self) -> str:
        if not self.peers:
            return "catch-up: no peers to catch up from"
        verdict = "complete" if self.complete else "incomplete"
        lines = [
            f"catch-up {verdict}: caught up from {len(self.caught_up)} of {self.peers} "
            f"peers in {self.elapsed_s:.2f} s"
        ]
        for p in self.caught_up:
            lines.append(f"  caught up  {p.address}  peer {p.peer_id}")
        for p in self.failed:
            lines.append(f"  failed     {p.address}  {p.reason}")
        for p in self.pending:
            lines.append(f"  pending    {p.address}  no answer within {self.timeout_s:g} s")
        return "\n".join(lines)


class CatchUpTracker:
    """The peers a catch-up waits for, and whether it is over (see the module doc).

    ``now``: the start (seconds, any monotonic origin); the wait is over when every peer
    added has an outcome or at ``now + timeout_s``, whichever comes first. Peers added after
    the deadline are not waited for. ``listen_s``: the wait lasts at least that long (capped
    by the timeout), so that a node finding its peers by discovery hears their
    announcements before it decides nobody is there.
    """

    def __init__(
        self, *, now: float, timeout_s: float = DEFAULT_CATCH_UP_TIMEOUT_S, listen_s: float = 0.0
    ) -> None:
        if not (math.isfinite(timeout_s) and timeout_s >= 0):
            raise ConfigError(
                f"catch_up_timeout_s must be a non-negative number of seconds, got {timeout_s!r}"
            )
        if not (math.isfinite(listen_s) and listen_s >= 0):
            raise ConfigError(f"catch-up listen time must be >= 0 s, got {listen_s!r}")
        self.started = now
        self.timeout_s = timeout_s
        self.deadline = now + timeout_s
        self.listen_until = now + min(listen_s, timeout_s)
        self._listened = listen_s <= 0
        self._expired = False
        self._peers: dict[str, CatchUpPeer] = {}
        self._pending: set[str] = set()

    @property
    def done(self) -> bool:
        """No peer is pending and the listening time is over, or the deadline passed."""
        return self._expired or (self._listened and not self._pending)

    @property
    def pending(self) -> list[str]:
        """Addresses still waited for, in the order they were added."""
        return [a for a in self._peers if a in self._pending]

    def add(self, address: str, now: float) -> None:
        """Wait for ``address`` as well (a configured, added or discovered peer)."""
        self.handle_timer(now)
        if self._expired or address in self._peers:
            return
        self._peers[address] = CatchUpPeer(address)
        self._pending.add(address)

    def remove(self, address: str) -> None:
        """Stop waiting for ``address`` (the peer was removed); it leaves the report."""
        if address in self._pending:
            self._pending.discard(address)
            del self._peers[address]

    def link_event(
        self, address: str, event: LinkEvent, now: float, *, reason: str | None = None
    ) -> None:
        """What an outbound link to ``address`` reported: the first catch-up or failure
        decides the peer's outcome. ``reason`` replaces :func:`failure_reason` for a
        failure (the driver may know better, e.g. why a dial failed)."""
        self.handle_timer(now)
        if self._expired or address not in self._pending:
            return
        if isinstance(event, Connected):
            self._peers[address] = CatchUpPeer(address, event.peer_id)
        elif isinstance(event, CaughtUp):
            self._settle(CatchUpPeer(address, event.peer_id))
        elif isinstance(event, LinkFailed):
            peer_id = self._peers[address].peer_id
            why = reason or failure_reason(event.error, dialing=event.dialing)
            self._settle(CatchUpPeer(address, peer_id, why))
        elif isinstance(event, SessionEnded):
            if event.caught_up and event.peer_id is not None:
                self._settle(CatchUpPeer(address, event.peer_id))
            else:
                why = "session ended before catching up"
                if event.error is not None:
                    why = reason or failure_reason(event.error)
                self._settle(CatchUpPeer(address, event.peer_id, why))

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None once done)."""
        if self.done:
            return None
        return self.deadline if self._listened else min(self.deadline, self.listen_until)

    def handle_timer(self, now: float) -> None:
        """Past the deadline the wait is over, whatever is still pending."""
        if now >= self.listen_until:
            self._listened = True
        if now >= self.deadline:
            self._expired = True

    def report(self, now: float) -> CatchUpReport:
        """Where the catch-up stands at ``now``."""
        peers = self._peers.values()
        return CatchUpReport(
            caught_up=tuple(
                p for p in peers if p.address not in self._pending and p.reason is None
            ),
            failed=tuple(p for p in peers if p.reason is not None),
            pending=tuple(p for p in peers if p.address in self._pending),
            elapsed_s=max(0.0, now - self.started),
            timeout_s=self.timeout_s,
        )

    def _settle(self, peer: CatchUpPeer) -> None:
        self._peers[peer.address] = peer
        self._pending.discard(peer.address)
