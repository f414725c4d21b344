"""The lifecycle table of a :class:`~crdt_kv.protocol.link.PeerLink`: its roles, its
states, the inputs that move it and where each leads (one table, as the house rules want
state machines). The link applies it; nothing here has behaviour of its own."""

from __future__ import annotations

from enum import Enum

__all__ = ["LINK_TABLE", "LinkRole", "LinkState"]


class LinkRole(Enum):
    """What the link is for (see :mod:`crdt_kv.protocol.link`)."""

    DIAL = "dial"
    ONCE = "once"


class LinkState(Enum):
    """Where the link is in its connection lifecycle."""

    WAITING = "waiting"  # for the next dial time
    DIALING = "dialing"  # DialDue emitted, no answer yet
    CONNECTED = "connected"
    CLOSING = "closing"  # CloseConnection emitted, waiting for connection_lost
    CLOSED = "closed"  # final


class _Made:
    pass


class _DialFailed:
    pass


class _DialTimer:
    pass


class _SessionOver:
    pass


class _Lost:
    pass


class _Stop:
    pass


_W, _D, _C, _X, _Z = (
    LinkState.WAITING,
    LinkState.DIALING,
    LinkState.CONNECTED,
    LinkState.CLOSING,
    LinkState.CLOSED,
)
_AFTER = None
"""Marks "the end of a connection": WAITING for a ``dial`` link, CLOSED for ``once``."""

LINK_TABLE: dict[tuple[LinkState, type], LinkState | None] = {
    (_W, _DialTimer): _D,
    (_W, _Made): _C,
    (_D, _Made): _C,
    (_D, _DialFailed): _AFTER,
    (_C, _SessionOver): _X,
    (_C, _Lost): _AFTER,
    (_X, _Lost): _AFTER,
    (_W, _Stop): _Z,
    (_D, _Stop): _Z,
    (_C, _Stop): _X,
    (_X, _Stop): _X,
}
