"""The trio I/O shell: replicate over any stream, TCP nodes, discovery, ``crdt-kv serve``.

Every protocol and policy decision lives in the sans-I/O :mod:`crdt_kv.protocol`; this
package only moves bytes between sockets (or any :class:`trio.abc.Stream`) and
:class:`~crdt_kv.protocol.PeerLink` objects, and runs their storage work off the loop.
"""

from __future__ import annotations

from crdt_kv.net.addresses import format_address, parse_address
from crdt_kv.net.events import (
    EVENT_KINDS,
    ChangeEvent,
    ConnectEvent,
    ConnectionEvent,
    DisconnectEvent,
    ErrorEvent,
    EventStream,
    NodeEvent,
)
from crdt_kv.net.node import Node
from crdt_kv.net.peers import UNIDENTIFIED
from crdt_kv.net.serve import serve
from crdt_kv.net.tls import TlsConfig
from crdt_kv.net.transport import ReplicationResult, replicate, run_session
from crdt_kv.protocol.backoff import Backoff
from crdt_kv.protocol.catchup import CatchUpPeer, CatchUpReport

__all__ = [
    "EVENT_KINDS",
    "UNIDENTIFIED",
    "Backoff",
    "CatchUpPeer",
    "CatchUpReport",
    "ChangeEvent",
    "ConnectEvent",
    "ConnectionEvent",
    "DisconnectEvent",
    "ErrorEvent",
    "EventStream",
    "Node",
    "NodeEvent",
    "ReplicationResult",
    "TlsConfig",
    "format_address",
    "parse_address",
    "replicate",
    "run_session",
    "serve",
]
