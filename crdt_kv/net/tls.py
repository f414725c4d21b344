"""TLS for a node: mutual authentication against one CA, and peer ids bound to certificates.

With ``serve(..., tls=TlsConfig(...))`` every connection, inbound and dialed, is TLS with a
certificate on both sides that ``ca`` signed, and the TLS handshake completes before the
replication protocol starts, so plaintext and unknown certificates never reach a session.
The peer id a certificate names (:func:`certificate_identity`) goes to the session, which
refuses a Hello that claims another one, or a peer id outside ``allowed_peers``
(``spec/protocol.md`` section 11.1). A node's certificate names its peer id, not where it
listens: the dialed address is not checked against it (a peer is who its certificate says,
wherever it is reached).

Every refusal raises :class:`~crdt_kv.errors.PeerIdentityError` with its ``reason``.
"""

from __future__ import annotations

import math
import os
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import trio

from crdt_kv.errors import ConfigError, PeerIdentityError

__all__ = ["PEER_URI_PREFIX", "TlsConfig", "certificate_identity", "verified_identity"]

PEER_URI_PREFIX = "crdt-kv://peer/"
"""A URI subject alternative name starting with this names the certificate's peer id."""

_FILES = ("cert", "key", "ca")
_HUNG_UP = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""A handshake the peer hung up on (a health check, a reset): no proof of a bad peer."""


def certificate_identity(cert: Mapping[str, Any]) -> str | None:
    """The peer id a certificate names, or None if it names none or is ambiguous.

    ``cert`` is what :meth:`ssl.SSLSocket.getpeercert` returns. If any URI subject
    alternative name starts with :data:`PEER_URI_PREFIX`, exactly one must, and the peer id
    is the rest of it percent-decoded as UTF-8; otherwise it is the subject's common name,
    if there is exactly one. An empty result is no identity.
    """
    uris = [
        str(value)
        for kind, value in cert.get("subjectAltName", ())
        if kind == "URI" and str(value).startswith(PEER_URI_PREFIX)
    ]
    if uris:
        if len(uris) != 1:
            return None
        try:
            found = urllib.parse.unquote(uris[0][len(PEER_URI_PREFIX) :], errors="strict")
        except UnicodeDecodeError:
            return None
        return found or None
    names = [str(v) for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return names[0] if len(names) == 1 and names[0] else None


def verified_identity(stream: trio.abc.Stream) -> str:
    """The peer id the certificate of an established TLS ``stream`` names; ``""`` when it
    names none or ``stream`` is not TLS, which no Hello can claim (fails closed)."""
    if not isinstance(stream, trio.SSLStream):
        return ""
    cert = stream.getpeercert()
    return (certificate_identity(cert) if cert else None) or ""


def _no_password(path: str) -> Callable[[], str]:
    def refuse() -> str:
        raise ConfigError(f"TLS key file {path!r} is encrypted; give an unencrypted key")

    return refuse


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Mutual TLS for a node: ``cert`` and ``key`` (PEM files) are this node's certificate
    chain and private key, ``ca`` (PEM) the authority that signs every node's certificate.
    ``allowed_peers``: the peer ids admitted (None: any that ``ca`` signed); kept as a
    frozenset.

    Both contexts are built on construction, so a missing or unreadable file, a key that
    does not match its certificate, or an encrypted key is a :class:`ConfigError` naming
    the file before any socket opens. A node's certificate must name its peer id
    (:func:`certificate_identity`).
    """

    cert: str | os.PathLike[str]
    key: str | os.PathLike[str]
    ca: str | os.PathLike[str]
    allowed_peers: AbstractSet[str] | None = None
    _contexts: tuple[ssl.SSLContext, ssl.SSLContext] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _FILES:
            value = getattr(self, name)
            if not isinstance(value, str | os.PathLike) or not os.fspath(value):
                raise ConfigError(f"tls.{name} must be a file path, got {value!r}")
            path = os.fspath(value)
            object.__setattr__(self, name, path)
            try:
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                raise ConfigError(f"tls.{name} file {path!r} does not exist") from None
            except OSError as exc:
                raise ConfigError(f"cannot read tls.{name} file {path!r}: {exc}") from None
        allowed = self.allowed_peers
        if allowed is not None:
            object.__setattr__(self, "allowed_peers", _peer_ids(allowed))
        contexts = (self._context(server_side=True), self._context(server_side=False))
        object.__setattr__(self, "_contexts", contexts)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> TlsConfig:
        """From a ``[tls]`` config table as :func:`~crdt_kv.config.load_config` returns it."""
        missing = [name for name in _FILES if name not in table]
        if missing:
            raise ConfigError(f"config [tls] needs cert, key and ca; missing: {', '.join(missing)}")
        allowed = table.get("allowed_peers")
        return cls(
            cert=table["cert"],
            key=table["key"],
            ca=table["ca"],
            allowed_peers=None if allowed is None else _peer_ids(allowed),
        )

    def _context(self, *, server_side: bool) -> ssl.SSLContext:
        cert, key, ca = (os.fspath(p) for p in (self.cert, self.key, self.ca))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # peers are named by certificate identity, not address
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_cert_chain(cert, key, password=_no_password(key))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"cannot load TLS certificate {cert!r} with key {key!r}: {exc}"
            ) from None
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot load TLS CA file {ca!r}: {exc}") from None
        return ctx

    async def secure(
        self,
        stream: trio.abc.Stream,
        *,
        outbound: bool,
        address: str,
        host: str | None = None,
        timeout_s: float | None = None,
    ) -> trio.SSLStream[trio.abc.Stream]:
        """Run the TLS handshake on ``stream`` (the client side if ``outbound``, sending
        ``host`` as SNI) within ``timeout_s``; returns the TLS stream once the peer's
        certificate is verified and names a peer id. Raises :class:`PeerIdentityError`
        (``tls_handshake`` or ``no_identity``, naming ``address``); ``stream`` stays the
        caller's to close."""
        server, client = self._contexts
        tls = trio.SSLStream(
            stream,
            client if outbound else server,
            server_hostname=host if outbound else None,
            server_side=not outbound,
        )
        try:
            with trio.fail_after(math.inf if timeout_s is None else timeout_s):
                await tls.do_handshake()
        except trio.TooSlowError:
            raise PeerIdentityError(
                f"TLS handshake with {address} timed out", reason="tls_handshake", fault=False
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            why = exc.__cause__ if exc.__cause__ is not None else exc
            raise PeerIdentityError(
                f"TLS handshake with {address} failed: {why}",
                reason="tls_handshake",
                fault=isinstance(why, ssl.SSLError) and not isinstance(why, _HUNG_UP),
            ) from None
        if not verified_identity(tls):
            raise PeerIdentityError(
                f"the certificate of {address} names no peer id (a URI SAN "
                f"{PEER_URI_PREFIX}<peer id>, or a common name)",
                reason="no_identity",
            )
        return tls


def _peer_ids(value: object) -> frozenset[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(f"tls.allowed_peers must be a list of peer ids, got {value!r}")
    items = list(value)
    if not all(isinstance(p, str) and p for p in items):
        raise ConfigError(f"tls.allowed_peers must hold non-empty strings, got {items!r}")
    return frozenset(items)
