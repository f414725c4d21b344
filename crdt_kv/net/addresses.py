"""Peer addresses as text: ``"host:port"`` and ``"[v6]:port"``."""

from __future__ import annotations

from crdt_kv.errors import ConfigError

__all__ = ["format_address", "parse_address"]


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) to ``(host, port)``; raises :class:`ConfigError`."""
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
    """The inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
