"""The client endpoint of a node: put, delete and read the store a running node holds.

A running node holds its store exclusively (RocksDB's lock), so a process that wants to
write to it, and to learn the stamp each write got, asks the node: ``serve(store,
client_listen="127.0.0.1:7500")`` or ``crdt-kv serve --client-listen``. It is an operations
and testing endpoint (the chaos test's writers use it), with no authentication: it binds
loopback addresses only, unless ``allow_remote`` says otherwise. The wire format is in
:mod:`crdt_kv.protocol.client_api`; :class:`crdt_kv.client.Client` speaks it.

A write is acknowledged once :meth:`Store.put` (or ``delete``) returned: the commit is in
the write-ahead log, so it survives the node being killed; it survives a power loss too
only with ``sync_writes`` (``docs/operations.md`` section 1). Requests run on worker
threads (the store serializes commits), one at a time per connection, so a slow commit
never stalls replication. Connections are bounded in number and in frame size, and one
idle longer than ``idle_timeout_s`` is closed.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import trio

from crdt_kv.errors import ConfigError, CrdtKvError, RemoteProtocolError
from crdt_kv.net.addresses import parse_address
from crdt_kv.protocol.client_api import (
    CLIENT_MAX_FRAME_BYTES,
    ClientReply,
    ClientRequest,
    decode_request,
    encode_reply,
)
from crdt_kv.protocol.framing import FrameDecoder
from crdt_kv.store import Store

__all__ = [
    "CLIENT_IDLE_TIMEOUT_S",
    "MAX_CLIENT_CONNECTIONS",
    "ClientEndpoint",
    "check_client_listen",
    "is_loopback",
    "open_client_endpoint",
]

log = logging.getLogger("crdt_kv.net")

MAX_CLIENT_CONNECTIONS = 32
"""Client connections served at once; more are closed at once (each may buffer one frame
of up to :data:`~crdt_kv.protocol.client_api.CLIENT_MAX_FRAME_BYTES`)."""
CLIENT_IDLE_TIMEOUT_S = 60.0
"""A connection that sends nothing for this long is closed."""
_RECEIVE_SIZE = 1 << 16
_MAX_MESSAGE_CHARS = 1000
_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (an empty host binds them all)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def open_client_endpoint(
    store: Store, listen: str, *, allow_remote: bool = False
) -> ClientEndpoint:
    """Bind the client endpoint of ``store`` at ``"host:port"`` (port 0 picks one).

    A host that is not a loopback address is a :class:`ConfigError` unless
    ``allow_remote``: anyone who can connect may write."""
    host, port = check_client_listen(listen, allow_remote=allow_remote)
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    return ClientEndpoint(store, listeners)


def check_client_listen(listen: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``listen`` parsed; :class:`ConfigError` if malformed, or not loopback while
    ``allow_remote`` is off."""
    host, port = parse_address(listen, what="client listen address")
    if not allow_remote and not is_loopback(host):
        raise ConfigError(
            f"client listen address {listen!r} is not a loopback address: the client "
            "endpoint has no authentication (set client_allow_remote to expose it anyway)"
        )
    return host, port


class ClientEndpoint:
    """Serves client requests for one store; get one from :func:`open_client_endpoint` and
    run it with ``nursery.start(endpoint.run)``, or hand streams to :meth:`handle`.

    ``answered`` counts replies sent, ``refused`` requests the store refused (a reply
    saying why), ``rejected`` connections closed at once (too many) or for a malformed
    request."""

    def __init__(
        self,
        store: Store,
        listeners: list[trio.SocketListener],
        *,
        max_connections: int = MAX_CLIENT_CONNECTIONS,
        idle_timeout_s: float = CLIENT_IDLE_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.listeners = listeners
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.answered = 0
        self.refused = 0
        self.rejected = 0
        self._open = 0
        self.address: tuple[str, int] = ("", 0)
        """The address bound (of the first listener; none for a stream-only endpoint)."""
        if listeners:
            sockname = listeners[0].socket.getsockname()
            self.address = (str(sockname[0]), int(sockname[1]))

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled."""
        await trio.serve_listeners(self.handle, self.listeners, task_status=task_status)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until the client closes it, idles, or breaks the format."""
        if self._open >= self.max_connections:
            self.rejected += 1
            await trio.aclose_forcefully(stream)
            return
        self._open += 1
        try:
            await self._serve(stream, FrameDecoder(max_frame_bytes=CLIENT_MAX_FRAME_BYTES))
        except _TRANSPORT_ERRORS:
            pass
        except Exception:
            # Whatever goes wrong with one client must not take the node down.
            log.exception("client request failed")
        finally:
            self._open -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        while True:
            try:
                payload = decoder.next_frame()
                request = None if payload is None else decode_request(payload)
            except RemoteProtocolError as exc:
                self.rejected += 1
                await stream.send_all(encode_reply(_error(0, exc)))
                return
            if request is None:
                data: bytes | bytearray = b""
                with trio.move_on_after(self.idle_timeout_s):
                    data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return
                decoder.push(bytes(data))
                continue
            try:
                result = await trio.to_thread.run_sync(self._perform, request)
                reply = ClientReply(request.id, True, result)
            except CrdtKvError as exc:
                self.refused += 1
                reply = _error(request.id, exc)
            await stream.send_all(encode_reply(reply))
            self.answered += 1

    def _perform(self, request: ClientRequest) -> Any:
        """Run one request against the store (on a worker thread)."""
        store = self.store
        if request.op == "put":
            v = store.put(request.key, request.value)
            return [v.hlc, v.peer]
        if request.op == "del":
            v = store.delete(request.key)
            return [v.hlc, v.peer]
        if request.op == "get":
            e = store.entry(request.key)
            if e is None:
                return None
            return [e.hlc, e.peer, e.deleted, None if e.deleted else e.value]
        return {
            "peer_id": store.peer_id,
            "incarnation": store.incarnation,
            "digest": store.digest(),
            "live": len(store),
            "last_seq": store.last_seq,
        }


def _error(request_id: int, exc: BaseException) -> ClientReply:
    message = str(exc)
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    return ClientReply(request_id, False, kind=type(exc).__name__, message=message)
