"""Storage backends, chosen by name.

Built in: ``rocksdb`` (default), ``memory`` and ``sqlite``. Third-party packages add more
through the entry-point group ``crdt_kv.backends``; an entry point names a callable
``open_backend(path, *, sync_writes) -> Backend``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from crdt_kv.backends.base import Backend, Op
from crdt_kv.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "Backend", "Op", "available_backends", "open_backend"]

ENTRY_POINT_GROUP = "crdt_kv.backends"
DEFAULT_BACKEND = "rocksdb"
_BUILTIN = {
    "rocksdb": "crdt_kv.backends.rocksdb",
    "memory": "crdt_kv.backends.memory",
    "sqlite": "crdt_kv.backends.sqlite",
}

Opener = Callable[..., Backend]


def _plugins() -> dict[str, object]:
    # Imported here: importlib.metadata pulls in email and socket, which a store that
    # only opens built-in backends (and the sans-I/O core) should not load.
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Names of every backend that can be opened: built-ins and installed plugins."""
    return sorted(set(_BUILTIN) | set(_plugins()))


def _opener(name: str) -> Opener:
    if name in _BUILTIN:
        fn: Opener = importlib.import_module(_BUILTIN[name]).open_backend
        return fn
    ep = _plugins().get(name)
    if ep is None:
        raise ConfigError(
            f"unknown storage backend {name!r}; available: {', '.join(available_backends())}"
        )
    try:
        loaded = ep.load()  # type: ignore[attr-defined]
    except Exception as exc:  # a plugin's import can fail in any way; name it, not crash
        raise ConfigError(f"backend plugin {name!r} failed to load: {exc!r}") from exc
    if not callable(loaded):
        raise ConfigError(f"backend entry point {name!r} does not name a callable")
    return loaded  # type: ignore[no-any-return]


def open_backend(name: str, path: str | None = None, *, sync_writes: bool = False) -> Backend:
    """Open backend ``name`` at ``path``; raises :class:`ConfigError` for unknown names."""
    if not isinstance(name, str):
        raise ConfigError(f"backend name must be a string, not {type(name).__name__}")
    opener = _opener(name)
    try:
        backend = opener(path, sync_writes=sync_writes)
    except OSError as exc:  # e.g. the path is a file, or not writable
        raise ConfigError(f"cannot open the {name} backend at {path!r}: {exc}") from exc
    if not isinstance(backend, Backend):
        raise ConfigError(f"backend {name!r} did not return a crdt_kv Backend")
    return backend
