"""The exception hierarchy.

Every error raised on purpose by crdt_kv derives from :class:`CrdtKvError`, so callers can
catch the library's failures without catching their own bugs. Subclasses say *whose* fault
it is: bad configuration, a value the encoding cannot hold, a peer's clock or bytes, or our
own misuse of a closed resource or a protocol session.
"""

from __future__ import annotations

__all__ = [
    "ClockSkewError",
    "ClosedError",
    "ConfigError",
    "CorruptionError",
    "CrdtKvError",
    "EncodingError",
    "LocalProtocolError",
    "PeerIdentityError",
    "RejectedDataError",
    "ProtocolError",
    "ReadOnlyError",
    "RemoteProtocolError",
    "RequestRefusedError",
    "ResolverError",
    "RolledBackError",
    "StorageError",
    "StoreNotFoundError",
]


class CrdtKvError(Exception):
    """Base class of every error crdt_kv raises deliberately."""


class ConfigError(CrdtKvError, ValueError):
    """A configuration value is unknown, malformed or contradicts what the store holds."""


class EncodingError(CrdtKvError, ValueError):
    """A key or value cannot be held by the chosen encoding; nothing was written."""


class StoreNotFoundError(ConfigError):
    """No store exists at the path, and the open was not allowed to create one (a read-only
    open, or a command that only reads): nothing was created there."""


class ReadOnlyError(CrdtKvError):
    """A write was attempted on a store (or backend) opened read-only; nothing changed."""


class StorageError(CrdtKvError):
    """The storage backend failed to write (e.g. the disk is full); nothing of the failed
    write was applied, and the store keeps working once the cause is gone.

    ``errno`` is the operating-system error number when known (``errno.ENOSPC`` for a
    full disk), else None.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CorruptionError(CrdtKvError):
    """Bytes read back from the storage backend do not parse; the store refuses to guess."""


class ClosedError(CrdtKvError):
    """The resource (store, node, session) was used after ``close()``."""


class ClockSkewError(CrdtKvError):
    """A remote hybrid-logical-clock stamp is further ahead of our wall clock than allowed.

    Raised before anything changes, so a peer with a fast clock cannot make its writes win
    every conflict forever (the classic last-writer-wins failure).
    """

    def __init__(
        self, message: str, *, remote_hlc: int, local_wall_ms: int, max_offset_ms: int
    ) -> None:
        super().__init__(message)
        self.remote_hlc = remote_hlc
        self.local_wall_ms = local_wall_ms
        self.max_offset_ms = max_offset_ms


class ResolverError(CrdtKvError, AssertionError):
    """A user conflict resolver is not a deterministic strict total order.

    Raised by :func:`crdt_kv.testing.check_resolver` with a counterexample in the message.
    """


class ProtocolError(CrdtKvError):
    """The replication protocol was violated; the session that saw it is closed."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent bytes or messages that break the protocol (their fault)."""


class RejectedDataError(RemoteProtocolError):
    """A peer sent well-formed data this replica refuses to store (abort code 4): a state
    of several siblings, or with a causal context, sent to a replica in mode ``lww``."""


class PeerIdentityError(RemoteProtocolError):
    """A peer was refused for who it is (or could not prove it), before any data moved.

    ``reason`` says which check refused it, one of :attr:`REASONS`:
    ``tls_handshake`` (no TLS, a certificate our CA did not sign, no client certificate,
    or a handshake that timed out), ``no_identity`` (a valid certificate naming no peer
    id), ``identity_mismatch`` (the Hello claims another peer id than the certificate
    names) and ``not_allowed`` (the peer id is not in ``allowed_peers``). ``peer_id`` is
    the peer's authenticated identity when known, else the id it claimed, else None.
    """

    REASONS = ("tls_handshake", "no_identity", "identity_mismatch", "not_allowed")

    def __init__(
        self, message: str, *, reason: str, peer_id: str | None = None, fault: bool = True
    ) -> None:
        super().__init__(message)
        if reason not in self.REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.reason = reason
        self.peer_id = peer_id
        self.fault = fault
        """False when the refusal proves nothing against the peer (a TLS handshake that
        timed out or was cut short: a slow node or a health check looks the same), so it
        is no offence to penalise its host for."""


class LocalProtocolError(ProtocolError):
    """This side misused a protocol session (our fault), e.g. sending after close."""


class RolledBackError(ProtocolError):
    """This store's change log was found rolled back (restored from a copy under the same
    incarnation): a peer proved a cursor our log no longer matches. The store has taken a
    new incarnation, so peers pull its whole log again; the session that found it ends."""


class RequestRefusedError(CrdtKvError):
    """A node's client endpoint refused a request (:class:`crdt_kv.Client`); nothing was
    written. ``kind`` names the node's error (``EncodingError``, ``ClockSkewError``,
    ``StorageError``...), the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
