"""crdt_kv: an embedded key-value store that replicates multi-master and always converges.

Every key holds a last-writer-wins register stamped with a hybrid logical clock; replicas
exchange change-log deltas over CBOR and converge to equal digests.

The networking names (:class:`Node`, :func:`replicate`, :func:`serve`, ...) live in the
trio shell :mod:`crdt_kv.net` and are loaded on first access (PEP 562), as is the blocking
:class:`Client` of a node's client endpoint (sockets): importing the sans-I/O core
(``crdt_kv.store``, ``crdt_kv.protocol``) always runs this module, and must not drag in
trio and sockets with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    PeerIdentityError,
    ProtocolError,
    ReadOnlyError,
    RejectedDataError,
    RemoteProtocolError,
    RequestRefusedError,
    ResolverError,
    RolledBackError,
    StorageError,
    StoreNotFoundError,
)
from crdt_kv.fingerprint import Statistics
from crdt_kv.hlc import HLC
from crdt_kv.store import Batch, Store
from crdt_kv.version import Entry, RawEntry, Resolver, Version

if TYPE_CHECKING:
    from crdt_kv.client import Client
    from crdt_kv.net import Node, TlsConfig, replicate, serve
    from crdt_kv.protocol.catchup import CatchUpReport
    from crdt_kv.repair.api import reconcile
    from crdt_kv.repair.report import ReconcileReport

__version__ = "0.1.0"

_LAZY = {
    "CatchUpReport": "crdt_kv.protocol.catchup",
    "Client": "crdt_kv.client",
    "Node": "crdt_kv.net",
    "ReconcileReport": "crdt_kv.repair.report",
    "TlsConfig": "crdt_kv.net",
    "reconcile": "crdt_kv.repair.api",
    "replicate": "crdt_kv.net",
    "serve": "crdt_kv.net",
}
"""Public name -> module it is loaded from on first access."""

__all__ = [
    "HLC",
    "Backend",
    "Batch",
    "CatchUpReport",
    "Client",
    "ClockSkewError",
    "ClosedError",
    "ConfigError",
    "CorruptionError",
    "CrdtKvError",
    "EncodingError",
    "Entry",
    "LocalProtocolError",
    "Node",
    "PeerIdentityError",
    "ProtocolError",
    "RawEntry",
    "ReadOnlyError",
    "ReconcileReport",
    "RejectedDataError",
    "RemoteProtocolError",
    "RequestRefusedError",
    "RolledBackError",
    "Resolver",
    "ResolverError",
    "Statistics",
    "StorageError",
    "Store",
    "StoreNotFoundError",
    "TlsConfig",
    "Version",
    "__version__",
    "available_backends",
    "open",
    "reconcile",
    "replicate",
    "serve",
]


def __getattr__(name: str) -> Any:
    """Load a networking name from :mod:`crdt_kv.net` on first access and cache it here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names including the lazy ones not loaded yet (for ``dir()``, REPLs)."""
    return sorted(set(globals()) | set(__all__))
