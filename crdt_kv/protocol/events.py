"""Events a :class:`~crdt_kv.protocol.Session` reports to whoever drives it.

Frozen, slotted dataclasses: they are facts about what happened, never handles to act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdt_kv.errors import CrdtKvError
from crdt_kv.protocol.options import SessionStats

__all__ = [
    "BatchApplied",
    "CaughtUp",
    "CloseConnection",
    "DialDue",
    "DivergenceFound",
    "RepairFinished",
    "LinkEvent",
    "LinkFailed",
    "SessionEnded",
    "Connected",
    "ConnectionClosed",
    "Event",
    "SessionFailed",
    "SyncComplete",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """The peer's ``Hello`` was accepted."""

    peer_id: str
    incarnation: bytes
    cluster_id: str
    remote_last_seq: int
    cursor: int


@dataclass(frozen=True, slots=True)
class BatchApplied:
    """A batch from the peer was applied; ``changed`` entries altered our state."""

    received: int
    changed: int
    from_seq: int
    to_seq: int
    caught_up: bool


@dataclass(frozen=True, slots=True)
class SyncComplete:
    """Every non-live direction finished: the shell may close the stream."""


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session failed; ``by_peer`` when the peer aborted it."""

    error: CrdtKvError
    by_peer: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer ended the stream; ``complete`` says whether the sync had finished."""

    complete: bool


@dataclass(frozen=True, slots=True)
class DivergenceFound:
    """Both sides of a finished one-shot round were clean, yet their digests differed: a
    replica lost or altered a state its log does not carry. A repair follows at once."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class RepairFinished:
    """A reconciliation inside the session ended. ``first_contact``: it replaced pulling
    the peer's whole log; ``changed``: received states that changed ours; ``dropped``: our
    states removed because the peer collected them (absence wins)."""

    peer_id: str
    first_contact: bool
    changed: int
    dropped: int
    round_trips: int


Event = (
    Connected
    | BatchApplied
    | SyncComplete
    | SessionFailed
    | ConnectionClosed
    | DivergenceFound
    | RepairFinished
)


# --- events of a PeerLink -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DialDue:
    """Open a connection to the peer, then call ``connection_made`` or ``connection_failed``."""


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the current connection: send what :meth:`PeerLink.data_to_send` holds first if
    ``flush``; end the stream gracefully if ``graceful``, else abort it. Then call
    ``connection_lost``. A second CloseConnection without ``flush`` means: stop flushing."""

    flush: bool
    graceful: bool


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """The session caught up with ``peer_id`` (every direction done or tailing live)."""

    peer_id: str
    live: bool


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """A dial or a session failed; ``failures`` counts failures in a row."""

    error: BaseException
    failures: int
    dialing: bool


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A connection is over. ``caught_up``: the session had caught up (a peer leaving a
    tailing live session loses nothing); ``error`` is None for a clean end;
    ``timed_out``: we closed it because the peer was silent past a deadline."""

    peer_id: str | None
    complete: bool
    caught_up: bool
    error: BaseException | None
    live: bool
    stats: SessionStats
    timed_out: bool = False


LinkEvent = DialDue | CloseConnection | CaughtUp | LinkFailed | SessionEnded | Event
