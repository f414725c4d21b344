"""The session's state tables (normative copy: ``spec/protocol.md`` section 6).

Three state variables, one table each: the connection, our sending side and our receiving
side. A (state, event) pair missing from a table is a protocol violation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from crdt_kv.errors import RemoteProtocolError
from crdt_kv.protocol.messages import Abort, Ack, Batch, Hello, Repair, Request, Verify

__all__ = [
    "CONN_TABLE",
    "IN_TABLE",
    "OUT_TABLE",
    "ConnState",
    "InState",
    "OutState",
    "step",
]


class ConnState(Enum):
    """Lifecycle of the connection."""

    IDLE = "idle"
    HELLO_SENT = "hello-sent"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class OutState(Enum):
    """Our log streaming to the peer."""

    DISABLED = "disabled"
    WAITING = "waiting"  # for the peer's Request
    STREAMING = "streaming"
    DRAINING = "draining"  # final batch sent, awaiting acks
    LIVE = "live"  # caught up, pushing new commits
    DONE = "done"


class InState(Enum):
    """The peer's log streaming to us."""

    DISABLED = "disabled"
    REQUESTED = "requested"
    LIVE = "live"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Start:
    """Internal: queue our Hello."""


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Internal: the peer ended the stream."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Internal: closed by the local side."""


@dataclass(frozen=True, slots=True)
class HeadReached:
    """Internal: sent a ``done`` batch to a one-shot peer."""


@dataclass(frozen=True, slots=True)
class HeadReachedLive:
    """Internal: sent a ``done`` batch to a peer that tails us."""


@dataclass(frozen=True, slots=True)
class AllAcked:
    """Internal: every batch of a finished direction was acknowledged."""


@dataclass(frozen=True, slots=True)
class FinalBatch:
    """Internal: received a ``done`` batch, not tailing."""


@dataclass(frozen=True, slots=True)
class TailBatch:
    """Internal: received a ``done`` batch while tailing."""


_C, _O, _I = ConnState, OutState, InState

CONN_TABLE: dict[tuple[ConnState, type], ConnState] = {
    (_C.IDLE, Start): _C.HELLO_SENT,
    (_C.HELLO_SENT, Hello): _C.OPEN,
    (_C.OPEN, Request): _C.OPEN,
    (_C.OPEN, Batch): _C.OPEN,
    (_C.OPEN, Ack): _C.OPEN,
    (_C.OPEN, Verify): _C.OPEN,
    (_C.OPEN, Repair): _C.OPEN,
    (_C.HELLO_SENT, Abort): _C.FAILED,
    (_C.OPEN, Abort): _C.FAILED,
    (_C.HELLO_SENT, EndOfStream): _C.CLOSED,
    (_C.OPEN, EndOfStream): _C.CLOSED,
    (_C.IDLE, Stop): _C.CLOSED,
    (_C.HELLO_SENT, Stop): _C.CLOSED,
    (_C.OPEN, Stop): _C.CLOSED,
}
OUT_TABLE: dict[tuple[OutState, type], OutState] = {
    (_O.WAITING, Request): _O.STREAMING,
    (_O.STREAMING, HeadReached): _O.DRAINING,
    (_O.STREAMING, HeadReachedLive): _O.LIVE,
    (_O.STREAMING, Ack): _O.STREAMING,
    (_O.DRAINING, Ack): _O.DRAINING,
    (_O.LIVE, Ack): _O.LIVE,
    (_O.DRAINING, AllAcked): _O.DONE,
}
IN_TABLE: dict[tuple[InState, type], InState] = {
    (_I.REQUESTED, Batch): _I.REQUESTED,
    (_I.LIVE, Batch): _I.LIVE,
    (_I.REQUESTED, FinalBatch): _I.DONE,
    (_I.REQUESTED, TailBatch): _I.LIVE,
    (_I.LIVE, TailBatch): _I.LIVE,
}

_S = TypeVar("_S", ConnState, OutState, InState)


def step(table: dict[tuple[_S, type], _S], state: _S, event: object, what: str) -> _S:
    """The next state, or :class:`RemoteProtocolError` naming the unexpected event."""
    try:
        return table[(state, type(event))]
    except KeyError:
        name = type(event).__name__.lstrip("_")
        raise RemoteProtocolError(f"unexpected {name} while {what} is {state}") from None
