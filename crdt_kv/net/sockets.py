"""Small TCP helpers of the node: socket options, peer names, dial errors."""

from __future__ import annotations

import contextlib
import socket as _socket

import trio

from crdt_kv.net.addresses import format_address

__all__ = ["connect_failure", "peer_address", "peer_host", "tune_socket"]


def tune_socket(stream: trio.abc.Stream) -> None:
    """TCP keepalive, so a live session notices a peer that vanished without a FIN."""
    if not isinstance(stream, trio.SocketStream):
        return
    sock = stream.socket
    with contextlib.suppress(OSError):
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            opt = getattr(_socket, name, None)
            if opt is not None:
                sock.setsockopt(_socket.IPPROTO_TCP, opt, value)


def connect_failure(exc: BaseException) -> str:
    """Why a dial failed: trio's "all attempts failed" hides the causes in an exception group."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return "; ".join(str(e) for e in cause.exceptions)
    return str(exc)


def peer_address(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            host, port = stream.socket.getpeername()[:2]
            return format_address(str(host), int(port))
    return "?"


def peer_host(stream: trio.abc.Stream) -> str | None:
    """The TCP source host of ``stream`` (None if it has none), what penalties key on."""
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            return str(stream.socket.getpeername()[0])
    return None
