"""The trio I/O shell: replicate over any stream, TCP nodes, discovery, ``crdt-kv serve``.

Everything protocol-related lives in the sans-I/O :mod:`crdt_kv.protocol`; this package
only moves bytes between sockets (or any :class:`trio.abc.Stream`) and sessions.
"""

from __future__ import annotations

from crdt_kv.net.addresses import format_address, parse_address
from crdt_kv.net.backoff import Backoff
from crdt_kv.net.node import (
    EVENT_KINDS,
    UNIDENTIFIED,
    ChangeEvent,
    ConnectEvent,
    ConnectionEvent,
    DisconnectEvent,
    ErrorEvent,
    EventStream,
    Node,
    NodeEvent,
    serve,
)
from crdt_kv.net.transport import ReplicationResult, replicate, run_session

__all__ = [
    "EVENT_KINDS",
    "UNIDENTIFIED",
    "Backoff",
    "ChangeEvent",
    "ConnectEvent",
    "ConnectionEvent",
    "DisconnectEvent",
    "ErrorEvent",
    "EventStream",
    "Node",
    "NodeEvent",
    "ReplicationResult",
    "format_address",
    "parse_address",
    "replicate",
    "run_session",
    "serve",
]
