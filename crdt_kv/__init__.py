"""crdt_kv: an embedded key-value store that replicates multi-master and always converges.

Every key holds a last-writer-wins register stamped with a hybrid logical clock; replicas
exchange change-log deltas over CBOR and converge to equal digests.
"""

from __future__ import annotations

from crdt_kv.api import open  # noqa: A004 - crdt_kv.open, like dbm.open
from crdt_kv.backends import available_backends
from crdt_kv.backends.base import Backend
from crdt_kv.errors import (
    ClockSkewError,
    ClosedError,
    ConfigError,
    CorruptionError,
    CrdtKvError,
    EncodingError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ResolverError,
)
from crdt_kv.hlc import HLC
from crdt_kv.net import Node, replicate, serve
from crdt_kv.store import Batch, Store
from crdt_kv.version import Entry, RawEntry, Resolver, Version

__version__ = "0.1.0"

__all__ = [
    "HLC",
    "Backend",
    "Batch",
    "ClockSkewError",
    "ClosedError",
    "ConfigError",
    "CorruptionError",
    "CrdtKvError",
    "EncodingError",
    "Entry",
    "LocalProtocolError",
    "Node",
    "ProtocolError",
    "RawEntry",
    "RemoteProtocolError",
    "Resolver",
    "ResolverError",
    "Store",
    "Version",
    "__version__",
    "available_backends",
    "open",
    "replicate",
    "serve",
]
