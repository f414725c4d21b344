"""Configuration: a mapping or a TOML file with ``[storage]``, ``[node]`` and ``[tls]`` tables.

Unknown tables or keys raise :class:`ConfigError` naming them, so a typo never silently
falls back to a default. Relative paths in a TOML file (``storage.path``, ``tls.cert``,
``tls.key``, ``tls.ca``) are resolved against the file's directory. Keyword arguments given
to :func:`crdt_kv.open` override the file. A ``[tls]`` table needs ``cert``, ``key`` and
``ca``; whether those files exist and load is checked when a node starts
(:class:`~crdt_kv.net.tls.TlsConfig`), so commands that only open the store do not need them.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from crdt_kv.errors import ConfigError

__all__ = ["KNOWN", "load_config"]

KNOWN: dict[str, dict[str, type | tuple[type, ...]]] = {
    "storage": {
        "backend": str,
        "path": str,
        "sync_writes": bool,
        "key_encoding": str,
        "conflicts": str,
        "keep_history": bool,
        "value_encoding": str,
    },
    "node": {
        "peer_id": str,
        "max_offset_ms": int,
        "cluster_id": str,
        "listen": str,
        "peers": list,
        "sync_interval_s": (int, float),
        "live": bool,
        "mode": str,
        "discovery": bool,
        "multicast_group": str,
        "multicast_port": int,
        "member_expiry_s": (int, float),
        "gc_grace_s": (int, float),
        "gc_interval_s": (int, float),
        "catch_up": bool,
        "catch_up_timeout_s": (int, float),
        "metrics_listen": str,
        "metrics_max_peers": int,
        "client_listen": str,
        "client_allow_remote": bool,
        "live_idle_timeout_s": (int, float),
        "max_buffered_bytes": int,
        "source_penalty_max_s": (int, float),
    },
    "tls": {
        "cert": str,
        "key": str,
        "ca": str,
        "allowed_peers": list,
    },
}

_PATHS = (("storage", "path"), ("tls", "cert"), ("tls", "key"), ("tls", "ca"))
"""Keys holding a path, resolved against a TOML file's directory."""


_MODES = ("both", "push", "pull")
_MIN_BUFFERED_BYTES = 64 << 10
"""The smallest ``max_buffered_bytes`` (``crdt_kv.net.budget.FLOOR_BYTES``, not imported:
loading a config must not import trio)."""
_CONFLICTS = ("lww", "siblings")


def _is_host_port(text: str) -> bool:
    """``"host:port"`` shaped (the host is the resolver's business, as for ``listen``)."""
    _, sep, port = text.rpartition(":")
    return bool(sep) and port.isascii() and port.isdigit() and int(port) <= 65535


def _check_value(table: str, key: str, value: Any) -> None:
    """Range checks a type alone cannot express, so a bad value fails at load time."""
    bad = None
    if isinstance(value, str) and not value and key in ("backend", "path", "peer_id"):
        bad = "must not be empty"
    elif table == "tls" and isinstance(value, str) and not value:
        bad = "must be a file path"
    elif key == "allowed_peers" and not all(isinstance(p, str) and p for p in value):
        bad = "must be a list of peer ids (non-empty strings)"
    elif key == "peers" and not all(isinstance(p, str) for p in value):
        bad = "must be a list of 'host:port' strings"
    elif key == "mode" and value not in _MODES:
        bad = f"must be one of {', '.join(_MODES)}"
    elif key == "conflicts" and value not in _CONFLICTS:
        bad = f"must be one of {', '.join(_CONFLICTS)}"
    elif key == "multicast_port" and not 0 <= value <= 65535:
        bad = "must be a port number (0-65535)"
    elif key == "max_offset_ms" and value < 0:
        bad = "must not be negative"
    elif key in (
        "sync_interval_s",
        "member_expiry_s",
        "gc_interval_s",
        "live_idle_timeout_s",
    ) and not (math.isfinite(value) and value > 0):
        bad = "must be a positive number of seconds"
    elif key in ("gc_grace_s", "catch_up_timeout_s", "source_penalty_max_s") and not (
        math.isfinite(value) and value >= 0
    ):
        bad = "must be a non-negative number of seconds"
    elif key == "metrics_max_peers" and value < 0:
        bad = "must not be negative"
    elif key == "max_buffered_bytes" and value < _MIN_BUFFERED_BYTES:
        bad = f"must be at least {_MIN_BUFFERED_BYTES} bytes"
    elif key in ("metrics_listen", "client_listen") and not _is_host_port(value):
        bad = "must be 'host:port' with a port in 0..65535"
    if bad is not None:
        raise ConfigError(f"config {table}.{key} {bad}, got {value!r}")


def load_config(
    config: Mapping[str, Any] | str | os.PathLike[str] | None,
) -> dict[str, dict[str, Any]]:
    """Read and validate a configuration; returns ``{table: {key: value}}`` for every
    table of :data:`KNOWN` (empty when absent)."""
    if config is None:
        return {table: {} for table in KNOWN}
    base_dir: str | None = None
    if isinstance(config, str | os.PathLike):
        path = os.fspath(config)
        try:
            with open(path, "rb") as fh:
                raw: Mapping[str, Any] = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
        except OSError as exc:  # a directory, no permission, ...
            raise ConfigError(f"cannot read config file {path!r}: {exc}") from None
        base_dir = os.path.dirname(os.path.abspath(path))
    elif isinstance(config, Mapping):
        raw = config
    else:
        raise ConfigError(f"config must be a mapping or a TOML path, not {type(config).__name__}")
    out: dict[str, dict[str, Any]] = {table: {} for table in KNOWN}
    for table, values in raw.items():
        if table not in KNOWN:
            raise ConfigError(f"unknown config table [{table}]; known: {', '.join(KNOWN)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config [{table}] must be a table")
        for key, value in values.items():
            want = KNOWN[table].get(key)
            if want is None:
                raise ConfigError(
                    f"unknown config key {table}.{key}; known: {', '.join(KNOWN[table])}"
                )
            if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
                raise ConfigError(f"config {table}.{key} has the wrong type: {value!r}")
            _check_value(table, key, value)
            out[table][key] = value
    missing = [key for key in ("cert", "key", "ca") if "tls" in raw and key not in out["tls"]]
    if missing:
        raise ConfigError(f"config [tls] needs cert, key and ca; missing: {', '.join(missing)}")
    for table, key in _PATHS:
        value = out[table].get(key)
        if base_dir is not None and value is not None and not os.path.isabs(value):
            out[table][key] = os.path.join(base_dir, value)
    return out
