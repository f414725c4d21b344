"""What a node reports: event dataclasses and the bounded :class:`EventStream`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

import trio

__all__ = [
    "EVENT_KINDS",
    "ChangeEvent",
    "ConnectEvent",
    "ConnectionEvent",
    "DisconnectEvent",
    "ErrorEvent",
    "EventStream",
    "NodeEvent",
]


@dataclass(frozen=True, slots=True)
class ConnectEvent:
    """We dialed ``address`` and the peer's Hello was accepted."""

    kind: ClassVar[str] = "connect"
    peer_id: str
    address: str
    live: bool


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A peer connected to our listener (from ``address``) and its Hello was accepted."""

    kind: ClassVar[str] = "connection"
    peer_id: str
    address: str
    live: bool


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    """A session ended; ``complete`` if its sync finished, ``error`` (text) if it failed."""

    kind: ClassVar[str] = "disconnect"
    peer_id: str | None
    address: str
    outbound: bool
    complete: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A connection attempt or a session failed; the node carries on."""

    kind: ClassVar[str] = "error"
    peer_id: str | None
    address: str
    outbound: bool
    error: BaseException


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A batch from ``peer_id`` changed ``changed`` keys of our store."""

    kind: ClassVar[str] = "change"
    peer_id: str
    address: str
    changed: int
    received: int
    to_seq: int
    caught_up: bool


NodeEvent = ConnectEvent | ConnectionEvent | DisconnectEvent | ErrorEvent | ChangeEvent
EVENT_KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (ConnectEvent, ConnectionEvent, DisconnectEvent, ErrorEvent, ChangeEvent)
}


class EventStream:
    """``async for event in node.events()``: a bounded queue of the node's events.

    Subscribed when created, so no event is missed between creating and iterating. When a
    slow consumer lets ``buffer`` events pile up, newer ones are dropped and counted in
    :attr:`dropped` (a node never blocks on its observers). Iteration ends when the node
    stops; use ``async with node.events() as events`` (or :meth:`aclose`) to unsubscribe
    earlier.
    """

    def __init__(self, subscribers: set[EventStream], kinds: Iterable[str], buffer: int) -> None:
        self._subscribers = subscribers
        self.kinds = frozenset(kinds)
        self.dropped = 0
        self._send, self._recv = trio.open_memory_channel[NodeEvent](buffer)
        subscribers.add(self)

    def offer(self, event: NodeEvent) -> None:
        """Queue ``event`` if it is of a subscribed kind; drop and count it when full."""
        if self.kinds and event.kind not in self.kinds:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def end(self) -> None:
        """The node stopped: iteration ends once the queue is drained."""
        self._send.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> NodeEvent:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        self._subscribers.discard(self)
        self._send.close()
        self._recv.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
