"""Configuration: a mapping or a TOML file with ``[storage]`` and ``[node]`` tables.

Unknown tables or keys raise :class:`ConfigError` naming them, so a typo never silently
falls back to a default. Relative storage paths in a TOML file are resolved against the
file's directory. Keyword arguments given to :func:`crdt_kv.open` override the file.
"""

from __future__ import annotations

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
    },
}


def load_config(
    config: Mapping[str, Any] | str | os.PathLike[str] | None,
) -> dict[str, dict[str, Any]]:
    """Read and validate a configuration; returns ``{"storage": {...}, "node": {...}}``."""
    if config is None:
        return {"storage": {}, "node": {}}
    base_dir: str | None = None
    if isinstance(config, str | os.PathLike):
        path = os.fspath(config)
        try:
            with open(path, "rb") as fh:
                raw: Mapping[str, Any] = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
        base_dir = os.path.dirname(os.path.abspath(path))
    elif isinstance(config, Mapping):
        raw = config
    else:
        raise ConfigError(f"config must be a mapping or a TOML path, not {type(config).__name__}")
    out: dict[str, dict[str, Any]] = {"storage": {}, "node": {}}
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
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"config {table}.{key} has the wrong type: {value!r}")
            out[table][key] = value
    path_value = out["storage"].get("path")
    if base_dir is not None and path_value is not None and not os.path.isabs(path_value):
        out["storage"]["path"] = os.path.join(base_dir, path_value)
    return out
