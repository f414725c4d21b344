"""Which inbound connections a node serves: fair slots for hostile networks.

Three rules, each counted by reason in :attr:`Admission.refused` when it refuses:

- at most ``max_inbound`` inbound connections at once (``too_many``): silent clients must
  not take every file descriptor our own dials need;
- at most ``max_pending`` of them before their Hello was accepted: a connection that has
  not identified itself costs a slot until the handshake timeout, so unauthenticated
  connections are capped apart and cannot starve the established ones. When they are all
  taken, a newcomer evicts the oldest of them (``evicted``) rather than being refused:
  otherwise a flood of silent connections would keep every new real peer out, while now
  it must open connections faster than a real peer completes its handshake;
- at most one established live inbound session per peer id (``duplicate``); one-shot
  sessions end by themselves (or at the idle timeout), and a peer legitimately runs
  several (its round schedule, ``sync_now`` beside a live session). The newer
  session is refused, not the older closed: the established one is working, and whoever
  can claim a peer id must not be able to kick the real peer out by reconnecting; a peer
  whose old connection died half-open gets in once that one fails its idle timeout (a
  live session's peer sends keep-alives, so ``live_idle_timeout_s`` at most).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MAX_INBOUND_CONNECTIONS", "MAX_PENDING_CONNECTIONS", "Admission", "Ticket"]

MAX_INBOUND_CONNECTIONS = 256
"""Inbound connections served at once; more are closed at once."""
MAX_PENDING_CONNECTIONS = 64
"""Inbound connections served at once whose Hello was not accepted yet."""


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted inbound connection."""

    pending: bool = True
    cancel: Callable[[], object] = lambda: None
    """Drops the connection (set by whoever serves it)."""
    key: tuple[str, bool] | None = None
    """(peer id, live) once its session was established and registered."""


@dataclass(slots=True)
class Admission:
    """The node's inbound slots (see the module doc); limits may be changed at any time."""

    max_inbound: int = MAX_INBOUND_CONNECTIONS
    max_pending: int = MAX_PENDING_CONNECTIONS
    inbound: int = 0
    pending: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    _sessions: dict[tuple[str, bool], Ticket] = field(default_factory=dict)
    _waiting: dict[Ticket, None] = field(default_factory=dict)  # pending, oldest first

    def admit(self) -> Ticket | str:
        """A ticket for a new connection, or why it is refused."""
        if self.inbound >= self.max_inbound:
            return self._refuse("too_many", f"{self.inbound} inbound connections open")
        if self.pending >= self.max_pending:
            oldest = next(iter(self._waiting))
            self._settle(oldest)
            self.refused["evicted"] += 1
            oldest.cancel()
        self.inbound += 1
        self.pending += 1
        ticket = Ticket()
        self._waiting[ticket] = None
        return ticket

    def established(self, ticket: Ticket, peer_id: str, *, live: bool) -> str | None:
        """The connection's Hello was accepted: None, or why its session is refused."""
        self._settle(ticket)
        key = (peer_id, live)
        if not live:
            return None
        if key in self._sessions:
            return self._refuse(
                "duplicate", f"peer {peer_id!r} already has an established live session with us"
            )
        ticket.key = key
        self._sessions[key] = ticket
        return None

    def release(self, ticket: Ticket) -> None:
        """The connection ended."""
        self._settle(ticket)
        if ticket.key is not None and self._sessions.get(ticket.key) is ticket:
            del self._sessions[ticket.key]
        ticket.key = None
        self.inbound -= 1

    def _settle(self, ticket: Ticket) -> None:
        if ticket.pending:
            ticket.pending = False
            self.pending -= 1
            del self._waiting[ticket]

    def _refuse(self, reason: str, why: str) -> str:
        self.refused[reason] += 1
        return why
