"""A fault-injecting TCP proxy between the nodes of a chaos run.

One listener per directed link: node ``a`` reaches node ``b`` only through the listener
of link ``(a, b)``, which forwards to ``b``'s replication port, so every replication byte
passes through here. Each proxied connection runs two directions, each a reader (that
stamps every chunk with its arrival time) and a writer (that forwards it once its delay
has passed): latency is added without cutting throughput, and order is kept.

TCP cannot silently lose bytes without breaking the stream, so the faults are those a
real network produces:

- **delay** of a direction (latency plus jitter);
- **block** of a direction (a one-way partition ``a -> b``: bytes from ``a`` to ``b``
  are held, in every connection between them, while ``b -> a`` flows; a partition is
  both directions blocked): the receiver hears nothing, the sender's buffers fill;
- **stall** of one connection (both directions held) for a while;
- **drop** of a connection (closed, a FIN to both ends) and **cut** (reset: an RST).

Everything held is delivered once the fault is lifted, unless the connection died
meanwhile (its ends time out and close it, as they would on a real network).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

__all__ = ["Direction", "FaultProxy", "Pipe"]

_CHUNK = 1 << 16
_QUEUE = 64
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""Chunks in flight per direction before the reader stops reading (back pressure)."""


@dataclass
class Direction:
    """The faults of the bytes flowing from one node to another."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    blocks: int = 0
    """Faults blocking it now (they may overlap): blocked while any is."""

    @property
    def blocked(self) -> bool:
        return self.blocks > 0


@dataclass(eq=False)
class Pipe:
    """One proxied connection, dialed by ``src`` to ``dst``."""

    src: str
    dst: str
    client: trio.SocketStream
    server: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stalled: bool = False


class FaultProxy:
    """Proxies every directed link between ``targets`` (node -> its ``(host, port)``).

    Start it with ``await nursery.start(proxy.run)``; then :meth:`address` says where node
    ``a`` must dial to reach ``b``. Faults change with the methods below and apply at once,
    to open connections and new ones. ``rng`` draws the jitter. Counters: ``connections``
    proxied, ``refused`` (the target was down), ``forwarded`` bytes.
    """

    def __init__(self, targets: dict[str, tuple[str, int]], *, rng: random.Random) -> None:
        self.targets = dict(targets)
        self.rng = rng
        self.directions = {
            (a, b): Direction() for a in self.targets for b in self.targets if a != b
        }
        self.pipes: set[Pipe] = set()
        self.ports: dict[tuple[str, str], int] = {}
        self.connections = 0
        self.refused = 0
        self.forwarded = 0
        self._changed = trio.Event()

    def address(self, src: str, dst: str) -> str:
        """``"127.0.0.1:port"`` node ``src`` dials to reach ``dst``."""
        return f"127.0.0.1:{self.ports[src, dst]}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind one loopback listener per directed link and serve until cancelled."""
        async with trio.open_nursery() as nursery:
            for link in self.directions:
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                self.ports[link] = int(listeners[0].socket.getsockname()[1])
                handler = _Handler(self, *link)
                nursery.start_soon(trio.serve_listeners, handler, listeners)
            task_status.started()

    # --- faults ---------------------------------------------------------------------------

    def set_delay(self, src: str, dst: str, delay_s: float, jitter_s: float = 0.0) -> None:
        """Bytes from ``src`` to ``dst`` arrive ``delay_s`` (plus up to ``jitter_s``) late."""
        d = self.directions[src, dst]
        d.delay_s, d.jitter_s = delay_s, jitter_s
        self._wake()

    def block(self, src: str, dst: str, blocked: bool = True) -> None:
        """Hold every byte from ``src`` to ``dst`` (or lift one such block: the direction
        flows once every block was lifted)."""
        d = self.directions[src, dst]
        d.blocks = d.blocks + 1 if blocked else max(0, d.blocks - 1)
        self._wake()

    def stall(self, pipe: Pipe, stalled: bool = True) -> None:
        """Hold (or release) both directions of one connection."""
        pipe.stalled = stalled
        self._wake()

    def between(self, a: str, b: str) -> list[Pipe]:
        """Open connections between ``a`` and ``b``, dialed either way."""
        return [p for p in self.pipes if {p.src, p.dst} == {a, b}]

    def close(self, pipes: Iterable[Pipe], *, reset: bool) -> int:
        """Close connections (``reset``: with an RST to both ends); returns how many."""
        n = 0
        for pipe in list(pipes):
            if reset:
                for stream in (pipe.client, pipe.server):
                    with contextlib.suppress(OSError):
                        stream.socket.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            pipe.scope.cancel()
            n += 1
        return n

    def heal(self) -> None:
        """Lift every fault."""
        for d in self.directions.values():
            d.delay_s = d.jitter_s = 0.0
            d.blocks = 0
        for pipe in self.pipes:
            pipe.stalled = False
        self._wake()

    # --- forwarding -----------------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _held(self, pipe: Pipe, direction: Direction) -> bool:
        return direction.blocked or pipe.stalled

    async def serve(self, src: str, dst: str, client: trio.SocketStream) -> None:
        """Proxy one connection dialed by ``src`` to ``dst``."""
        try:
            server = await trio.open_tcp_stream(*self.targets[dst])
        except OSError:
            self.refused += 1
            await trio.aclose_forcefully(client)
            return
        pipe = Pipe(src, dst, client, server)
        self.connections += 1
        self.pipes.add(pipe)
        try:
            with pipe.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._direction, pipe, client, server, (src, dst))
                    nursery.start_soon(self._direction, pipe, server, client, (dst, src))
        finally:
            self.pipes.discard(pipe)
            with trio.CancelScope(shield=True):  # a cancelled close must not skip the other
                await trio.aclose_forcefully(client)
                await trio.aclose_forcefully(server)

    async def _direction(
        self,
        pipe: Pipe,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        link: tuple[str, str],
    ) -> None:
        """Forward one direction. Its source's end of stream is passed on (a half close);
        a failure of either end ends the whole connection."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, pipe, source, send)
            try:
                await self._write(pipe, sink, receive, self.directions[link])
                await sink.send_eof()
            except _BROKEN:
                pipe.scope.cancel()

    async def _read(
        self,
        pipe: Pipe,
        source: trio.SocketStream,
        send: trio.MemorySendChannel[tuple[float, bytes]],
    ) -> None:
        async with send:
            try:
                while data := await source.receive_some(_CHUNK):
                    await send.send((trio.current_time(), data))
            except _BROKEN:
                pipe.scope.cancel()

    async def _write(
        self,
        pipe: Pipe,
        sink: trio.SocketStream,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes]],
        direction: Direction,
    ) -> None:
        async for arrived, data in receive:
            extra = direction.jitter_s * self.rng.random() if direction.jitter_s else 0.0
            while True:
                while self._held(pipe, direction):
                    await self._changed.wait()
                due = arrived + direction.delay_s + extra
                if due <= trio.current_time():
                    break
                with trio.move_on_at(due):  # a fault may change meanwhile: look again
                    await self._changed.wait()
            await sink.send_all(data)
            self.forwarded += len(data)


class _Handler:
    """The accept handler of one link's listener."""

    def __init__(self, proxy: FaultProxy, src: str, dst: str) -> None:
        self.proxy, self.src, self.dst = proxy, src, dst

    async def __call__(self, client: trio.SocketStream) -> None:
        await self.proxy.serve(self.src, self.dst, client)
