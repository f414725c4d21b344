"""Types of the compiled extension (built from crdt_kv/_speedups_c/); import crdt_kv.accel."""

from collections.abc import Iterable, Sequence
from typing import Any

def blake2b(data: bytes, digest_size: int = 64) -> bytes: ...
def position(key: bytes) -> bytes: ...
def fold(
    notes: Iterable[tuple[bytes, int, int]],
    counts: list[int],
    sums: list[int],
    added: list[bytes],
    removed: list[bytes],
    prefix: bytes,
    shift: int,
    /,
) -> list[int]: ...
def sort_index(items: Sequence[bytes], /) -> list[bytes]: ...
def bucket_ops(
    keys: Sequence[bytes],
    counts: list[int],
    sums: list[int],
    touched: Iterable[int],
    /,
) -> list[tuple[bytes, bytes | None]]: ...
def lww_run(
    buf: bytes,
    pos: int,
    count: int,
    base: int,
    peers: list[str],
    cls: type,
    slots: tuple[object, ...],
    /,
) -> tuple[list[Any], int]: ...
def cbor_item_end(data: bytes, /) -> int: ...
def lww_value(blob: bytes, key: object, default: Any, /) -> Any: ...
def point_value(get: Any, key: object, default: Any, /) -> Any: ...
def bind_get(writer: object, backend: object, fallback: Any, /) -> Any: ...
def scan_item(k: bytes, blob: bytes, what: int, utf8_keys: bool, /) -> Any: ...
def reads_setup(
    layout: tuple[object, ...],
    loads: Any,
    lww_slow: Any,
    scan_slow: Any,
    skip: object,
    unhandled: object,
    /,
) -> None: ...
