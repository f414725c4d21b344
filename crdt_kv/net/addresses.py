"""``"host:port"`` text for peer addresses, parsed and formatted in one place.

Why a module of its own: the node, discovery and the command line all speak addresses,
and discovery must not import the node to do so (it would make the two modules a cycle).
Pure functions, no I/O: importing this never pulls in trio or sockets.
"""

from __future__ import annotations

from crdt_kv.errors import ConfigError

__all__ = ["format_address", "parse_address"]


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) to ``(host, port)``; raises :class:`ConfigError`.

    ``what`` names the address in the error (``"peer address"``, ``"listen"``...). The
    host is not resolved or validated: that is the dialer's business.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a 'host:port' string, got {text!r}")
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ConfigError(f"{what} {text!r} is not 'host:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} {text!r} has port {port} outside 0..65535")
    return host, port


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`: IPv6 hosts get brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
