"""Storage backends, chosen by name.

Built in: ``rocksdb`` (default), ``memory`` and ``sqlite``. Third-party packages add more
through the entry-point group ``crdt_kv.backends``; an entry point names a callable
``open_backend(path, *, sync_writes) -> Backend`` (with a ``read_only`` keyword too if it
can open a store read-only).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable

from crdt_kv.backends.base import Backend, Op
from crdt_kv.backends.files import detect
from crdt_kv.errors import ConfigError, StoreNotFoundError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "Op",
    "available_backends",
    "check_path",
    "open_backend",
]

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


def _accepts_read_only(opener: Opener) -> bool:
    try:
        params = inspect.signature(opener).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "read_only" or p.kind is p.VAR_KEYWORD for p in params)


def check_path(name: str, path: str | None, *, read_only: bool) -> None:
    """Refuse, before anything is opened or created, a path holding another built-in
    backend's store (:class:`ConfigError` naming it) and, for a read-only open, a path
    holding no store (:class:`StoreNotFoundError`)."""
    if path is None:
        return
    found = detect(path)
    if found is not None and found != name:
        raise ConfigError(
            f"the store at {path!r} uses the {found} backend, not {name}; "
            f"open it with backend {found!r}"
        )
    if read_only and found is None and name in _BUILTIN:
        what = "nothing" if not os.path.exists(path) else "no crdt_kv store"
        raise StoreNotFoundError(f"no store at {path!r} ({what} there to open read-only)")


def open_backend(
    name: str, path: str | None = None, *, sync_writes: bool = False, read_only: bool = False
) -> Backend:
    """Open backend ``name`` at ``path``; raises :class:`ConfigError` for unknown names or a
    path holding another backend's store.

    ``read_only=True`` opens an existing store without creating or changing any file
    (:class:`StoreNotFoundError` if there is none); the backend refuses writes.
    """
    if not isinstance(name, str):
        raise ConfigError(f"backend name must be a string, not {type(name).__name__}")
    opener = _opener(name)
    check_path(name, path, read_only=read_only)
    if read_only and name == "memory":
        raise ConfigError("a memory store opened read-only would be empty: nothing to read")
    if read_only and not _accepts_read_only(opener):
        raise ConfigError(f"backend {name!r} cannot open a store read-only")
    try:
        if read_only:
            backend = opener(path, sync_writes=sync_writes, read_only=True)
        else:
            backend = opener(path, sync_writes=sync_writes)
    except PermissionError as exc:
        raise ConfigError(
            f"cannot open the {name} backend at {path!r}: permission denied "
            f"({exc.strerror}: {exc.filename!r})"
        ) from exc
    except OSError as exc:  # e.g. the path is a file, or not writable
        raise ConfigError(f"cannot open the {name} backend at {path!r}: {exc}") from exc
    if not isinstance(backend, Backend):
        raise ConfigError(f"backend {name!r} did not return a crdt_kv Backend")
    return backend
