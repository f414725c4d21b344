"""A blocking client of a node's client endpoint (``crdt-kv serve --client-listen``).

It writes to and reads from the store a running node holds, and returns each write's
stamp, the way :meth:`Store.put` does in process. Plain sockets, no trio: usable from
scripts, threads and tests. The format is :mod:`crdt_kv.protocol.client_api`.

Failures: a request the node refused raises :class:`RequestRefusedError` (nothing was
written; the connection stays usable); a lost connection or a timeout raises
:class:`OSError` and closes the client (whether a write that was in flight happened is
unknown: read the key back, or treat it as maybe written); a malformed reply raises
:class:`~crdt_kv.errors.RemoteProtocolError` and closes it too.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from crdt_kv.errors import ClosedError, ConfigError, RemoteProtocolError, RequestRefusedError
from crdt_kv.protocol.client_api import (
    CLIENT_MAX_FRAME_BYTES,
    ClientRequest,
    decode_reply,
    encode_request,
    stamp,
)
from crdt_kv.protocol.fields import array, boolean, byte_string, fail, text, uint
from crdt_kv.version import Entry, Version

__all__ = ["Client", "RequestRefusedError"]

_LEN = struct.Struct(">I")

_T = TypeVar("_T")


def _version(op: str) -> Callable[[Any], Version]:
    return lambda result: Version(*stamp(result, f"{op} result"))


def _info(result: Any) -> dict[str, Any]:
    if type(result) is not dict:
        raise fail("field 'info result' must be a map")
    try:
        return {
            "peer_id": text(result["peer_id"], "info.peer_id"),
            "incarnation": byte_string(result["incarnation"], "info.incarnation"),
            "digest": byte_string(result["digest"], "info.digest", 32),
            "live": uint(result["live"], "info.live"),
            "last_seq": uint(result["last_seq"], "info.last_seq"),
        }
    except KeyError as exc:
        raise fail(f"info result lacks {exc}") from None


class Client:
    """One connection to a node's client endpoint at ``"host:port"``.

    Connects at once (``OSError`` if it cannot); ``timeout_s`` bounds the connect and
    every request. Not thread-safe: use one client per thread. :meth:`close` is
    idempotent; the client is also a context manager.
    """

    def __init__(self, address: str, *, timeout_s: float = 10.0) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"client address {address!r} is not 'host:port'")
        self.address = address
        self._sock: socket.socket | None = socket.create_connection(
            (host.strip("[]"), int(port)), timeout=timeout_s
        )
        self._next_id = 1

    @property
    def closed(self) -> bool:
        """True once closed (by :meth:`close` or a failure)."""
        return self._sock is None

    def put(self, key: Any, value: Any) -> Version:
        """Write ``value`` under ``key``; the stamp the node gave it, once committed."""
        return self._call(_version("put"), "put", key, value)

    def delete(self, key: Any) -> Version:
        """Write a tombstone for ``key``; its stamp, once committed."""
        return self._call(_version("del"), "del", key)

    def get(self, key: Any) -> Entry | None:
        """The key's register state (tombstones included: ``deleted``), or None if the
        node holds nothing for it."""

        def entry(result: Any) -> Entry | None:
            if result is None:
                return None
            hlc, peer, deleted, value = array(result, "get result", 4)
            hlc, peer = uint(hlc, "get.hlc"), text(peer, "get.peer")
            return Entry(key, value, hlc, peer, boolean(deleted, "get.deleted"))

        return self._call(entry, "get", key)

    def info(self) -> dict[str, Any]:
        """The node's store: ``peer_id``, ``incarnation``, ``digest``, ``live``,
        ``last_seq``."""
        return self._call(_info, "info")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.address} {'closed' if self.closed else 'open'}>"

    # --- internals --------------------------------------------------------------------

    def _call(self, parse: Callable[[Any], _T], op: str, *args: Any) -> _T:
        """Send one request, wait for its reply, return ``parse(result)``; any failure but
        a refusal closes the client."""
        if self._sock is None:
            raise ClosedError(f"client of {self.address} is closed")
        rid, self._next_id = self._next_id, self._next_id + 1
        request = encode_request(ClientRequest(rid, op, *args))
        try:
            self._sock.sendall(request)
            reply = decode_reply(self._receive(self._sock))
            if reply.id != rid:
                raise fail(f"reply to request {reply.id} while waiting for {rid}")
            if reply.kind == "RemoteProtocolError":  # the node closes after a malformed request
                raise RemoteProtocolError(f"node {self.address} says: {reply.message}")
            if reply.ok:
                return parse(reply.result)
        except BaseException:
            self.close()
            raise
        raise RequestRefusedError(reply.kind, reply.message)

    def _receive(self, sock: socket.socket) -> bytes:
        (length,) = _LEN.unpack(self._exactly(sock, 4))
        if length > CLIENT_MAX_FRAME_BYTES:
            raise fail(f"reply frame of {length} bytes exceeds {CLIENT_MAX_FRAME_BYTES}")
        return self._exactly(sock, length)

    def _exactly(self, sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise ConnectionResetError(f"node {self.address} closed the connection")
            buf += chunk
        return bytes(buf)
